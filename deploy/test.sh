#!/usr/bin/env bash
# The test command of tokend: `bash deploy/test.sh [extra args for the test runner]`.
#
# On a fresh Debian/Ubuntu machine it installs what the tests need (redis-server with apt-get,
# SecantusDB — a MongoDB wire-protocol server — in a venv under target/test-venv), starts Redis
# and SecantusDB on free loopback ports, runs `cargo fmt --check`, `cargo clippy` and the tests
# (cargo nextest when installed, else cargo test), stops what it started, and exits with the
# status of the first step that failed.
#
# Environment:
#   TOKEND_TEST_REDIS_URL, TOKEND_TEST_MONGODB_URI   use these servers; start none of your own
#   TOKEND_TEST_REDIS_SERVER_BIN, TOKEND_TEST_SECANTUSD_BIN
#                         binaries for the tests that start private servers (outages);
#                         found or installed when unset, and exported to the tests
#   TOKEND_TEST_SKIP_LINT=1   skip fmt and clippy (quick local runs)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SECANTUS_VERSION=0.7.0b3
VENV="$ROOT/target/test-venv"
LOGS="$ROOT/target/test-services"
READY_TRIES=120 # x 0.25 s

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'deploy/test.sh: %s\n' "$*" >&2
  exit 1
}

# ---- stop what we start, however we leave ------------------------------------------------
STARTED_PIDS=()
cleanup() {
  local pid
  for pid in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  STARTED_PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    die "need root (or sudo) to run: $*"
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "cannot install $*: no apt-get here; install it yourself"
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq >/dev/null
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5).close()' "$1" 2>/dev/null
}

# wait_ready NAME PID LOGFILE CHECK...: polls CHECK until it succeeds, the process dies, or the
# tries run out.
wait_ready() {
  local name=$1 pid=$2 logfile=$3
  shift 3
  for _ in $(seq 1 "$READY_TRIES"); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$logfile" >&2 || true
      die "$name exited during start-up (log: $logfile)"
    fi
    sleep 0.25
  done
  tail -n 20 "$logfile" >&2 || true
  die "$name did not become ready (log: $logfile)"
}

# ---- tools -------------------------------------------------------------------------------
ensure_python() {
  command -v python3 >/dev/null 2>&1 || apt_install python3
}

ensure_redis() {
  if [ -z "${TOKEND_TEST_REDIS_SERVER_BIN:-}" ]; then
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    TOKEND_TEST_REDIS_SERVER_BIN=$(command -v redis-server)
  fi
  [ -x "$TOKEND_TEST_REDIS_SERVER_BIN" ] || die "no redis-server at $TOKEND_TEST_REDIS_SERVER_BIN"
  export TOKEND_TEST_REDIS_SERVER_BIN
}

secantus_installed() {
  [ -x "$VENV/bin/secantusd-py" ] &&
    [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("SecantusDB"))' 2>/dev/null)" = "$SECANTUS_VERSION" ]
}

ensure_secantus() {
  if [ -z "${TOKEND_TEST_SECANTUSD_BIN:-}" ]; then
    if ! secantus_installed; then
      log "installing SecantusDB $SECANTUS_VERSION into target/test-venv"
      python3 -m venv "$VENV" >/dev/null 2>&1 || {
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV"
      }
      "$VENV/bin/pip" install --quiet --disable-pip-version-check "SecantusDB==$SECANTUS_VERSION"
    fi
    TOKEND_TEST_SECANTUSD_BIN="$VENV/bin/secantusd-py"
  fi
  [ -x "$TOKEND_TEST_SECANTUSD_BIN" ] || die "no secantusd-py at $TOKEND_TEST_SECANTUSD_BIN"
  export TOKEND_TEST_SECANTUSD_BIN
}

# ---- services ----------------------------------------------------------------------------
redis_ping() {
  if command -v redis-cli >/dev/null 2>&1; then
    [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = "PONG" ]
  else
    port_open "$1"
  fi
}

mongo_ping() {
  local python
  python="$(dirname "$TOKEND_TEST_SECANTUSD_BIN")/python"
  if [ -x "$python" ] && "$python" -c 'import pymongo' 2>/dev/null; then
    "$python" - "$1" <<'EOF'
import sys, pymongo
client = pymongo.MongoClient(f"mongodb://127.0.0.1:{sys.argv[1]}/", serverSelectionTimeoutMS=500, connectTimeoutMS=500)
client.admin.command("ping")
EOF
  else
    port_open "$1"
  fi
}

start_redis() {
  local port logfile
  port=$(free_port)
  logfile="$LOGS/redis-$port.log"
  "$TOKEND_TEST_REDIS_SERVER_BIN" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no >"$logfile" 2>&1 &
  STARTED_PIDS+=("$!")
  wait_ready redis-server "$!" "$logfile" redis_ping "$port"
  export TOKEND_TEST_REDIS_URL="redis://127.0.0.1:$port/"
  log "redis-server ready on 127.0.0.1:$port (log: ${logfile#"$ROOT"/})"
}

start_mongo() {
  local port logfile
  port=$(free_port)
  logfile="$LOGS/secantusd-$port.log"
  # Run from the log directory so no stray secantusd.toml is picked up.
  (cd "$LOGS" && exec "$TOKEND_TEST_SECANTUSD_BIN" --host 127.0.0.1 --port "$port" \
    --storage-path :memory:) >"$logfile" 2>&1 &
  STARTED_PIDS+=("$!")
  wait_ready secantusd-py "$!" "$logfile" mongo_ping "$port"
  export TOKEND_TEST_MONGODB_URI="mongodb://127.0.0.1:$port/"
  log "SecantusDB ready on 127.0.0.1:$port (log: ${logfile#"$ROOT"/})"
}

mkdir -p "$LOGS"
ensure_python
if [ -n "${TOKEND_TEST_REDIS_URL:-}" ] && [ -n "${TOKEND_TEST_MONGODB_URI:-}" ]; then
  log "using TOKEND_TEST_REDIS_URL and TOKEND_TEST_MONGODB_URI from the environment"
  # Only the outage tests need the binaries then; do without them if they cannot be had.
  (ensure_redis) >/dev/null 2>&1 && ensure_redis ||
    log "warning: no redis-server: tests that start their own Redis will fail"
  (ensure_secantus) >/dev/null 2>&1 && ensure_secantus ||
    log "warning: no secantusd-py: tests that start their own MongoDB will fail"
else
  ensure_redis
  ensure_secantus
  [ -n "${TOKEND_TEST_REDIS_URL:-}" ] || start_redis
  [ -n "${TOKEND_TEST_MONGODB_URI:-}" ] || start_mongo
fi

# ---- checks and tests --------------------------------------------------------------------
if [ "${TOKEND_TEST_SKIP_LINT:-0}" != "1" ]; then
  log "cargo fmt --check"
  cargo fmt --all --check
  log "cargo clippy --all-targets -- -D warnings"
  cargo clippy --all-targets --quiet -- -D warnings
fi

status=0
if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run --no-fail-fast $*"
  cargo nextest run --no-fail-fast "$@" || status=$?
  if [ "$#" -eq 0 ] && [ "$status" -eq 0 ]; then
    log "cargo test --doc"
    cargo test --doc --quiet || status=$?
  fi
else
  log "cargo test --no-fail-fast $*"
  cargo test --no-fail-fast "$@" || status=$?
fi
exit "$status"
