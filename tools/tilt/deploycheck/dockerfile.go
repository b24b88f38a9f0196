package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerui"
	"github.com/moby/buildkit/solver/pb"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
)

// checkDockerfile lints a Dockerfile the way `docker build --check` does (BuildKit's own
// Dockerfile frontend and rules, with base images resolved offline), checks that
// `target` is one of its stages, and that every file COPY takes from the build context
// exists there and is not excluded by the dockerignore file that applies
// (<Dockerfile>.dockerignore beside it, else <context>/.dockerignore).
func checkDockerfile(dockerfile, contextDir, target string) []string {
	var problems []string
	dt, err := os.ReadFile(dockerfile)
	if err != nil {
		return []string{err.Error()}
	}

	// 1. BuildKit's lint rules and its conversion to LLB (syntax, flags, stage references).
	source := llb.NewSourceMap(nil, filepath.Base(dockerfile), "Dockerfile", dt)
	source.Definition = &llb.Definition{} // no LLB state: the Dockerfile is only read
	res, err := dockerfile2llb.DockerfileLint(context.Background(), dt, dockerfile2llb.ConvertOpt{
		Config:       dockerui.Config{Target: target},
		SourceMap:    source,
		MetaResolver: offlineImages{},
	})
	if err != nil {
		return []string{fmt.Sprintf("%s: lint: %v", dockerfile, err)}
	}
	if res.Error != nil {
		problems = append(problems, fmt.Sprintf("%s:%s: %s", dockerfile, pbLine(res.Error.Location.Ranges), res.Error.Message))
	}
	for _, w := range res.Warnings {
		where := "?"
		if w.Location != nil {
			where = pbLine(w.Location.Ranges)
		}
		problems = append(problems, fmt.Sprintf("%s:%s: %s: %s", dockerfile, where, w.RuleName, w.Detail))
	}

	// 2. The target and the build context.
	ast, err := parser.Parse(bytes.NewReader(dt))
	if err != nil {
		return append(problems, fmt.Sprintf("%s: %v", dockerfile, err))
	}
	stages, _, err := instructions.Parse(ast.AST, nil)
	if err != nil {
		return append(problems, fmt.Sprintf("%s: %v", dockerfile, err))
	}
	names := map[string]bool{}
	for _, s := range stages {
		names[strings.ToLower(s.Name)] = true
	}
	if target != "" && !names[strings.ToLower(target)] {
		problems = append(problems, fmt.Sprintf("%s: no stage named %q", dockerfile, target))
	}
	excludes, ignoreFile, err := readIgnore(dockerfile, contextDir)
	if err != nil {
		return append(problems, err.Error())
	}
	pm, err := patternmatcher.New(excludes)
	if err != nil {
		return append(problems, fmt.Sprintf("%s: %v", ignoreFile, err))
	}
	for _, s := range stages {
		for _, c := range s.Commands {
			var sources []string
			var loc []parser.Range
			switch cmd := c.(type) {
			case *instructions.CopyCommand:
				if cmd.From != "" || len(cmd.SourceContents) > 0 {
					continue
				}
				sources, loc = cmd.SourcePaths, cmd.Location()
			case *instructions.AddCommand:
				sources, loc = cmd.SourcePaths, cmd.Location()
			default:
				continue
			}
			for _, src := range sources {
				if strings.Contains(src, "://") {
					continue // ADD of a URL
				}
				if msg := contextSource(contextDir, src, pm); msg != "" {
					problems = append(problems, fmt.Sprintf("%s:%s: COPY %s: %s", dockerfile, parserLine(loc), src, msg))
				}
			}
		}
	}
	return problems
}

// contextSource says what is wrong with a COPY source, or "".
func contextSource(contextDir, src string, pm *patternmatcher.PatternMatcher) string {
	clean := filepath.Clean(strings.TrimPrefix(src, "/"))
	if strings.HasPrefix(clean, "..") {
		return "outside the build context"
	}
	matches, err := filepath.Glob(filepath.Join(contextDir, clean))
	if err != nil {
		return err.Error()
	}
	if len(matches) == 0 {
		return "no such file in the build context"
	}
	for _, m := range matches {
		rel, _ := filepath.Rel(contextDir, m)
		excluded, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			return err.Error()
		}
		if !excluded {
			return ""
		}
	}
	return "excluded by the dockerignore file"
}

func readIgnore(dockerfile, contextDir string) ([]string, string, error) {
	for _, name := range []string{dockerfile + ".dockerignore", filepath.Join(contextDir, ".dockerignore")} {
		f, err := os.Open(name)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, name, err
		}
		defer f.Close()
		patterns, err := ignorefile.ReadAll(f)
		return patterns, name, err
	}
	return nil, "", nil
}

func pbLine(ranges []*pb.Range) string {
	if len(ranges) == 0 || ranges[0].Start == nil {
		return "?"
	}
	return fmt.Sprint(ranges[0].Start.Line)
}

func parserLine(ranges []parser.Range) string {
	if len(ranges) == 0 {
		return "?"
	}
	return fmt.Sprint(ranges[0].Start.Line)
}

// offlineImages answers BuildKit's questions about base images without a registry: an
// empty linux image config (the lint rules need the image's environment and platform,
// not its content).
type offlineImages struct{}

func (offlineImages) ResolveImageConfig(_ context.Context, ref string, _ sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	cfg := []byte(`{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},"rootfs":{"type":"layers","diff_ids":[]}}`)
	return ref, digest.FromBytes(cfg), cfg, nil
}
