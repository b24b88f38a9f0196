#!/usr/bin/env bash
# Builds the developer tools of tools/tilt into .work/tilt/bin (idempotent: a tool whose
# inputs did not change is not rebuilt; progress and timings on stdout):
#
#   tilt         Tilt, the version tools/tilt/go.mod pins, from the Go module proxy
#   kustomize    kustomize, likewise (Tilt's kustomize() runs it; so does check.sh)
#   deploycheck  our validator of the Kubernetes manifests and the Dockerfile
#                (tools/tilt/deploycheck)
#
#   tools/tilt/install.sh [--force]        then: export PATH="$PWD/.work/tilt/bin:$PATH"
#
# Why not `go install github.com/tilt-dev/tilt/cmd/tilt@v0.37.1`: the Go proxy reachable
# here refuses that module's version list, which `go install pkg@version` reads; it
# serves the version itself. So tools/tilt is a small module that requires Tilt (with
# Tilt's own `replace` lines, which a dependency's go.mod cannot impose) and a committed
# go.sum, and this script builds inside it. Tilt's web UI is a separate JavaScript build
# that is not in the Go module, and a Tilt built from source refuses to start without it;
# the build therefore uses a copy of the Tilt module with a one-page stand-in
# (tools/tilt/webui/index.html) embedded: `tilt ci` and `tilt up --stream` work, the
# browser UI shows that page.
#
# Upgrading Tilt: change its version in go.mod, copy any new `replace` lines from Tilt's
# go.mod, run `go mod tidy` in tools/tilt and commit go.mod and go.sum. The checksum
# database does not know github.com/tilt-dev/starlark-lsp (a pseudo-version only Tilt
# uses): `go mod tidy` fails on it until its two lines are copied from Tilt's own go.sum
# (grep starlark-lsp "$(go env GOMODCACHE)/github.com/tilt-dev/tilt@vX.Y.Z/go.sum").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tools/tilt"
WORK=${PARLEY_TILT_WORK:-$ROOT/.work/tilt}
BIN="$WORK/bin"
TILT_VERSION=0.37.1
# Bump when the way Tilt is built below changes (its inputs' digest includes this).
RECIPE=1

force=0
if [[ ${1:-} == --force ]]; then force=1; fi

say() { printf '==> %s\n' "$*"; }
die() { printf 'tilt install: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

command -v go >/dev/null || die "go is not installed (the Go toolchain builds Tilt; see docs/development.md)"
mkdir -p "$BIN"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}

# A digest of a tool's inputs: rebuild when it differs from the recorded one.
digest() { (go version; echo "recipe $RECIPE"; cat "$@") | sha256sum | cut -c1-16; }
fresh() { [[ $force == 0 && -x $BIN/$1 && -f $WORK/$1.stamp && $(cat "$WORK/$1.stamp") == "$2" ]]; }

cd "$HERE"

# ---- tilt
tilt_inputs=(go.mod go.sum tools.go webui/index.html)
stamp=$(digest "${tilt_inputs[@]}")
if fresh tilt "$stamp"; then
  say "tilt: up to date ($("$BIN/tilt" version))"
else
  t0=$(now)
  go mod download github.com/tilt-dev/tilt || die "could not download the Tilt module"
  src=$(go list -m -f '{{.Dir}}' github.com/tilt-dev/tilt)
  [[ -n $src && -d $src ]] || die "the Tilt module is not in the module cache"
  # The Tilt module with the stand-in web UI, and a go.mod that points at it (-modfile:
  # tools/tilt/go.mod stays as committed).
  say "tilt: preparing the module copy with the stand-in web UI"
  rm -rf "$WORK/tilt-src" "$WORK/build.mod" "$WORK/build.sum"
  cp -r "$src" "$WORK/tilt-src"
  chmod -R u+w "$WORK/tilt-src"
  cp webui/index.html "$WORK/tilt-src/pkg/assets/build/index.html"
  { cat go.mod; printf '\nreplace github.com/tilt-dev/tilt => %s\n' "$WORK/tilt-src"; } >"$WORK/build.mod"
  cp go.sum "$WORK/build.sum"
  say "tilt: building v$TILT_VERSION (the first time downloads its dependencies and takes about 5 minutes on 2 cores)"
  go build -modfile="$WORK/build.mod" -trimpath \
    -ldflags "-s -w -X main.version=$TILT_VERSION -X main.date=$(date -u +%Y-%m-%d)" \
    -o "$BIN/tilt.new" github.com/tilt-dev/tilt/cmd/tilt || die "building Tilt failed"
  mv "$BIN/tilt.new" "$BIN/tilt"
  echo "$stamp" >"$WORK/tilt.stamp"
  say "tilt: built $("$BIN/tilt" version) in $(since "$t0")"
fi

# ---- kustomize
stamp=$(digest go.mod go.sum tools.go)
if fresh kustomize "$stamp"; then
  say "kustomize: up to date ($("$BIN/kustomize" version))"
else
  t0=$(now)
  say "kustomize: building"
  go build -trimpath -ldflags "-s -w" -o "$BIN/kustomize.new" sigs.k8s.io/kustomize/kustomize/v5 || die "building kustomize failed"
  mv "$BIN/kustomize.new" "$BIN/kustomize"
  echo "$stamp" >"$WORK/kustomize.stamp"
  say "kustomize: built $("$BIN/kustomize" version) in $(since "$t0")"
fi

# ---- deploycheck
stamp=$(digest go.mod go.sum deploycheck/*.go)
if fresh deploycheck "$stamp"; then
  say "deploycheck: up to date"
else
  t0=$(now)
  say "deploycheck: building"
  go build -trimpath -o "$BIN/deploycheck.new" ./deploycheck || die "building deploycheck failed"
  mv "$BIN/deploycheck.new" "$BIN/deploycheck"
  echo "$stamp" >"$WORK/deploycheck.stamp"
  say "deploycheck: built in $(since "$t0")"
fi
