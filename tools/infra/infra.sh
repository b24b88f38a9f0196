#!/usr/bin/env bash
# Test servers for Parley's real backends: Postgres, Redis, etcd and Cassandra, each on
# 127.0.0.1 with its data under one work directory.
#
#   tools/infra/infra.sh up     [--record FILE] [NAME...]  install what is missing, start, wait until ready
#   tools/infra/infra.sh down   [NAME...]                  stop (SIGTERM/SIGINT, SIGKILL after a timeout)
#   tools/infra/infra.sh status [NAME...]                  one line per server; exit 1 if one is not running
#   tools/infra/infra.sh env    [NAME...]                  export lines (PARLEY_TEST_*) of the running servers
#
# NAME is postgres, redis, etcd or cassandra (default: all four). `up` is idempotent: a
# server that runs and answers is left alone, a stale PID file is cleaned up. `up` and
# `down` hold a lock on the work directory, so concurrent callers take turns. `--record
# FILE` appends the names this call started (the test command stops only those).
#
# Environment:
#   PARLEY_INFRA_DIR        work directory (default: <repo>/.work/infra)
#   PARLEY_INFRA_PORT_BASE  ports are BASE + the server's usual port (default 50000:
#                           postgres 55432, redis 56379, etcd 52379 (peer 52380),
#                           cassandra 59042 (storage 57000, JMX 57199))
#   PARLEY_CASSANDRA_VERSION  Cassandra 5.0.x release (default 5.0.9)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tools/infra"
ALL=(postgres redis etcd cassandra)

DIR=${PARLEY_INFRA_DIR:-$ROOT/.work/infra}
BASE=${PARLEY_INFRA_PORT_BASE:-50000}
if ! [[ $BASE =~ ^[0-9]+$ ]] || ((BASE < 1024 || BASE > 56000)); then
  echo "infra: PARLEY_INFRA_PORT_BASE must be a number from 1024 to 56000 (got '$BASE')" >&2
  exit 2
fi
PG_PORT=$((BASE + 5432))
REDIS_PORT=$((BASE + 6379))
ETCD_PORT=$((BASE + 2379))
ETCD_PEER_PORT=$((BASE + 2380))
CASS_PORT=$((BASE + 9042))
CASS_STORAGE_PORT=$((BASE + 7000))
CASS_JMX_PORT=$((BASE + 7199))
CASS_VERSION=${PARLEY_CASSANDRA_VERSION:-5.0.9}
HOST=127.0.0.1

say() { printf '==> %s\n' "$*"; }
die() { printf 'infra: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
is_root() { [[ $(id -u) == 0 ]]; }

port_of() {
  case $1 in
    postgres) echo "$PG_PORT" ;; redis) echo "$REDIS_PORT" ;;
    etcd) echo "$ETCD_PORT" ;; cassandra) echo "$CASS_PORT" ;;
  esac
}

# Something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# ---------------------------------------------------------------- processes and PID files

pidfile() { echo "$DIR/$1/pid"; }

# The PID recorded for NAME when that process is alive and is the right program.
live_pid() {
  local f pid marker
  f=$(pidfile "$1")
  [[ -s $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
  case $1 in
    postgres) marker=postgres ;; redis) marker=redis-server ;;
    etcd) marker=etcd ;; cassandra) marker=CassandraDaemon ;;
  esac
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$marker" || return 1
  echo "$pid"
}

clean_stale() {
  local f
  f=$(pidfile "$1")
  if [[ -e $f ]] && ! live_pid "$1" >/dev/null; then
    say "$1: removing stale PID file (pid $(cat "$f" 2>/dev/null || echo '?'))"
    rm -f "$f"
  fi
}

# Start a detached server (own session, stdin closed, output to LOG, lock fd closed): the
# process writes its own PID to NAME's PID file and then becomes the server.
spawn() {
  local name=$1 log=$2
  shift 2
  rm -f "$(pidfile "$name")"
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$(pidfile "$name")" "$@" \
    </dev/null >>"$log" 2>&1 9>&- &
  local deadline=$((SECONDS + 10))
  until [[ -s $(pidfile "$name") ]]; do
    ((SECONDS < deadline)) || die "$name: the process did not start (see $log)"
    sleep 0.05
  done
}

# --------------------------------------------------------------------------- installing

APT_UPDATED=
apt_install() {
  (($# > 0)) || return 0
  local sudo=
  is_root || sudo=sudo
  say "installing Debian packages: $*"
  if [[ -z $APT_UPDATED ]]; then
    $sudo apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n $d && -x $d/postgres && -x $d/initdb ]] && echo "$d"
}

java17() {
  local j
  for j in /usr/lib/jvm/java-17-openjdk-*/bin/java; do
    [[ -x $j ]] && { echo "$j"; return 0; }
  done
  if command -v java >/dev/null && java -version 2>&1 | head -n 1 | grep -q '"17\.'; then
    command -v java
    return 0
  fi
  return 1
}

ensure_installed() {
  local pkgs=() name
  for name in "$@"; do
    case $name in
      postgres) pg_bin >/dev/null || pkgs+=(postgresql) ;;
      redis) command -v redis-server >/dev/null && command -v redis-cli >/dev/null || pkgs+=(redis-server) ;;
      etcd)
        command -v etcd >/dev/null || pkgs+=(etcd-server)
        command -v etcdctl >/dev/null || pkgs+=(etcd-client)
        command -v curl >/dev/null || pkgs+=(curl)
        ;;
      cassandra)
        java17 >/dev/null || pkgs+=(openjdk-17-jre-headless)
        command -v mvn >/dev/null || pkgs+=(maven)
        ;;
    esac
  done
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u | sed '/^$/d')
  apt_install "${pkgs[@]}"
}

# Cassandra 5.0 is not published to Maven Central as a binary tarball (the last
# apache-cassandra:bin tarball there is 4.0-alpha2); its server jar and every dependency are
# (org.apache.cassandra:cassandra-all). Maven fetches them once into the work directory,
# checking each file's checksum; the conf is our own (tools/infra/cassandra/).
cass_home() { echo "$DIR/cassandra/dist/$CASS_VERSION"; }

ensure_cassandra_dist() {
  local home tmp t0
  home=$(cass_home)
  [[ -f $home/.complete ]] && return 0
  t0=$(now)
  say "cassandra: fetching org.apache.cassandra:cassandra-all:$CASS_VERSION and its dependencies from Maven Central"
  tmp="$home.partial"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  cat >"$tmp/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>parley.infra</groupId>
  <artifactId>cassandra-server</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>$CASS_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
  if ! (cd "$tmp" && mvn -B -q -C -f pom.xml dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp/lib" >"$tmp/mvn.log" 2>&1); then
    tail -n 30 "$tmp/mvn.log" >&2
    die "cassandra: Maven could not fetch cassandra-all:$CASS_VERSION (log: $tmp/mvn.log)"
  fi
  [[ -f $tmp/lib/cassandra-all-$CASS_VERSION.jar ]] || die "cassandra: cassandra-all-$CASS_VERSION.jar is missing after the download"
  local got
  got=$("$(java17)" -cp "$tmp/lib/*" org.apache.cassandra.tools.GetVersion 2>/dev/null | tail -n 1)
  [[ $got == "$CASS_VERSION" ]] || die "cassandra: the downloaded jars report version '$got', expected $CASS_VERSION"
  touch "$tmp/.complete"
  rm -rf "$home"
  mv "$tmp" "$home"
  say "cassandra: $CASS_VERSION ($(ls "$home/lib" | wc -l) jars, $(du -sh "$home/lib" | cut -f1)) cached in $home in $(since "$t0")"
}

# ------------------------------------------------------------------------------ postgres

# Postgres refuses to run as root: as root it runs as the user postgres, whose data
# directory must then be reachable by that user (else it moves to /var/tmp, with a link
# from the work directory).
pg_dir() {
  local d="$DIR/postgres"
  if is_root && [[ ! -L $d ]] && ! setpriv --reuid=postgres --regid=postgres --init-groups -- test -x "$DIR" 2>/dev/null; then
    local alt
    alt="/var/tmp/parley-infra-$(printf '%s' "$DIR" | sha1sum | cut -c1-12)/postgres"
    mkdir -p "$alt"
    chmod 755 "$(dirname "$alt")"
    ln -sfn "$alt" "$d"
  fi
  readlink -f "$d"
}

as_pg() {
  if is_root; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}

start_postgres() {
  local d bin
  d=$(pg_dir)
  bin=$(pg_bin)
  mkdir -p "$d"
  if is_root; then chown postgres: "$(readlink -f "$d")"; fi
  if [[ ! -f $d/data/PG_VERSION ]]; then
    rm -rf "$d/data"
    as_pg "$bin/initdb" -D "$d/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$d/initdb.log" 2>&1 \
      || { tail -n 20 "$d/initdb.log" >&2; die "postgres: initdb failed (log: $d/initdb.log)"; }
  fi
  spawn postgres "$d/log" "${AS_PG[@]}" "$bin/postgres" -D "$d/data" \
    -c listen_addresses="$HOST" -c port="$PG_PORT" -c unix_socket_directories= \
    -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off
}

ready_postgres() { "$(pg_bin)/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2; }

# The role and database the tests use (idempotent).
setup_postgres() {
  local psql
  psql=("$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U postgres -d postgres)
  "${psql[@]}" -c "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'parley') THEN
        CREATE ROLE parley LOGIN CREATEDB;
      END IF;
    END \$\$;"
  if [[ -z $("${psql[@]}" -tA -c "SELECT 1 FROM pg_database WHERE datname = 'parley'") ]]; then
    "${psql[@]}" -c "CREATE DATABASE parley OWNER parley"
  fi
}

# -------------------------------------------------------------------------------- redis

start_redis() {
  local d="$DIR/redis"
  mkdir -p "$d"
  spawn redis "$d/log" redis-server --bind "$HOST" --port "$REDIS_PORT" --dir "$d" \
    --save "" --appendonly no --daemonize no --protected-mode yes
}

ready_redis() { [[ $(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

# --------------------------------------------------------------------------------- etcd

start_etcd() {
  local d="$DIR/etcd"
  mkdir -p "$d"
  spawn etcd "$d/log" etcd --name parley-test --data-dir "$d/data" \
    --listen-client-urls "http://$HOST:$ETCD_PORT" --advertise-client-urls "http://$HOST:$ETCD_PORT" \
    --listen-peer-urls "http://$HOST:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://$HOST:$ETCD_PEER_PORT" \
    --initial-cluster "parley-test=http://$HOST:$ETCD_PEER_PORT" --initial-cluster-state new
}

ready_etcd() { curl -fsS -m 2 "http://$HOST:$ETCD_PORT/health" 2>/dev/null | grep -q '"health":"true"'; }

# ---------------------------------------------------------------------------- cassandra

start_cassandra() {
  local d="$DIR/cassandra" home conf opts=()
  home=$(cass_home)
  conf="$d/conf"
  mkdir -p "$conf" "$d/logs" "$d/triggers" "$d/data" "$d/commitlog" "$d/saved_caches" "$d/hints" "$d/cdc_raw"
  sed -e "s|@DIR@|$d|g" -e "s|@NATIVE_PORT@|$CASS_PORT|g" -e "s|@STORAGE_PORT@|$CASS_STORAGE_PORT|g" \
    "$HERE/cassandra/cassandra.yaml" >"$conf/cassandra.yaml"
  cp "$HERE/cassandra/logback.xml" "$conf/logback.xml"
  mapfile -t opts < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$HERE/cassandra/jvm17.options")
  local jamm
  jamm=$(ls "$home"/lib/jamm-*.jar | head -n 1)
  spawn cassandra "$d/logs/stdout.log" "$(java17)" \
    -Xms1G -Xmx1G "${opts[@]}" -javaagent:"$jamm" \
    -Dcassandra.config="file://$conf/cassandra.yaml" -Dlogback.configurationFile="$conf/logback.xml" \
    -Dcassandra.logdir="$d/logs" -Dcassandra.storagedir="$d" -Dcassandra.triggers_dir="$d/triggers" \
    -Dcassandra.jmx.local.port="$CASS_JMX_PORT" -Dcassandra-foreground=yes \
    -cp "$conf:$home/lib/*" org.apache.cassandra.service.CassandraDaemon
}

CASS_RELEASE=
ready_cassandra() {
  port_open "$CASS_PORT" || return 1
  CASS_RELEASE=$(cd "$ROOT" && node --import tsx "$HERE/cassandra-ready.ts" "$HOST:$CASS_PORT" 5000 2>/dev/null) || return 1
}

# -------------------------------------------------------------------------------- up/down

log_of() {
  case $1 in
    cassandra) echo "$DIR/cassandra/logs/system.log" ;;
    *) echo "$DIR/$1/log" ;;
  esac
}

timeout_of() {
  case $1 in
    cassandra) echo 240 ;; *) echo 60 ;;
  esac
}

stop_signal() {
  case $1 in
    postgres) echo INT ;; # fast shutdown: does not wait for clients to disconnect
    *) echo TERM ;;
  esac
}

# Stop NAME's recorded process: its signal, then SIGKILL after a timeout; wait for exit.
stop_one() {
  local name=$1 pid t0 limit
  clean_stale "$name"
  if ! pid=$(live_pid "$name"); then
    say "$name: not running"
    return 0
  fi
  t0=$(now)
  limit=$((SECONDS + 20))
  if [[ $name == cassandra ]]; then limit=$((SECONDS + 60)); fi
  say "$name: stopping (pid $pid)"
  kill -"$(stop_signal "$name")" "$pid" 2>/dev/null || true
  while live_pid "$name" >/dev/null; do
    if ((SECONDS >= limit)); then
      say "$name: still running after $(since "$t0"), sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      limit=$((SECONDS + 10))
      local deadline=$limit
      while live_pid "$name" >/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
      live_pid "$name" >/dev/null && die "$name: pid $pid does not exit"
      break
    fi
    sleep 0.1
  done
  rm -f "$(pidfile "$name")"
  say "$name: stopped in $(since "$t0")"
}

where_of() {
  case $1 in
    postgres) echo "$HOST:$PG_PORT" ;;
    redis) echo "$HOST:$REDIS_PORT" ;;
    etcd) echo "$HOST:$ETCD_PORT (peer $ETCD_PEER_PORT)" ;;
    cassandra) echo "$HOST:$CASS_PORT (storage $CASS_STORAGE_PORT, JMX $CASS_JMX_PORT)" ;;
  esac
}

lock() {
  mkdir -p "$DIR"
  exec 9>"$DIR/.lock"
  if ! flock -n 9; then
    say "waiting for another infra.sh on $DIR"
    flock -w 1800 9 || die "timed out waiting for the lock on $DIR/.lock"
  fi
}

cmd_up() {
  local record= names=() name
  while (($#)); do
    case $1 in
      --record) record=$2; shift 2 ;;
      *) names+=("$1"); shift ;;
    esac
  done
  ((${#names[@]})) || names=("${ALL[@]}")
  check_names "${names[@]}"
  lock
  local t_all
  t_all=$(now)
  ensure_installed "${names[@]}"
  if [[ " ${names[*]} " == *" cassandra "* ]]; then ensure_cassandra_dist; fi
  AS_PG=()
  if is_root; then AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi

  # Launch everything that is not running (Cassandra first: it takes longest), then wait
  # for them, so the servers start side by side.
  local -A started=() t0=()
  local order=()
  for name in cassandra postgres redis etcd; do
    if [[ " ${names[*]} " == *" $name "* ]]; then order+=("$name"); fi
  done
  for name in "${order[@]}"; do
    clean_stale "$name"
    local pid
    if pid=$(live_pid "$name"); then
      continue
    fi
    if port_open "$(port_of "$name")"; then
      die "$name: port $(port_of "$name") on $HOST is taken by a process that infra.sh did not start"
    fi
    say "$name: starting on $(where_of "$name") (data in $DIR/$name)"
    t0[$name]=$(now)
    "start_$name"
    started[$name]=1
    if [[ -n $record ]]; then echo "$name" >>"$record"; fi
  done

  # Wait for all of them together: the quick probes first, Cassandra's (a CQL query) last.
  local failed=0 pending=() pid
  for name in postgres redis etcd cassandra; do
    [[ " ${order[*]} " == *" $name "* ]] || continue
    if ! pid=$(live_pid "$name"); then
      report_failure "$name" "exited at once"
      failed=1
    elif [[ -z ${started[$name]:-} ]] && "ready_$name"; then
      if [[ $name == postgres ]]; then setup_postgres; fi
      say "$name: already running (pid $pid) on $(where_of "$name")"
    else
      if [[ -z ${started[$name]:-} ]]; then
        t0[$name]=$(now)
        say "$name: running (pid $pid) but not answering yet: waiting"
      fi
      pending+=("$name")
    fi
  done
  while ((${#pending[@]})); do
    local still=()
    for name in "${pending[@]}"; do
      if ! pid=$(live_pid "$name"); then
        report_failure "$name" "exited while starting"
        failed=1
      elif "ready_$name"; then
        if [[ $name == postgres ]]; then setup_postgres; fi
        local extra=
        if [[ $name == cassandra ]]; then extra=" (Cassandra $CASS_RELEASE)"; fi
        say "$name: ready in $(since "${t0[$name]}") (pid $pid)$extra"
      elif awk -v a="${t0[$name]}" -v b="$(now)" -v t="$(timeout_of "$name")" 'BEGIN { exit !(b - a > t) }'; then
        report_failure "$name" "not ready after $(timeout_of "$name")s"
        stop_one "$name" || true
        failed=1
      else
        still+=("$name")
      fi
    done
    pending=("${still[@]}")
    if ((${#pending[@]})); then sleep 0.2; fi
  done
  ((failed == 0)) || die "some servers did not start"
  say "servers up in $(since "$t_all"): ${order[*]}"
}

report_failure() {
  say "$1: $2; last lines of $(log_of "$1"):"
  tail -n 30 "$(log_of "$1")" 2>/dev/null | sed 's/^/    /'
  if [[ $1 == cassandra ]]; then tail -n 10 "$DIR/cassandra/logs/stdout.log" 2>/dev/null | sed 's/^/    /'; fi
}

cmd_down() {
  local names=("$@")
  ((${#names[@]})) || names=("${ALL[@]}")
  check_names "${names[@]}"
  lock
  local name
  for name in "${names[@]}"; do stop_one "$name"; done
}

cmd_status() {
  local names=("$@") name pid rc=0
  ((${#names[@]})) || names=("${ALL[@]}")
  check_names "${names[@]}"
  for name in "${names[@]}"; do
    if pid=$(live_pid "$name"); then
      printf '%-10s running  pid %-8s %s\n' "$name" "$pid" "$(where_of "$name")"
    else
      printf '%-10s stopped\n' "$name"
      rc=1
    fi
  done
  return $rc
}

cmd_env() {
  local names=("$@") name
  ((${#names[@]})) || names=("${ALL[@]}")
  check_names "${names[@]}"
  for name in "${names[@]}"; do
    if ! live_pid "$name" >/dev/null; then
      echo "# $name is not running (tools/infra/infra.sh up $name)"
      continue
    fi
    case $name in
      postgres) echo "export PARLEY_TEST_POSTGRES_URL=postgres://parley@$HOST:$PG_PORT/parley" ;;
      redis) echo "export PARLEY_TEST_REDIS_URL=redis://$HOST:$REDIS_PORT" ;;
      etcd) echo "export PARLEY_TEST_ETCD_URL=http://$HOST:$ETCD_PORT" ;;
      cassandra) echo "export PARLEY_TEST_CASSANDRA=$HOST:$CASS_PORT" ;;
    esac
  done
}

check_names() {
  local name
  for name in "$@"; do
    [[ " ${ALL[*]} " == *" $name "* ]] || die "unknown server '$name' (one of: ${ALL[*]})"
  done
}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

(($#)) || usage
cmd=$1
shift
case $cmd in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  status) cmd_status "$@" ;;
  env) cmd_env "$@" ;;
  -h | --help | help) usage ;;
  *) usage ;;
esac
