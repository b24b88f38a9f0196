#!/usr/bin/env bash
# The Tiltfile's npm-deps resource: installs the npm dependencies only when node_modules
# does not satisfy package.json (npm ci deletes node_modules first, which must not
# happen under running processes for nothing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
if [[ -d node_modules ]] && npm ls --depth=0 >/dev/null 2>&1; then
  echo "node_modules satisfies package.json"
  exit 0
fi
echo "installing npm dependencies (npm ci)"
npm ci --no-audit --no-fund
