package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/pgveil/pgveil/rules"
)

// yamlDocs parses every document of a YAML file into generic maps.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs
}

// field walks a path of map keys and list indexes in a parsed document.
func field(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any) string { s, _ := v.(string); return s }

// checkServeConfig validates a pgveil.yaml the way serve reads it.
func checkServeConfig(t *testing.T, name string, data []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgveil.yaml")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var f serveFlags
	fs := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	f.register(fs)
	values, _, err := readConfigFile(path, fs)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	for k, v := range values {
		if err := fs.Set(k, v); err != nil {
			t.Errorf("%s: %s: %v", name, k, err)
		}
	}
}

// TestKubernetesSidecar checks deploy/kubernetes/sidecar.yaml like a
// schema validator would (required fields per kind, references between
// objects), and validates the pgveil settings and policy it carries.
func TestKubernetesSidecar(t *testing.T) {
	docs := yamlDocs(t, "deploy/kubernetes/sidecar.yaml")
	required := map[string]string{"ConfigMap": "v1", "Secret": "v1", "Deployment": "apps/v1"}
	objects := map[string]map[string]any{}
	for i, d := range docs {
		kind, api, name := str(d["kind"]), str(d["apiVersion"]), str(field(d, "metadata", "name"))
		if want, ok := required[kind]; !ok || api != want {
			t.Fatalf("document %d: kind %q apiVersion %q", i, kind, api)
		}
		if !regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`).MatchString(name) {
			t.Errorf("document %d: invalid metadata.name %q", i, name)
		}
		objects[kind+"/"+name] = d
	}
	cm := objects["ConfigMap/pgveil-policy"]
	if cm == nil {
		t.Fatal("no ConfigMap pgveil-policy")
	}
	if _, err := rules.Parse("policy.yaml", []byte(str(field(cm, "data", "policy.yaml")))); err != nil {
		t.Errorf("the ConfigMap's policy: %v", err)
	}
	checkServeConfig(t, "the ConfigMap's pgveil.yaml", []byte(str(field(cm, "data", "pgveil.yaml"))))

	dep := objects["Deployment/app"]
	if dep == nil {
		t.Fatal("no Deployment app")
	}
	spec := field(dep, "spec", "template", "spec")
	sel, _ := field(dep, "spec", "selector", "matchLabels").(map[string]any)
	labels, _ := field(dep, "spec", "template", "metadata", "labels").(map[string]any)
	for k, v := range sel {
		if labels[k] != v {
			t.Errorf("selector %s=%v does not match the pod labels", k, v)
		}
	}
	volumes := map[string]bool{}
	vols, _ := field(spec, "volumes").([]any)
	for _, v := range vols {
		volumes[str(field(v, "name"))] = true
		if cmName := str(field(v, "configMap", "name")); cmName != "" && objects["ConfigMap/"+cmName] == nil {
			t.Errorf("volume uses ConfigMap %q, not in the file", cmName)
		}
	}
	containers, _ := field(spec, "containers").([]any)
	var veil any
	for _, c := range containers {
		if str(field(c, "name")) == "" || str(field(c, "image")) == "" {
			t.Errorf("container without name or image: %v", c)
		}
		if str(field(c, "name")) == "pgveil" {
			veil = c
		}
		mounts, _ := field(c, "volumeMounts").([]any)
		for _, m := range mounts {
			if !volumes[str(field(m, "name"))] {
				t.Errorf("volumeMount %q has no volume", str(field(m, "name")))
			}
		}
	}
	if veil == nil {
		t.Fatal("no pgveil container")
	}
	ports := map[string]bool{}
	pl, _ := field(veil, "ports").([]any)
	for _, p := range pl {
		ports[str(field(p, "name"))] = true
	}
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"} {
		if got := str(field(veil, probe, "httpGet", "path")); got != path {
			t.Errorf("%s path %q, want %q", probe, got, path)
		}
		if port := str(field(veil, probe, "httpGet", "port")); !ports[port] {
			t.Errorf("%s uses port %q, which the container does not name", probe, port)
		}
	}
	if field(veil, "lifecycle", "preStop") == nil {
		t.Error("the pgveil container has no preStop hook")
	}
	if ref := str(field(veil, "env", 0, "valueFrom", "secretKeyRef", "name")); objects["Secret/"+ref] == nil {
		t.Errorf("env refers to Secret %q, not in the file", ref)
	}
	args, _ := field(veil, "args").([]any)
	if len(args) == 0 || str(args[0]) != "serve" {
		t.Errorf("pgveil args %v do not run serve", args)
	}
}

// TestCompose checks deploy/compose.yaml: every service has an image or a
// build, the files it mounts exist, and the pgveil settings and policy
// are valid.
func TestCompose(t *testing.T) {
	docs := yamlDocs(t, "deploy/compose.yaml")
	if len(docs) != 1 {
		t.Fatalf("%d documents", len(docs))
	}
	services, _ := docs[0]["services"].(map[string]any)
	for _, name := range []string{"postgres", "vault", "pgveil", "psql"} {
		s := services[name]
		if s == nil {
			t.Errorf("no service %s", name)
			continue
		}
		if str(field(s, "image")) == "" && field(s, "build") == nil {
			t.Errorf("service %s has neither image nor build", name)
		}
		vols, _ := field(s, "volumes").([]any)
		for _, v := range vols {
			src, _, _ := strings.Cut(str(v), ":")
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join("deploy", src)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			}
		}
	}
	if ctx := str(field(services["pgveil"], "build", "context")); ctx != ".." {
		t.Errorf("pgveil build context %q", ctx)
	}
	if _, err := os.Stat(filepath.Join("deploy", "..", str(field(services["pgveil"], "build", "dockerfile")))); err != nil {
		t.Errorf("pgveil Dockerfile: %v", err)
	}
	data, err := os.ReadFile("deploy/compose/pgveil.yaml")
	if err != nil {
		t.Fatal(err)
	}
	checkServeConfig(t, "deploy/compose/pgveil.yaml", data)
	if _, err := rules.Load("deploy/compose/policy.yaml"); err != nil {
		t.Error(err)
	}
}

// TestDockerfile checks the parts of the Dockerfile that refer to pgveil:
// a non-root user, the exposed ports, and a HEALTHCHECK command that the
// binary understands.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	for _, want := range []string{"USER 65532:65532", "EXPOSE 6432 9187", `HEALTHCHECK`, `CMD ["/usr/local/bin/pgveil", "healthcheck"]`, "CGO_ENABLED=1"} {
		if !strings.Contains(text, want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
	if strings.Count(text, "FROM ") < 2 {
		t.Error("Dockerfile is not multi-stage")
	}
	var out, errb bytes.Buffer
	if code := run(t.Context(), []string{"healthcheck", "--help"}, &out, &errb); code != exitOK {
		t.Errorf("pgveil healthcheck --help: exit %d %s", code, errb.String())
	}
}
