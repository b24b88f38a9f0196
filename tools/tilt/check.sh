#!/usr/bin/env bash
# Checks the developer platform (docs/development.md, "What check.sh validates"):
#
#   1. builds Tilt, kustomize and deploycheck if needed (tools/tilt/install.sh);
#   2. deploycheck's own tests (go test: it must catch what it claims to catch);
#   3. renders deploy/k8s/base and every overlay with kustomize and validates every
#      object strictly against the Kubernetes API types (deploycheck k8s);
#   4. lints deploy/Dockerfile with BuildKit's rules and checks its build context
#      (deploycheck dockerfile);
#   5. loads the Tiltfile in both modes without running anything (tilt alpha
#      tiltfile-result) and checks the resources, labels, dependencies, probes, port
#      forwards and image builds it declares (tools/tilt/tiltfile-check.ts);
#   6. runs `tilt ci` in local mode: the backends (tools/infra/infra.sh), every service
#      process and two gateways, then tools/e2e/cluster-smoke.ts against them; then
#      checks that no process of the run is left behind.
#
#   tools/tilt/check.sh [--static]     (--static: steps 1-5 only, no `tilt ci`)
#
# The backends: servers that run already are used and left alone (the test command
# starts them before it calls this); servers this run had to start are stopped at the
# end unless PARLEY_INFRA_KEEP=1. Environment: PARLEY_TILT_CI_TIMEOUT (default 5m),
# PARLEY_TILT_PORT_BASE (default 27000 here, so that a developer's `tilt up` on 17000
# can run beside it), PARLEY_TILT_NAMESPACE (default parley-tilt-check).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD

static=0
if [[ ${1:-} == --static ]]; then static=1; fi

WORK=$ROOT/.work/tilt
export PATH="$WORK/bin:$PATH"
step() { printf '\n==> tilt check: %s\n' "$*"; }
die() { printf 'tilt check: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
t_all=$(now)

step "tools (tools/tilt/install.sh)"
tools/tilt/install.sh

step "deploycheck's tests"
(cd tools/tilt && GOFLAGS="${GOFLAGS:-} -buildvcs=false" go test ./deploycheck)

step "Kubernetes manifests: kustomize build + strict validation"
mkdir -p "$WORK/render"
kustomize build deploy/k8s/base >"$WORK/render/base.yaml"
deploycheck k8s -label deploy/k8s/base "$WORK/render/base.yaml"
for overlay in deploy/k8s/overlays/*/; do
  overlay=${overlay%/}
  name=$(basename "$overlay")
  kustomize build "$overlay" >"$WORK/render/$name.yaml"
  # An overlay is what gets applied: everything it refers to must be in it.
  deploycheck k8s -complete -label "$overlay" "$WORK/render/$name.yaml"
done

step "Dockerfile: BuildKit lint + build context"
deploycheck dockerfile -context . -target runtime deploy/Dockerfile

step "Tiltfile: both modes load and declare the expected resources"
tilt alpha tiltfile-result >"$WORK/tiltfile-local.json" 2>"$WORK/tiltfile-local.log" \
  || { cat "$WORK/tiltfile-local.log" >&2; die "the Tiltfile does not load in local mode"; }
tilt alpha tiltfile-result -- --mode=k8s >"$WORK/tiltfile-k8s.json" 2>"$WORK/tiltfile-k8s.log" \
  || { cat "$WORK/tiltfile-k8s.log" >&2; die "the Tiltfile does not load in k8s mode"; }
node --import tsx tools/tilt/tiltfile-check.ts "$WORK/tiltfile-local.json" "$WORK/tiltfile-k8s.json"

if ((static)); then
  step "static checks passed in $(since "$t_all") (--static: no tilt ci)"
  exit 0
fi

# ------------------------------------------------------------------------- tilt ci
export PARLEY_TILT_PORT_BASE=${PARLEY_TILT_PORT_BASE:-27000}
export PARLEY_TILT_NAMESPACE=${PARLEY_TILT_NAMESPACE:-parley-tilt-check}
export PARLEY_LOG_LEVEL=${PARLEY_LOG_LEVEL:-warn}
timeout=${PARLEY_TILT_CI_TIMEOUT:-5m}
export PARLEY_TILT_CI_TIMEOUT=$timeout # the Tiltfile's ci_settings
[[ $timeout =~ ^([0-9]+)(m|s)$ ]] || die "PARLEY_TILT_CI_TIMEOUT must be like 5m or 300s (got '$timeout')"
timeout_s=${BASH_REMATCH[1]}
if [[ ${BASH_REMATCH[2]} == m ]]; then timeout_s=$((timeout_s * 60)); fi
# Tilt and every process it starts inherit this marker (this script does not carry it):
# how leftovers are found.
run_id="check-$$-$(date +%s)"
record=$(mktemp)
export PARLEY_TILT_INFRA_RECORD=$record

# Processes that carry this run's marker, except the backend servers (infra.sh starts
# each in its own session; those are left to infra.sh).
leftovers() {
  local infra_sids=" " f pid sid
  for f in "${PARLEY_INFRA_DIR:-$ROOT/.work/infra}"/*/pid; do [[ -s $f ]] && infra_sids+="$(<"$f") "; done
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
    { tr '\0' '\n' <"$f"; } 2>/dev/null | grep -qx "PARLEY_TILT_RUN=$run_id" || continue
    sid=$(awk '{print $6}' "/proc/$pid/stat" 2>/dev/null) || continue
    [[ $infra_sids == *" $sid "* ]] && continue
    echo "$pid"
  done
}

cleanup() {
  local left
  left=$(leftovers | tr '\n' ' ')
  if [[ -n ${left// /} ]]; then
    echo "tilt check: stopping processes left behind: $left" >&2
    # shellcheck disable=SC2086
    kill -TERM $left 2>/dev/null || true
    local deadline=$((SECONDS + 10))
    while [[ -n $(leftovers) ]] && ((SECONDS < deadline)); do sleep 0.2; done
    left=$(leftovers | tr '\n' ' ')
    # shellcheck disable=SC2086
    [[ -z ${left// /} ]] || kill -KILL $left 2>/dev/null || true
  fi
  if [[ -s $record ]]; then
    if [[ ${PARLEY_INFRA_KEEP:-} == 1 ]]; then
      echo "tilt check: leaving the servers this run started running (PARLEY_INFRA_KEEP=1): $(tr '\n' ' ' <"$record")"
    else
      mapfile -t names < <(sort -u "$record")
      tools/infra/infra.sh down "${names[@]}" || true
    fi
  fi
  rm -f "$record"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for port in $PARLEY_TILT_PORT_BASE $((PARLEY_TILT_PORT_BASE + 1)) $((PARLEY_TILT_PORT_BASE + 101)); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use (another tilt up?): set PARLEY_TILT_PORT_BASE to a free range"
  fi
done

step "tilt ci (local mode, namespace $PARLEY_TILT_NAMESPACE, ports from $PARLEY_TILT_PORT_BASE, timeout $timeout; log: .work/tilt/ci.log)"
t0=$(now)
set +e
# --port 0: no web server (nothing to clash with a developer's `tilt up`). The outer
# timeout only backs up Tilt's own; SIGINT lets Tilt stop its processes.
timeout -k 60 -s INT $((timeout_s + 60)) \
  env PARLEY_TILT_RUN="$run_id" tilt ci --port 0 --timeout "$timeout" 2>&1 | tee "$WORK/ci.log"
rc=${PIPESTATUS[0]}
set -e
echo "tilt ci exited with $rc after $(since "$t0")"

step "no process of the run is left behind"
deadline=$((SECONDS + 15))
while [[ -n $(leftovers) ]] && ((SECONDS < deadline)); do sleep 0.2; done
left=$(leftovers | tr '\n' ' ')
if [[ -n ${left// /} ]]; then
  for pid in $left; do echo "  left behind: $pid $({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | cut -c1-150)"; done
  die "tilt ci left processes behind"
fi
echo "none"
((rc == 0)) || die "tilt ci failed (exit $rc): see the log above or .work/tilt/ci.log"
step "passed in $(since "$t_all")"
