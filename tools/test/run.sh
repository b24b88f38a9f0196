#!/usr/bin/env bash
# The test command (`npm test`): protobuf lint, generated code up to date, typecheck,
# then every test file (unit, contract and end-to-end). Prints progress; exits non-zero
# on the first failing step.
set -euo pipefail
cd "$(dirname "$0")/../.."

step() { printf '\n==> %s\n' "$*"; }

step "buf lint"
npx --no-install buf lint

step "gen/ is what buf generate produces"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
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

step "tests"
mapfile -t files < <(find lib gateway services tools -name '*.test.ts' -not -path '*/node_modules/*' | sort)
printf '  %s\n' "${files[@]}"
# Two files at a time: this box has 2 cores, and each embedded database takes ~1 GB.
node --import tsx --test --test-concurrency=2 --test-reporter=spec "${files[@]}"
