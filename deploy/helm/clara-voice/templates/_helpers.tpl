{{/* Names, labels and the values several templates share. */}}

{{- define "clara-voice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clara-voice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The worker's objects are called <fullname>-worker, the page's <fullname>-web. */}}
{{- define "clara-voice.workerName" -}}
{{- printf "%s-worker" (include "clara-voice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clara-voice.webName" -}}
{{- printf "%s-web" (include "clara-voice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "clara-voice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clara-voice.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "clara-voice.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "clara-voice.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: clara-voice
{{- end -}}

{{- define "clara-voice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret the credentials come from: the operator's, or the one this chart makes. */}}
{{- define "clara-voice.secretName" -}}
{{- default (printf "%s-credentials" (include "clara-voice.fullname" .)) .Values.secret.existingSecret -}}
{{- end -}}

{{/* The Secret keys every worker needs; CLARA_DATABASE_URL too with the postgres backend. */}}
{{- define "clara-voice.requiredSecretKeys" -}}
{{- $keys := list "LIVEKIT_API_KEY" "LIVEKIT_API_SECRET" -}}
{{- if eq (toString (index .Values.worker.config "CLARA_BACKEND" | default "sqlite")) "postgres" -}}
{{- $keys = append $keys "CLARA_DATABASE_URL" -}}
{{- end -}}
{{- toJson $keys -}}
{{- end -}}

{{/* Seconds the kubelet waits after SIGTERM: the drain, then the jobs' shutdown, then a
margin for the process to exit. */}}
{{- define "clara-voice.terminationGracePeriodSeconds" -}}
{{- $w := .Values.worker -}}
{{- add (int $w.drainTimeout) (int (ceil $w.jobShutdownTimeout)) (int $w.terminationMargin) -}}
{{- end -}}

{{- define "clara-voice.livekitUrl" -}}
{{- required "livekit.url is required: the LiveKit server or LiveKit Cloud project the workers register with (LIVEKIT_URL)" .Values.livekit.url -}}
{{- end -}}

{{/* env entries reading each key of `keys` from the Secret (a missing key stops the pod
with an error naming it). */}}
{{- define "clara-voice.secretEnv" -}}
{{- range .keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "clara-voice.secretName" $.root }}
      key: {{ . }}
{{- end }}
{{- end -}}
