// Command deploycheck validates Parley's deployment files without a cluster, a Docker
// engine or downloaded schemas (tools/tilt/check.sh runs it).
//
//	deploycheck k8s [-complete] [-label NAME] [FILE...]     rendered manifests (no FILE: stdin)
//	deploycheck dockerfile [-context DIR] [-target STAGE] DOCKERFILE
//
// k8s: every document is decoded STRICTLY into the Go types of k8s.io/api (the types the
// API server itself decodes into): an unknown or duplicated field, a wrong type or an
// unregistered kind fails. Then checks that the API server or the kubelet would only
// report at apply or run time, or never:
//
//   - names, namespaces, label keys and values, port names, env var names are valid;
//   - no object appears twice; a workload's selector matches its pod template;
//   - every container has an image, cpu and memory requests, a memory limit, a readiness
//     and a liveness probe, each probe with exactly one handler on a declared port;
//   - `$(VAR)` in an env value names a variable defined before it (else Kubernetes keeps
//     the text literally);
//   - a Service selects at least one pod template and its target ports exist there;
//     a StatefulSet's serviceName is a headless Service of the render;
//   - with -complete (a whole overlay): every ConfigMap, Secret, key, PVC and
//     ServiceAccount a pod refers to is part of the render.
//
// dockerfile: BuildKit's Dockerfile parser and lint rules (what `docker build --check`
// runs), the target stage exists, and every COPY source is in the build context and not
// excluded by its dockerignore file.
//
// Exit status 0 when everything passes, 1 with one line per problem, 2 on bad usage.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "k8s":
		os.Exit(runK8s(os.Args[2:]))
	case "dockerfile":
		os.Exit(runDockerfile(os.Args[2:]))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: deploycheck k8s [-complete] [-label NAME] [FILE...] | deploycheck dockerfile [-context DIR] [-target STAGE] DOCKERFILE")
	os.Exit(2)
}

func runDockerfile(args []string) int {
	fs := flag.NewFlagSet("dockerfile", flag.ExitOnError)
	contextDir := fs.String("context", ".", "the build context")
	target := fs.String("target", "", "the stage that is built")
	_ = fs.Parse(args)
	if fs.NArg() != 1 {
		usage()
	}
	problems := checkDockerfile(fs.Arg(0), *contextDir, *target)
	if len(problems) > 0 {
		fmt.Printf("FAIL %s: %d problem(s)\n", fs.Arg(0), len(problems))
		for _, p := range problems {
			fmt.Printf("  - %s\n", p)
		}
		return 1
	}
	fmt.Printf("ok   %s: lint clean, target %q, every COPY source in the context\n", fs.Arg(0), *target)
	return 0
}

func runK8s(args []string) int {
	fs := flag.NewFlagSet("k8s", flag.ExitOnError)
	complete := fs.Bool("complete", false, "every referenced ConfigMap, Secret, PVC and ServiceAccount must be in the render")
	label := fs.String("label", "", "name to print in the summary (default: the file names)")
	_ = fs.Parse(args)

	var docs []document
	var err error
	names := fs.Args()
	if len(names) == 0 {
		docs, err = splitDocuments("<stdin>", os.Stdin)
		names = []string{"<stdin>"}
	} else {
		for _, name := range names {
			var f *os.File
			if f, err = os.Open(name); err != nil {
				break
			}
			var d []document
			d, err = splitDocuments(name, f)
			f.Close()
			docs = append(docs, d...)
			if err != nil {
				break
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "deploycheck: %v\n", err)
		return 2
	}
	what := *label
	if what == "" {
		what = strings.Join(names, " ")
	}
	res := check(docs, *complete)
	if res.objects == 0 && len(res.problems) == 0 {
		fmt.Printf("FAIL %s: no objects\n", what)
		return 1
	}
	if len(res.problems) > 0 {
		fmt.Printf("FAIL %s: %d problem(s) in %d object(s)\n", what, len(res.problems), res.objects)
		for _, p := range res.problems {
			fmt.Printf("  - %s\n", p)
		}
		return 1
	}
	fmt.Printf("ok   %s: %d objects valid (%s)\n", what, res.objects, res.summary())
	return 0
}

// document is one YAML document of a stream, with where it came from.
type document struct {
	source string
	index  int
	data   []byte
}

func splitDocuments(source string, r io.Reader) ([]document, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	var docs []document
	for i := 0; ; i++ {
		data, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return docs, fmt.Errorf("%s: document %d: %w", source, i+1, err)
		}
		if len(bytes.TrimSpace(stripComments(data))) == 0 {
			continue
		}
		docs = append(docs, document{source: source, index: i + 1, data: data})
	}
}

func stripComments(data []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(data, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out.Write(line)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

type result struct {
	objects  int
	kinds    map[string]int
	problems []string
}

func (r *result) summary() string {
	keys := make([]string, 0, len(r.kinds))
	for k := range r.kinds {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %d", k, r.kinds[k])
	}
	return strings.Join(parts, ", ")
}

// strictDecoder decodes YAML into the registered Go types, failing on unknown and
// duplicate fields.
var strictDecoder = json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme.Scheme, scheme.Scheme,
	json.SerializerOptions{Yaml: true, Strict: true})

// decode turns a document into a typed object.
func decode(d document) (runtime.Object, string, error) {
	obj, gvk, err := strictDecoder.Decode(d.data, nil, nil)
	kind := ""
	if gvk != nil {
		kind = gvk.Kind
	}
	if err != nil && !runtime.IsStrictDecodingError(err) {
		return nil, kind, err
	}
	// A strict decoding error (unknown or duplicate field) still yields the object: report
	// the error and check the rest of it too.
	return obj, kind, err
}

func check(docs []document, complete bool) *result {
	res := &result{kinds: map[string]int{}}
	var objs []runtime.Object
	for _, d := range docs {
		obj, kind, err := decode(d)
		if err != nil {
			res.problems = append(res.problems, fmt.Sprintf("%s document %d (%s): %v", d.source, d.index, orUnknown(kind), err))
		}
		if obj == nil {
			continue
		}
		res.objects++
		res.kinds[kind]++
		objs = append(objs, obj)
	}
	res.problems = append(res.problems, validate(objs, complete)...)
	return res
}

func orUnknown(kind string) string {
	if kind == "" {
		return "unknown kind"
	}
	return kind
}
