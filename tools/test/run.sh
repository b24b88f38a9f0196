#!/usr/bin/env bash
# The test command (`npm test`): protobuf lint, generated code up to date, typecheck,
# then every test file (unit, contract and end-to-end), the contract suites also against
# real Postgres, Redis, etcd and Cassandra started once for the run by tools/infra/infra.sh
# (and stopped at the end, unless PARLEY_INFRA_KEEP=1; servers that were already running
# are left running), then the developer platform (tools/tilt/check.sh: manifests, Dockerfile,
# Tiltfile and `tilt ci` against a local cluster). Prints progress; exits non-zero on the
# first failing step.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n==> %s\n' "$*"; }

step "buf lint"
npx --no-install buf lint

step "gen/ is what buf generate produces"
tmp=$(mktemp -d)
started="$tmp/infra-started" # the servers this run started (infra.sh up --record)
cleanup() {
  if [[ -s $started ]]; then
    if [[ ${PARLEY_INFRA_KEEP:-} == 1 ]]; then
      step "leaving the test servers running (PARLEY_INFRA_KEEP=1; stop them with: npm run infra -- down)"
    else
      step "stopping the test servers this run started"
      mapfile -t names <"$started"
      tools/infra/infra.sh down "${names[@]}" || true
    fi
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
npx --no-install buf generate --output "$tmp"
if ! diff -r gen "$tmp/gen" >/dev/null; then
  diff -r gen "$tmp/gen" | head -n 40
  echo "gen/ is stale: run 'npm run generate' and commit the result" >&2
  exit 1
fi
echo "up to date"

step "typecheck (tsc --noEmit)"
npx --no-install tsc --noEmit -p tsconfig.json
echo "ok"

step "test servers (tools/infra/infra.sh up)"
tools/infra/infra.sh up --record "$started"
eval "$(tools/infra/infra.sh env)"
export PARLEY_REQUIRE_REAL_BACKENDS=1
env | grep '^PARLEY_TEST_' | sort | sed 's/^/  /'

step "tests"
mapfile -t files < <(find lib gateway services tools -name '*.test.ts' -not -path '*/node_modules/*' | sort)
printf '  %s\n' "${files[@]}"
# Two files at a time: this box has 2 cores, and each embedded database takes ~1 GB.
node --import tsx --test --test-concurrency=2 --test-reporter=spec "${files[@]}"

step "developer platform: Kubernetes manifests, Dockerfile, Tiltfile, tilt ci (tools/tilt/check.sh)"
tools/tilt/check.sh
