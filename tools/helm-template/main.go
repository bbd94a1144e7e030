// Command helm-template renders a Helm chart as `helm template` does, with Helm's own
// chart loader, values handling, values.schema.json validation and template engine (the
// Helm version go.mod pins), and none of Helm's CLI, plugins or cluster clients: it builds
// in a fraction of the time of the helm binary. Nothing in it talks to a cluster.
//
//	helm-template [--name N] [--namespace NS] [--kube-version V] [-f FILE]... [--set K=V]... CHART
//
// Every manifest goes to stdout as `---` separated YAML with a `# Source:` line, in file
// name order; NOTES.txt is left out. A chart that needs a newer Kubernetes than
// --kube-version, a values file that breaks values.schema.json, or a template that fails
// (`required`, `fail`) exits 1 with Helm's own message.
package main

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"path"
	"slices"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/engine"
	"helm.sh/helm/v4/pkg/strvals"
)

type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func main() {
	var files, sets repeated
	name := flag.String("name", "release-name", "release name")
	namespace := flag.String("namespace", "default", "release namespace")
	kubeVersion := flag.String("kube-version", "", "Kubernetes version for Capabilities.KubeVersion")
	flag.Var(&files, "f", "values file (repeatable; later files win)")
	flag.Var(&files, "values", "values file (repeatable; later files win)")
	flag.Var(&sets, "set", "key=value (repeatable; wins over the files)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: helm-template [--name N] [--namespace NS] [--kube-version V] [-f FILE]... [--set K=V]... CHART")
		os.Exit(2)
	}
	out, err := render(flag.Arg(0), *name, *namespace, *kubeVersion, files, sets)
	if err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
	fmt.Print(out)
}

func render(dir, name, namespace, kubeVersion string, files, sets []string) (string, error) {
	chrt, err := loader.Load(dir)
	if err != nil {
		return "", err
	}
	values := map[string]any{}
	for _, file := range files {
		read, err := common.ReadValuesFile(file)
		if err != nil {
			return "", err
		}
		values = merge(values, read)
	}
	for _, set := range sets {
		if err := strvals.ParseInto(set, values); err != nil {
			return "", fmt.Errorf("failed parsing --set %q: %w", set, err)
		}
	}
	caps := common.DefaultCapabilities.Copy()
	if kubeVersion != "" {
		parsed, err := common.ParseKubeVersion(kubeVersion)
		if err != nil {
			return "", fmt.Errorf("invalid --kube-version %q: %w", kubeVersion, err)
		}
		caps.KubeVersion = *parsed
	}
	if constraint := chrt.Metadata.KubeVersion; constraint != "" &&
		!chartutil.IsCompatibleRange(constraint, caps.KubeVersion.String()) {
		return "", fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s",
			constraint, caps.KubeVersion.Version)
	}
	if err := chartutil.ProcessDependencies(chrt, values); err != nil {
		return "", err
	}
	options := common.ReleaseOptions{Name: name, Namespace: namespace, Revision: 1, IsInstall: true}
	top, err := util.ToRenderValuesWithSchemaValidation(chrt, values, options, caps, false)
	if err != nil {
		return "", err
	}
	rendered, err := engine.Render(chrt, top)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	for _, file := range slices.Sorted(maps.Keys(rendered)) {
		content := strings.TrimSpace(rendered[file])
		if path.Base(file) == "NOTES.txt" || content == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", file, content)
	}
	return out.String(), nil
}

// merge returns base with over laid on top: maps merge key by key, anything else in over
// replaces what base had (how helm combines several -f files).
func merge(base, over map[string]any) map[string]any {
	out := maps.Clone(base)
	for key, value := range over {
		if inner, ok := value.(map[string]any); ok {
			if existing, ok := out[key].(map[string]any); ok {
				out[key] = merge(existing, inner)
				continue
			}
		}
		out[key] = value
	}
	return out
}
