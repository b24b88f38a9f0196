#!/usr/bin/env bash
# Runs a Parley process on the real backends of tools/infra/infra.sh (the Tiltfile's
# local mode): exports their addresses the way tools/cluster/cluster.ts passes them,
# then becomes the process (exec: one PID, signals reach it directly).
#
#   tools/tilt/with-infra.sh NEEDS COMMAND [ARG...]
#
# NEEDS is a comma-separated list of postgres, redis, etcd, cassandra: the backends this
# process cannot do without. One that is not running is a loud failure, never a silent
# fall-back to an embedded database. Backends that run but are not needed are exported
# too (cluster.ts gives every process all four).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

needs=${1:?usage: with-infra.sh NEEDS COMMAND [ARG...]}
shift
(($#)) || { echo "with-infra: no command" >&2; exit 2; }

eval "$(tools/infra/infra.sh env)"
declare -A var=(
  [postgres]=PARLEY_TEST_POSTGRES_URL [redis]=PARLEY_TEST_REDIS_URL
  [etcd]=PARLEY_TEST_ETCD_URL [cassandra]=PARLEY_TEST_CASSANDRA
)
IFS=, read -ra wanted <<<"$needs"
for name in "${wanted[@]}"; do
  [[ -n ${var[$name]:-} ]] || { echo "with-infra: unknown backend '$name' (postgres, redis, etcd, cassandra)" >&2; exit 2; }
  if [[ -z ${!var[$name]:-} ]]; then
    echo "with-infra: $name is not running (tools/infra/infra.sh up $name)" >&2
    exit 1
  fi
done
[[ -z ${PARLEY_TEST_POSTGRES_URL:-} ]] || export PARLEY_POSTGRES_URL=$PARLEY_TEST_POSTGRES_URL
[[ -z ${PARLEY_TEST_REDIS_URL:-} ]] || export PARLEY_REDIS_URL=$PARLEY_TEST_REDIS_URL
[[ -z ${PARLEY_TEST_ETCD_URL:-} ]] || export PARLEY_ETCD_ENDPOINTS=$PARLEY_TEST_ETCD_URL
[[ -z ${PARLEY_TEST_CASSANDRA:-} ]] || export PARLEY_CASSANDRA_CONTACT_POINTS=$PARLEY_TEST_CASSANDRA
unset PARLEY_TEST_POSTGRES_URL PARLEY_TEST_REDIS_URL PARLEY_TEST_ETCD_URL PARLEY_TEST_CASSANDRA
exec "$@"
