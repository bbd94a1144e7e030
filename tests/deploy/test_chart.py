"""The Helm chart's rendered output (deploy/helm/clara-voice): what a cluster will run.

Each test renders the chart with Helm's own engine (testkit/chart.py) and checks what an
operator depends on against the worker's own settings and image: the grace period covers
the drain, the credentials come from the Secret, the liveness probe is the health
endpoint, the outbox is on a volume of each pod's own, the autoscaler reads the workers'
load, and the page stays off unless asked for.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any

import pytest

from clara_voice.config import Settings, load_settings
from testkit.chart import CHART, Manifest, RenderError, container, render, the, values_file
from tests.test_docker import DOCKERFILE, Stage, parse_dockerfile

# Settings of issue 17 that other branches add (PostgreSQL backend, explicit dispatch,
# admission); the chart already uses their names. Drop each once Settings has it.
LANDING_ELSEWHERE: frozenset[str] = frozenset()
SETTINGS_VARIABLES = frozenset(Settings.env_name(n) for n in Settings.model_fields)
KNOWN_VARIABLES = SETTINGS_VARIABLES | LANDING_ELSEWHERE
SECRET_VARIABLES = frozenset(
    Settings.env_name(name)
    for name, field in Settings.model_fields.items()
    if "SecretStr" in str(field.annotation)
) | {"CLARA_DATABASE_URL"}


@pytest.fixture(scope="module")
def runtime() -> Stage:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))[-1]


@pytest.fixture(scope="module")
def minimal() -> list[Manifest]:
    return render(values_file("minimal"))


def _pod(manifests: list[Manifest], kind: str = "StatefulSet") -> dict[str, Any]:
    spec: dict[str, Any] = the(manifests, kind)["spec"]["template"]["spec"]
    return spec


def _config(manifests: list[Manifest]) -> dict[str, str]:
    data: dict[str, str] = the(manifests, "ConfigMap")["data"]
    return data


def _settings_from(config: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The worker's Settings from what the chart derives (the operator's own settings are
    the worker's to check at start)."""
    for name in ("LIVEKIT_URL", "CLARA_DATA_DIR", "CLARA_HTTP_PORT", "CLARA_PROMETHEUS_PORT"):
        monkeypatch.setenv(name, config[name])
    monkeypatch.setenv("CLARA_DRAIN_TIMEOUT", config["CLARA_DRAIN_TIMEOUT"])
    monkeypatch.setenv("CLARA_JOB_SHUTDOWN_TIMEOUT", config["CLARA_JOB_SHUTDOWN_TIMEOUT"])
    return load_settings()


# -- the drain -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("drain", "shutdown", "margin", "grace"),
    [(300, 30, 10, 340), (120, 12.5, 5, 138), (0, 0.5, 0, 1), (3600, 60, 30, 3690)],
)
def test_grace_period_covers_the_drain_and_the_jobs_shutdown(
    drain: int, shutdown: float, margin: int, grace: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifests = render(
        values_file("minimal"),
        sets={
            "worker.drainTimeout": drain,
            "worker.jobShutdownTimeout": shutdown,
            "worker.terminationMargin": margin,
        },
    )
    assert _pod(manifests)["terminationGracePeriodSeconds"] == grace
    # and the worker drains for exactly what the period was computed from
    settings = _settings_from(_config(manifests), monkeypatch)
    assert settings.drain_timeout == drain
    assert settings.job_shutdown_timeout == shutdown
    assert settings.drain_timeout + math.ceil(settings.job_shutdown_timeout) + margin == grace


def test_the_charts_defaults_are_the_workers(
    minimal: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chart changes none of the worker's defaults it derives (drain, ports)."""
    settings = _settings_from(_config(minimal), monkeypatch)
    for name in ("drain_timeout", "job_shutdown_timeout", "http_port", "prometheus_port"):
        assert getattr(settings, name) == Settings.model_fields[name].default, name
    assert _pod(minimal)["terminationGracePeriodSeconds"] == 340  # docs/operations.md's figure


def test_the_worker_is_signalled_itself_and_orphans_are_reaped(minimal: list[Manifest]) -> None:
    pod = _pod(minimal)
    # exec form, no shell in between: python gets the SIGTERM that starts the drain
    assert container(the(minimal, "StatefulSet"), "worker")["args"] == [
        "python",
        "-m",
        "clara_voice",
        "start",
    ]
    assert "command" not in container(the(minimal, "StatefulSet"), "worker")
    assert pod["shareProcessNamespace"] is True


def test_a_rolling_update_replaces_one_worker_at_a_time(minimal: list[Manifest]) -> None:
    spec = the(minimal, "StatefulSet")["spec"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate"}  # one pod at a time
    # the next pod drains only after the new one had time to register with LiveKit
    assert (
        spec["minReadySeconds"]
        >= container(the(minimal, "StatefulSet"), "worker")["livenessProbe"]["initialDelaySeconds"]
    )


# -- credentials -----------------------------------------------------------------------


def _secret_refs(pod: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Every env variable read from a Secret key: name → (secret, key)."""
    refs = {}
    for c in pod["containers"]:
        for entry in c.get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs[entry["name"]] = (ref["name"], ref["key"])
    return refs


def test_credentials_come_from_an_existing_secret() -> None:
    manifests = render(values_file("existing-secret"))
    assert "Secret" not in [m["kind"] for m in manifests]  # the operator's, not ours
    pod = _pod(manifests)
    refs = _secret_refs(pod)
    assert refs == {
        name: ("clara-credentials", name)
        for name in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "CLARA_DATABASE_URL")
    }
    [worker] = pod["containers"]
    assert {"secretRef": {"name": "clara-credentials"}} in worker["envFrom"]
    assert not set(_config(manifests)) & SECRET_VARIABLES


def test_a_secret_the_chart_makes_holds_the_values_and_rolls_the_pods(
    minimal: list[Manifest],
) -> None:
    secret = the(minimal, "Secret")
    name = secret["metadata"]["name"]
    assert set(secret["stringData"]) >= {
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
        "CLARA_DATABASE_URL",
    }
    assert {ref for ref, _ in _secret_refs(_pod(minimal)).values()} == {name}
    annotations = the(minimal, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert {"checksum/config", "checksum/secret"} <= set(annotations)
    changed = render(values_file("minimal"), sets={"secret.values.LIVEKIT_API_SECRET": "rotated"})
    changed_annotations = the(changed, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]
    assert changed_annotations["checksum/secret"] != annotations["checksum/secret"]


@pytest.mark.parametrize("missing", ["LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "CLARA_DATABASE_URL"])
def test_a_missing_credential_stops_the_render_naming_it(missing: str) -> None:
    with pytest.raises(RenderError, match=f"secret.values.{missing}"):
        render(values_file("minimal"), sets={f"secret.values.{missing}": ""})


def test_the_sqlite_backend_needs_no_database_url() -> None:
    manifests = render(values_file("single-worker"))
    assert "CLARA_DATABASE_URL" not in _secret_refs(_pod(manifests))


def test_a_missing_livekit_url_stops_the_render_naming_it() -> None:
    with pytest.raises(RenderError, match=r"livekit\.url is required"):
        render(values_file("minimal"), sets={"livekit.url": ""})


@pytest.mark.parametrize("values", ["minimal", "existing-secret", "web"])
def test_every_variable_is_one_the_worker_reads(values: str) -> None:
    manifests = render(values_file(values))
    names = set(_config(manifests))
    for kind in ("StatefulSet", "Deployment"):
        for pod in [m["spec"]["template"]["spec"] for m in manifests if m["kind"] == kind]:
            names |= {e["name"] for c in pod["containers"] for e in c.get("env", [])}
    ours = {n for n in names if n.startswith(("CLARA_", "LIVEKIT_"))}
    assert ours <= KNOWN_VARIABLES, sorted(ours - KNOWN_VARIABLES)


# -- health ----------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["minimal", "existing-secret"])
def test_liveness_is_the_health_endpoint_and_nothing_gates_readiness(values: str) -> None:
    manifests = render(values_file(values))
    [worker] = _pod(manifests)["containers"]
    probe = worker["livenessProbe"]["httpGet"]
    assert probe["path"] == "/"
    [port] = [p for p in worker["ports"] if p["name"] == probe["port"]]
    assert port["containerPort"] == int(_config(manifests)["CLARA_HTTP_PORT"])
    # a worker takes no traffic through a Service: readiness would gate nothing
    assert "readinessProbe" not in worker
    assert "startupProbe" not in worker
    metrics = [p for p in worker["ports"] if p["name"] == "metrics"]
    assert [p["containerPort"] for p in metrics] == [
        int(_config(manifests)["CLARA_PROMETHEUS_PORT"])
    ]


# -- the outbox volume, the filesystem, the user -----------------------------------------


def test_each_worker_keeps_its_outbox_on_a_volume_of_its_own(
    minimal: list[Manifest], runtime: Stage
) -> None:
    sts = the(minimal, "StatefulSet")
    data_dir = _config(minimal)["CLARA_DATA_DIR"]
    assert data_dir == runtime.env()["CLARA_DATA_DIR"]  # the image's VOLUME
    [claim] = sts["spec"]["volumeClaimTemplates"]
    [worker] = _pod(minimal)["containers"]
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir} in worker["volumeMounts"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    # kept when a pod is replaced or the set shrinks: the next pod of that name adopts it
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenScaled": "Retain",
        "whenDeleted": "Retain",
    }
    assert claim["metadata"]["name"] not in {v["name"] for v in _pod(minimal)["volumes"]}


def test_without_persistence_the_outbox_lives_in_the_pod() -> None:
    manifests = render(values_file("single-worker"))
    sts = the(manifests, "StatefulSet")
    assert "volumeClaimTemplates" not in sts["spec"]
    volumes = {v["name"]: v for v in _pod(manifests)["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {}}


@pytest.mark.parametrize("kind", ["StatefulSet", "Deployment"])
def test_pods_run_unprivileged_on_a_read_only_root(kind: str, runtime: Stage) -> None:
    manifests = render(values_file("web"))
    pod = _pod(manifests, kind)
    uid = runtime.last("USER").value.split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == uid
    assert str(pod["securityContext"]["fsGroup"]) == uid  # the volume is writable by it
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        writable = {PurePosixPath(m["mountPath"]) for m in c["volumeMounts"]}
        expected = {PurePosixPath("/tmp")}
        if kind == "StatefulSet":
            expected.add(PurePosixPath(_config(manifests)["CLARA_DATA_DIR"]))
        assert writable == expected


def test_the_image_is_the_dockerfiles(minimal: list[Manifest], runtime: Stage) -> None:
    [worker] = _pod(minimal)["containers"]
    assert worker["args"] == runtime.last("CMD").json_form()
    assert worker["image"] == "clara-voice:0.1.0"  # the chart's appVersion by default
    exposed = {int(p) for e in runtime.all("EXPOSE") for p in e.value.split()}
    assert {p["containerPort"] for p in worker["ports"]} <= exposed


# -- scaling -----------------------------------------------------------------------------


def test_the_autoscaler_reads_the_workers_load(minimal: list[Manifest]) -> None:
    hpa = the(minimal, "HorizontalPodAutoscaler")
    sts = the(minimal, "StatefulSet")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", sts["metadata"]["name"])
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "clara_worker_load"},
                "target": {"type": "AverageValue", "averageValue": "500m"},
            },
        }
    ]
    assert "replicas" not in sts["spec"]  # the autoscaler owns the count
    # Prometheus finds the metric where the worker serves it
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == _config(minimal)["CLARA_PROMETHEUS_PORT"]
    # scale-down drains calls: one pod at a time
    [policy] = hpa["spec"]["behavior"]["scaleDown"]["policies"]
    assert (policy["type"], policy["value"]) == ("Pods", 1)


def test_without_the_metrics_adapter_the_autoscaler_uses_cpu() -> None:
    hpa = the(render(values_file("cpu-autoscaling")), "HorizontalPodAutoscaler")
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 50},
            },
        }
    ]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 30)


def test_without_autoscaling_the_replicas_are_fixed() -> None:
    manifests = render(values_file("single-worker"))
    assert "HorizontalPodAutoscaler" not in [m["kind"] for m in manifests]
    assert "PodDisruptionBudget" not in [m["kind"] for m in manifests]
    assert the(manifests, "StatefulSet")["spec"]["replicas"] == 1


def test_an_autoscaler_whose_minimum_exceeds_its_maximum_is_refused() -> None:
    with pytest.raises(RenderError, match="minReplicas"):
        render(
            values_file("minimal"),
            sets={"autoscaling.minReplicas": 5, "autoscaling.maxReplicas": 3},
        )


def test_the_disruption_budget_covers_the_workers_only() -> None:
    manifests = render(values_file("web"))
    pdb = the(manifests, "PodDisruptionBudget")
    selector = pdb["spec"]["selector"]["matchLabels"]
    worker_labels = the(manifests, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    web_labels = the(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= worker_labels.items()
    assert not selector.items() <= web_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    # and the StatefulSet selects its own pods, not the page's
    sts_selector = the(manifests, "StatefulSet")["spec"]["selector"]["matchLabels"]
    assert sts_selector.items() <= worker_labels.items()
    assert not sts_selector.items() <= web_labels.items()


# -- the page ----------------------------------------------------------------------------


def test_the_page_is_off_unless_asked_for(minimal: list[Manifest]) -> None:
    assert "Deployment" not in [m["kind"] for m in minimal]
    with pytest.raises(RenderError, match=r"web\.allowRemote"):
        render(values_file("minimal"), sets={"web.enabled": True})


def test_the_page_serves_tokens_signed_with_the_secrets_keys() -> None:
    manifests = render(values_file("web"))
    web = container(the(manifests, "Deployment"), "web")
    assert web["args"] == ["python", "-m", "clara_voice", "web"]
    env = {e["name"]: e for e in web["env"]}
    assert env["CLARA_WEB_ALLOW_REMOTE"]["value"] == "true"
    assert env["CLARA_WEB_HOST"]["value"] == "0.0.0.0"
    assert env["CLARA_WEB_LIVEKIT_URL"]["value"] == "wss://livekit.example.com"
    assert _secret_refs(_pod(manifests, "Deployment")) == {
        name: ("clara-credentials", name) for name in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")
    }
    [port] = web["ports"]
    assert port["containerPort"] == int(env["CLARA_WEB_PORT"]["value"])
    service = next(
        m for m in manifests if m["kind"] == "Service" and m["spec"].get("clusterIP") != "None"
    )
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert service["spec"]["type"] == "ClusterIP"
    assert web["readinessProbe"]["httpGet"]["port"] == port["name"]


def test_the_chart_directory_is_complete() -> None:
    for name in ("Chart.yaml", "values.yaml", "values.schema.json", "README.md"):
        assert (CHART / name).is_file(), name
