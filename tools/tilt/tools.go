//go:build tools

// Package tools pins the commands this module builds (tools/tilt/install.sh): Tilt and
// kustomize, at the versions go.mod names.
package tools

import (
	_ "github.com/tilt-dev/tilt/cmd/tilt"
	_ "sigs.k8s.io/kustomize/kustomize/v5"
)
