#!/usr/bin/env bash
# Readiness probe for a Parley service process: asks its standard gRPC health service
# (grpc.health.v1.Health/Check, the whole server: service "") and exits 0 only when
# the answer is SERVING.
#
#   tools/tilt/grpc-health.sh HOST:PORT [SERVICE]
#
# curl speaks cleartext HTTP/2 (prior knowledge) and costs a few milliseconds, where a
# node script would cost a few hundred: the Tiltfile runs this every few seconds for
# every service. The request is one gRPC message: 5 bytes of framing (not compressed,
# length) and a HealthCheckRequest whose only field is the service name. The answer
# must be exactly one message `status: SERVING` (field 1, varint 1 → 08 01), which a
# failed call (gRPC error in the trailers, empty body), NOT_SERVING (08 02) or a
# stopping server never produces.
set -euo pipefail

target=${1:?usage: grpc-health.sh HOST:PORT [SERVICE]}
service=${2:-}
[[ $service =~ ^[A-Za-z0-9._]{0,127}$ ]] || { echo "grpc-health: '$service' is not a gRPC service name" >&2; exit 2; }

# The request: HealthCheckRequest{service} (field 1, length-delimited) in a gRPC frame.
if [[ -n $service ]]; then
  body=$(printf '\\x0a\\x%02x%s' "${#service}" "$service")
else
  body=
fi
msg_len=$((${#service} > 0 ? ${#service} + 2 : 0))
frame=$(printf '\\x00\\x00\\x00\\x00\\x%02x%s' "$msg_len" "$body")

got=$(printf '%b' "$frame" | curl -sS --http2-prior-knowledge --max-time 2 \
  -H 'content-type: application/grpc' -H 'te: trailers' \
  --data-binary @- "http://$target/grpc.health.v1.Health/Check" | od -An -v -tx1 | tr -d ' \n') || {
  echo "grpc-health: $target did not answer" >&2
  exit 1
}
case $got in
  00000000020801) exit 0 ;;
  00000000020802) echo "grpc-health: $target is NOT_SERVING" >&2 ;;
  '') echo "grpc-health: $target answered with an error (no message)" >&2 ;;
  *) echo "grpc-health: $target answered $got (expected SERVING: 00000000020801)" >&2 ;;
esac
exit 1
