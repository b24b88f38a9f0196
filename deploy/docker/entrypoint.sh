#!/bin/sh
# The entry point of the Parley image: one image for every process, the kind chosen by
# PARLEY_PROCESS (or the first argument): gateway, session, router, messagestore,
# presence, groups or notify. The process runs as PID 1 in place of this script, so it
# gets SIGTERM directly and drains (lib/shutdown.ts).
#
# PARLEY_DEV_WATCH=1 (the local overlay, for Tilt's live_update): node restarts the
# process when a synced source file changes (node --watch-path over the sources).
set -eu

kind=${1:-${PARLEY_PROCESS:-}}
case $kind in
  gateway) entry=gateway/src/main.ts ;;
  session | router | messagestore | presence | groups | notify) entry=services/$kind/src/main.ts ;;
  *)
    echo "parley: set PARLEY_PROCESS (or pass an argument) to one of gateway, session, router, messagestore, presence, groups, notify; got '$kind'" >&2
    exit 64
    ;;
esac

cd /app
if [ "${PARLEY_DEV_WATCH:-}" = 1 ]; then
  exec node --watch-path=gen --watch-path=lib --watch-path="${entry%/src/main.ts}/src" --import tsx "$entry"
fi
exec node --import tsx "$entry"
