#!/usr/bin/env bash
# The load scenarios of tokend (BENCHMARKS.md): `bash deploy/load.sh [SECTION]...`
#
# Builds the release binary and the load tools (examples/loadgen.rs, examples/bare_jwks.rs),
# installs wrk (Debian) when missing, starts tokend on 127.0.0.1 in embedded mode and in
# production mode (its own Redis and SecantusDB, a MongoDB wire-protocol server, started the way
# deploy/test.sh starts them), and runs each scenario for a bounded time. Each prints req/s,
# p50/p99 latency, tokend's peak RSS (VmHWM, reset before each scenario) and the cores used by
# tokend, Redis, SecantusDB and the rest (the load generator, anything else running), beside
# reference lines measured in the same run: a bare hyper server serving the same JWKS bytes,
# signing-only loops, and the Argon2 ceiling. Only loopback addresses are ever loaded.
#
# Sections (`all`, the default, runs every one of them in this order):
#   embedded, production  fixed requests and refresh in each mode
#   extra      login flood, memory with 1,000 connections, start-up time
#   code       the authorization-code exchange (EdDSA ID tokens; RS256 ID tokens with 2048- and
#              3072-bit keys), both modes
#   signin     the hosted sign-in form post against the Argon2 ceiling, both modes
#   device     device-grant polling (production), with store operations per poll
#   sessions   logout-all and password change for a user with 100 families (production)
#   families   1k, 100k and 1M live refresh families in Redis (production): bytes per family,
#              refresh and /auth/verify at each size
#   dpop       the DPoP-bound refresh and /auth/verify beside their bearer twins, both modes,
#              alone (`embedded` and `production` run them too)
#
# Environment:
#   TOKEND_LOAD_DURATION     seconds per scenario (default 10)
#   TOKEND_LOAD_CONNECTIONS  connections per closed-loop scenario (default 64)
#   TOKEND_LOAD_WRK_THREADS  wrk threads (default 1)
#   TOKEND_LOAD_LOG          TOKEND_LOG of the server under load (default info, the product's)
#   TOKEND_LOAD_RSA_BITS     RSA modulus of the pre-made keyset and TOKEND_RSA_BITS (default 2048)
#   TOKEND_LOAD_TOKEND       the tokend binary to load (default target/release/tokend, built; the
#                            release directory of CARGO_TARGET_DIR when that is set)
#   TOKEND_LOAD_SKIP_BUILD=1 use the binaries already built
#   TOKEND_LOAD_FAMILIES     the live-family counts of `families` (default "1000 100000 1000000")
#   CARGO_TARGET_DIR         where cargo builds (default target/); results go to its load/
#   TOKEND_TEST_REDIS_SERVER_BIN, TOKEND_TEST_SECANTUSD_BIN   as in deploy/test.sh
#
# Results: a table on stdout and in target/load/results.md; raw outputs in target/load/ (under
# CARGO_TARGET_DIR when it is set).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")
OUT="$TARGET_DIR/load"
DURATION=${TOKEND_LOAD_DURATION:-10}
CONNS=${TOKEND_LOAD_CONNECTIONS:-64}
WRK_THREADS=${TOKEND_LOAD_WRK_THREADS:-1}
SERVER_LOG=${TOKEND_LOAD_LOG:-info}
RSA_BITS=${TOKEND_LOAD_RSA_BITS:-2048}
SECANTUS_VERSION=0.7.0b3
VENV="$ROOT/target/test-venv"
KEK=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=
EMAIL=load@example.com
# The login scenarios' own account: past TOKEND_MAX_SESSIONS_PER_USER (100) every login ends the
# account's oldest session, which must not be the one whose token the other scenarios present.
LOGIN_EMAIL=logins@example.com
PASSWORD='correct horse battery'
LOADGEN="$TARGET_DIR/release/examples/loadgen"
TOKEND=$(realpath -m "${TOKEND_LOAD_TOKEND:-$TARGET_DIR/release/tokend}")
FAMILY_COUNTS=${TOKEND_LOAD_FAMILIES:-1000 100000 1000000}

ALL_SECTIONS=(embedded production extra code signin device sessions families dpop)
SECTIONS=("$@")
[ "${#SECTIONS[@]}" -gt 0 ] || SECTIONS=(all)
for s in "${SECTIONS[@]}"; do
  case " all ${ALL_SECTIONS[*]} " in
  *" $s "*) ;;
  *) printf 'deploy/load.sh: unknown section %s (sections: all %s)\n' "$s" "${ALL_SECTIONS[*]}" >&2
    exit 2 ;;
  esac
done
want() {
  local s
  for s in "${SECTIONS[@]}"; do [ "$s" = "$1" ] || [ "$s" = all ] && return 0; done
  return 1
}

log() { printf '==> %s\n' "$*" >&2; }
die() {
  printf 'deploy/load.sh: %s\n' "$*" >&2
  exit 1
}

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

stop_pid() {
  local pid=$1 p keep=()
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
    [ "$p" = "$pid" ] || keep+=("$p")
  done
  STARTED_PIDS=("${keep[@]+"${keep[@]}"}")
}

apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "cannot install $*: no apt-get; install it yourself"
  log "apt-get install $*"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_http URL PID LOGFILE: until URL answers 200.
wait_http() {
  local url=$1 pid=$2 logfile=$3
  for _ in $(seq 1 400); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || {
      tail -n 20 "$logfile" >&2
      die "process $pid exited during start-up (log: $logfile)"
    }
    sleep 0.05
  done
  tail -n 20 "$logfile" >&2
  die "$url never answered (log: $logfile)"
}

# ---- tools -------------------------------------------------------------------------------
command -v python3 >/dev/null 2>&1 || apt_install python3
command -v curl >/dev/null 2>&1 || apt_install curl
command -v wrk >/dev/null 2>&1 || apt_install wrk
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [ "${TOKEND_LOAD_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release (tokend, examples loadgen and bare_jwks)"
  cargo build --release --quiet --bin tokend --example loadgen --example bare_jwks
fi

ensure_services() {
  if [ -z "${TOKEND_TEST_REDIS_SERVER_BIN:-}" ]; then
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    TOKEND_TEST_REDIS_SERVER_BIN=$(command -v redis-server)
  fi
  if [ -z "${TOKEND_TEST_SECANTUSD_BIN:-}" ]; then
    if ! [ -x "$VENV/bin/secantusd-py" ]; then
      log "installing SecantusDB $SECANTUS_VERSION into target/test-venv"
      python3 -m venv "$VENV" >/dev/null 2>&1 || {
        apt_install python3-venv
        python3 -m venv "$VENV"
      }
      "$VENV/bin/pip" install --quiet --disable-pip-version-check "SecantusDB==$SECANTUS_VERSION"
    fi
    TOKEND_TEST_SECANTUSD_BIN="$VENV/bin/secantusd-py"
  fi
}

REDIS_URL=
MONGO_URI=
start_services() {
  local port pid
  port=$(free_port)
  # DEBUG answers on loopback only: `families` reads whether a table is being resized.
  "$TOKEND_TEST_REDIS_SERVER_BIN" --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --enable-debug-command local >"$OUT/redis.log" 2>&1 &
  pid=$!
  REDIS_PID=$pid
  STARTED_PIDS+=("$pid")
  for _ in $(seq 1 100); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' "$port" 2>/dev/null && break
    sleep 0.1
  done
  REDIS_URL="redis://127.0.0.1:$port/"
  port=$(free_port)
  (cd "$OUT" && exec "$TOKEND_TEST_SECANTUSD_BIN" --host 127.0.0.1 --port "$port" \
    --storage-path :memory:) >"$OUT/secantusd.log" 2>&1 &
  pid=$!
  MONGO_PID=$pid
  STARTED_PIDS+=("$pid")
  for _ in $(seq 1 200); do
    python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.5).close()' "$port" 2>/dev/null && break
    sleep 0.1
  done
  MONGO_URI="mongodb://127.0.0.1:$port/"
  log "redis $REDIS_URL, SecantusDB $MONGO_URI"
}

# ---- the server under load ---------------------------------------------------------------
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
CLIENT_SECRET=load-secret-0123456789abcdef0123456789abcdef
# The first-party public clients of the code flow (no consent page; PKCE, no secret) and their
# one redirect URI (RFC 8252 §7.3: loopback, any port).
REDIRECT_URI=http://127.0.0.1/callback
cat >"$OUT/clients.json" <<EOF
[
  {"client_id": "svc-eddsa", "client_secret_sha256": "$(sha256 "$CLIENT_SECRET")",
   "grant_types": ["client_credentials"], "scopes": ["read", "write"], "alg": "EdDSA"},
  {"client_id": "svc-rs256", "client_secret_sha256": "$(sha256 "$CLIENT_SECRET")",
   "grant_types": ["client_credentials"], "scopes": ["read", "write"], "alg": "RS256"},
  {"client_id": "app-eddsa", "grant_types": ["authorization_code", "refresh_token"],
   "scopes": ["read"], "redirect_uris": ["$REDIRECT_URI"], "first_party": true,
   "alg": "EdDSA", "id_token_signed_response_alg": "EdDSA", "client_name": "Load app (EdDSA)"},
  {"client_id": "app-rs256-id", "grant_types": ["authorization_code", "refresh_token"],
   "scopes": ["read"], "redirect_uris": ["$REDIRECT_URI"], "first_party": true,
   "alg": "EdDSA", "id_token_signed_response_alg": "RS256", "client_name": "Load app (RS256)"},
  {"client_id": "tv-load", "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"],
   "scopes": ["read"], "client_name": "Load TV"}
]
EOF
basic() { printf '%s' "$1:$CLIENT_SECRET" | base64 -w0; }

PORT=
BASE=
PID=
# The keyset tokend starts with: embedded mode's key directory, production mode's database,
# and the RSA modulus of keys it makes (the code section switches to a 3072-bit keyset).
KEYS_DIR="$OUT/keys"
DB=
# The Redis key prefix of production mode: tokend's default, `tokend:`, for the keyset every
# section uses, so that a key costs what it costs a deployment (the key name is part of each
# login's Redis bytes: a prefix past 17 characters moves the name of a user's families,
# `{prefix}sfam:{<36-character user id>}`, one allocator step up, 16 bytes more per login;
# BENCHMARKS.md, "What a key costs"). Redis is this run's own.
PREFIX=tokend:
BITS=$RSA_BITS
# tokend_env MODE: the environment of tokend in MODE, as KEY=VALUE words.
tokend_env() {
  local mode=$1
  # Every load generator here is one address (127.0.0.1) and the memory scenario opens 1,000
  # connections: past the per-address cap (TOKEND_MAX_CONNECTIONS_PER_IP, 256) tokend would
  # close them, so the cap is raised.
  printf '%s\n' "TOKEND_LISTEN=127.0.0.1:$PORT" "TOKEND_ISSUER=http://127.0.0.1:$PORT" \
    "TOKEND_SIGNING_ALGS=EdDSA,RS256" "TOKEND_RSA_BITS=$BITS" "TOKEND_RATE_LIMIT=off" \
    "TOKEND_LOG=$SERVER_LOG" "TOKEND_MAX_CONNECTIONS_PER_IP=2000" \
    "TOKEND_CLIENTS_FILE=$OUT/clients.json" "TOKEND_MAIL_DIR=$OUT/mail"
  if [ "$mode" = production ]; then
    printf '%s\n' "TOKEND_MONGODB_URI=$MONGO_URI" "TOKEND_MONGODB_DB=$DB" \
      "TOKEND_REDIS_URL=$REDIS_URL" "TOKEND_REDIS_PREFIX=$PREFIX" \
      "TOKEND_KEY_ENCRYPTION_KEY=$KEK"
  else
    # Embedded mode writes mail (the registrations' verification links) to files: not into the
    # checkout.
    printf '%s\n' "TOKEND_KEYS_DIR=$KEYS_DIR" "TOKEND_MAIL_DIR=$OUT/mail"
  fi
}

start_tokend() {
  local mode=$1 env
  PORT=$(free_port)
  BASE="http://127.0.0.1:$PORT"
  mapfile -t env < <(tokend_env "$mode")
  env -i PATH="$PATH" "${env[@]}" "$TOKEND" serve >"$OUT/tokend-$mode.log" 2>&1 &
  PID=$!
  STARTED_PIDS+=("$PID")
  wait_http "$BASE/readyz" "$PID" "$OUT/tokend-$mode.log"
}

rss_kb() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
reset_peak() { echo 5 >"/proc/$PID/clear_refs" 2>/dev/null || true; }

RESULTS="$OUT/results.md"
: >"$RESULTS"
row() {
  # row MODE SCENARIO RESULT-LINE [PEAK-RSS-KB]
  local mode=$1 name=$2 line=$3 rss=${4:-}
  python3 - "$mode" "$name" "$line" "$rss" <<'EOF' | tee -a "$RESULTS"
import sys
mode, name, line, rss = sys.argv[1:5]
kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
def f(k, fmt):
    return fmt.format(float(kv[k])) if k in kv else "-"
rss = f"{int(rss) / 1024:.1f} MB" if rss else "-"
err = kv.get("errors", "-")
if "hash_ms" in kv:
    name += f" ({float(kv['hash_ms']):.1f} ms per hash; {float(kv['parallel_rps']):.0f} hashes/s measured on all cores at once)"
cpu = kv.get("cpu", "-").replace(",", ", ").replace(":", " ")
print(f"| {mode} | {name} | {f('rps', '{:,.0f}')} | {f('p50_ms', '{:.2f}')} | {f('p99_ms', '{:.2f}')} | {err} | {rss} | {cpu} | {kv.get('load', '-')} |")
EOF
}

header() {
  {
    echo
    echo "| mode | scenario | req/s | p50 ms | p99 ms | errors | tokend peak RSS | cores used (of $(nproc)) | load avg before |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"
  } | tee -a "$RESULTS"
}

# CPU time (clock ticks) of a process, and of the whole machine.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
machine_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
REDIS_PID=
MONGO_PID=
# cpu_begin / cpu_end: cores used by tokend, Redis, SecantusDB and everything else (the load
# generator, and whatever else runs on the machine) between the two calls.
cpu_begin() {
  CPU_T0=$(date +%s.%N)
  CPU_M0=$(machine_ticks)
  CPU_P0=$(ticks "$PID")
  CPU_R0=$(if [ -n "$REDIS_PID" ]; then ticks "$REDIS_PID"; else echo 0; fi)
  CPU_D0=$(if [ -n "$MONGO_PID" ]; then ticks "$MONGO_PID"; else echo 0; fi)
}
cpu_end() {
  local m p r d
  m=$(machine_ticks)
  p=$(ticks "$PID")
  r=$(if [ -n "$REDIS_PID" ]; then ticks "$REDIS_PID"; else echo 0; fi)
  d=$(if [ -n "$MONGO_PID" ]; then ticks "$MONGO_PID"; else echo 0; fi)
  python3 - "$CPU_T0" "$(date +%s.%N)" "$(getconf CLK_TCK)" "$((m - CPU_M0))" \
    "$((p - CPU_P0))" "$((r - CPU_R0))" "$((d - CPU_D0))" "$REDIS_PID" <<'EOF'
import sys
t0, t1, hz = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
machine, tokend, redis, mongo = (int(x) / hz / (t1 - t0) for x in sys.argv[4:8])
parts = [f"tokend:{tokend:.2f}"]
if sys.argv[8]:
    parts += [f"redis:{redis:.2f}", f"mongo:{mongo:.2f}"]
parts.append(f"rest:{max(machine - tokend - redis - mongo, 0):.2f}")
print("cpu=" + ",".join(parts))
EOF
}

load1() { cut -d' ' -f1 /proc/loadavg; }

# wrk_line ARGS...: runs wrk with --latency and prints a loadgen-style result line.
wrk_line() {
  local raw="$OUT/wrk-${RUN_NAME//[^A-Za-z0-9]/-}.txt"
  wrk --latency -t "$WRK_THREADS" "$@" >"$raw" 2>&1 || true
  python3 - "$raw" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s)", v)
    if not m:
        return 0.0
    n, u = float(m.group(1)), m.group(2)
    return n / 1000 if u == "us" else n * 1000 if u == "s" else n
lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", text, re.M))
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
total = re.search(r"(\d+) requests in", text)
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0)
if not rps:
    print("rps=0 errors=1")
else:
    print(f"rps={rps.group(1)} p50_ms={ms(lat.get('50', ''))} p99_ms={ms(lat.get('99', ''))} "
          f"ok={total.group(1) if total else 0} errors={errors}")
EOF
}

lua() {
  # lua NAME METHOD CONTENT-TYPE AUTHORIZATION BODY: a wrk script for one fixed request.
  local file="$OUT/$1.lua"
  python3 - "$file" "$2" "$3" "$4" "$5" <<'EOF'
import json, sys
path, method, ctype, auth, body = sys.argv[1:6]
lines = [f"wrk.method = {json.dumps(method)}", f"wrk.body = {json.dumps(body)}"]
if ctype:
    lines.append(f'wrk.headers["Content-Type"] = {json.dumps(ctype)}')
if auth:
    lines.append(f'wrk.headers["Authorization"] = {json.dumps(auth)}')
open(path, "w").write("\n".join(lines) + "\n")
EOF
  echo "$file"
}

# scenario MODE NAME COMMAND...: resets tokend's peak RSS, runs, prints the row.
scenario() {
  local mode=$1 name=$2 line l
  shift 2
  RUN_NAME="$mode-$name"
  l=$(load1)
  reset_peak
  log "$mode: $name"
  cpu_begin
  line=$("$@")
  row "$mode" "$name" "$line $(cpu_end) load=$l" "$(rss_kb "$PID" VmHWM)"
  LAST="$line"
}

# reference NAME COMMAND...: a line measured without tokend's RSS.
reference() {
  local mode=$1 name=$2 line l
  shift 2
  RUN_NAME="$mode-$name"
  l=$(load1)
  log "reference: $name"
  line=$("$@")
  row "$mode" "$name" "$line load=$l"
  LAST="$line"
}

wrk_get() { wrk_line -c "$CONNS" -d "${DURATION}s" "$@"; }

ACCESS=
setup_user() {
  curl -fsS -o /dev/null -H 'Content-Type: application/json' \
    -d "{\"username\":\"loader\",\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}" \
    "$BASE/auth/register" || true
  curl -fsS -o /dev/null -H 'Content-Type: application/json' \
    -d "{\"username\":\"logins\",\"email\":\"$LOGIN_EMAIL\",\"password\":\"$PASSWORD\"}" \
    "$BASE/auth/register" || true
  ACCESS=$(curl -fsS -H 'Content-Type: application/json' \
    -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}" "$BASE/auth/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
}

run_mode() {
  local mode=$1 etag idle line
  start_tokend "$mode"
  idle=$(rss_kb "$PID" VmRSS)
  setup_user
  curl -fsS -D "$OUT/jwks-$mode.headers" -o "$OUT/jwks-$mode.json" "$BASE/.well-known/jwks.json"
  etag=$(awk 'tolower($1) == "etag:" {print $2}' "$OUT/jwks-$mode.headers" | tr -d '\r')
  header
  row "$mode" "idle RSS after start-up" "" "$idle"
  scenario "$mode" "JWKS 200" wrk_get "$BASE/.well-known/jwks.json"
  local jwks_rps
  jwks_rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$LAST")
  scenario "$mode" "JWKS 304" wrk_get -H "If-None-Match: $etag" "$BASE/.well-known/jwks.json"
  # The reference: a bare hyper server with the same bytes, same runtime, same load.
  local bare_port bare_pid
  bare_port=$(free_port)
  "$TARGET_DIR/release/examples/bare_jwks" --listen "127.0.0.1:$bare_port" \
    --body-file "$OUT/jwks-$mode.json" >"$OUT/bare_jwks.log" 2>&1 &
  bare_pid=$!
  STARTED_PIDS+=("$bare_pid")
  wait_http "http://127.0.0.1:$bare_port/" "$bare_pid" "$OUT/bare_jwks.log"
  reference "$mode" "reference: bare hyper, same JWKS bytes (200)" \
    wrk_get "http://127.0.0.1:$bare_port/.well-known/jwks.json"
  local bare_rps
  bare_rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$LAST")
  stop_pid "$bare_pid"
  python3 -c "import sys; print(f'JWKS 200 / bare hyper = {float(sys.argv[1]) / float(sys.argv[2]) * 100:.0f} %')" \
    "$jwks_rps" "$bare_rps" | tee -a "$RESULTS"
  header

  scenario "$mode" "/auth/verify" wrk_get -H "Authorization: Bearer $ACCESS" "$BASE/auth/verify"
  local verify_rps
  verify_rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$LAST")
  scenario "$mode" "refresh (/auth/token/refresh, chained)" \
    "$LOADGEN" refresh --base "$BASE" --email "refresh-$mode@example.com" --password "$PASSWORD" \
    -c 32 -d "$DURATION"
  local refresh_rps half
  refresh_rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$LAST")
  dpop_scenarios "$mode" "$verify_rps" "$refresh_rps"
  half=$(python3 -c "import sys; print(max(100, int(float(sys.argv[1]) / 2)))" "$refresh_rps")
  scenario "$mode" "refresh paced at $half req/s (50 %)" \
    "$LOADGEN" refresh --base "$BASE" --email "paced-$mode@example.com" --password "$PASSWORD" \
    -c 32 -d "$DURATION" --rate "$half"
  scenario "$mode" "client_credentials EdDSA" wrk_get -s "$(lua cc-eddsa POST \
    application/x-www-form-urlencoded "Basic $(basic svc-eddsa)" grant_type=client_credentials)" \
    "$BASE/oauth/token"
  scenario "$mode" "client_credentials RS256 ($RSA_BITS-bit)" wrk_get -s "$(lua cc-rs256 POST \
    application/x-www-form-urlencoded "Basic $(basic svc-rs256)" grant_type=client_credentials)" \
    "$BASE/oauth/token"
  scenario "$mode" "login (/auth/login, Argon2 m=19456,t=2,p=1)" wrk_line -c 8 -d "${DURATION}s" \
    -s "$(lua login POST application/json '' "{\"email\":\"$LOGIN_EMAIL\",\"password\":\"$PASSWORD\"}")" \
    "$BASE/auth/login"
  local login_rps
  login_rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$LAST")
  # Last: in production mode, requests still queued for MongoDB when wrk hangs up stall the
  # next ones for seconds (BENCHMARKS.md), so nothing that needs MongoDB runs after this.
  scenario "$mode" "/oauth/introspect" wrk_get -s "$(lua introspect POST \
    application/x-www-form-urlencoded "Basic $(basic svc-eddsa)" "token=$ACCESS")" \
    "$BASE/oauth/introspect"
  stop_pid "$PID"

  header
  reference "$mode" "reference: Argon2 ceiling ($(nproc) cores / one hash)" \
    sh -c "'$LOADGEN' argon2 --cores $(nproc) -d 4 | sed 's/ceiling_rps=/rps=/'"
  # The ceiling as issue 9 defines it: cores / the time of one hash (not the parallel rate).
  python3 -c "import sys; print(f'login / Argon2 ceiling (cores / hash time) = {float(sys.argv[1]) / float(sys.argv[2]) * 100:.0f} %')" \
    "$login_rps" "$(sed -E 's/.* rps=([0-9.]+).*/\1/' <<<"$LAST")" | tee -a "$RESULTS"
  for alg in EdDSA RS256; do
    reference "$mode" "reference: sign-only loop $alg, 2 threads" \
      sh -c "'$LOADGEN' sign --alg $alg --rsa-bits $RSA_BITS --threads 2 -d 3 | sed 's/ops=/rps=/'"
  done
  reference "$mode" "reference: refresh crypto (verify + 2 signs) EdDSA, 2 threads" \
    sh -c "'$LOADGEN' sign --alg EdDSA --refresh --threads 2 -d 3 | sed 's/ops=/rps=/'"
}

# dpop_scenarios MODE BEARER-VERIFY-RPS BEARER-REFRESH-RPS: the DPoP twins of /auth/verify and of
# the chained refresh (docs/dpop.md), each request with a fresh EdDSA proof, and each as a share
# of its bearer twin (issue 20: at least 60 %). loadgen signs the proofs before the measured
# window (as many as the twin's rate would use, plus a quarter; past those the refresh signs in
# the loop and wrk sends proofs again, which tokend refuses), so the client's signing does not
# take the two cores the server runs on, as wrk, which drives the twin, signs nothing.
dpop_scenarios() {
  local mode=$1 verify_rps=$2 refresh_rps=$3
  presign() { python3 -c "import sys; print(int(float(sys.argv[1]) * (float(sys.argv[2]) + 1) * 1.25))" "$1" "$DURATION"; }
  # /auth/verify with wrk, like its twin: loadgen logs in with a proof and signs the proofs
  # into a file, and deploy/dpop-verify.lua sends one per request.
  local proofs="$OUT/dpop-proofs-$mode.txt"
  "$LOADGEN" dpop --what verify --base "$BASE" --email "dpop-verify-$mode@example.com" \
    --password "$PASSWORD" --presign "$(presign "$verify_rps")" --proofs-out "$proofs" >/dev/null
  scenario "$mode" "DPoP /auth/verify (a fresh proof each)" \
    wrk_get -t 1 -s "$ROOT/deploy/dpop-verify.lua" "$BASE/auth/verify" -- "$proofs"
  rm -f "$proofs"
  python3 -c "import sys; print(f'DPoP /auth/verify / bearer = {float(sys.argv[1]) / float(sys.argv[2]) * 100:.0f} %')" \
    "$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$LAST")" "$verify_rps" | tee -a "$RESULTS"
  scenario "$mode" "DPoP-bound refresh (chained, a fresh proof each)" \
    "$LOADGEN" dpop --what refresh --base "$BASE" --email "dpop-refresh-$mode@example.com" \
    --password "$PASSWORD" -c 32 -d "$DURATION" --presign "$(presign "$refresh_rps")"
  python3 -c "import sys; print(f'DPoP-bound refresh / bearer = {float(sys.argv[1]) / float(sys.argv[2]) * 100:.0f} %')" \
    "$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$LAST")" "$refresh_rps" | tee -a "$RESULTS"
}

# run_dpop MODE: the bearer /auth/verify and refresh, then their DPoP twins, alone.
run_dpop() {
  local mode=$1 verify_rps refresh_rps
  start_tokend "$mode"
  setup_user
  header
  scenario "$mode" "/auth/verify" wrk_get -H "Authorization: Bearer $ACCESS" "$BASE/auth/verify"
  verify_rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$LAST")
  scenario "$mode" "refresh (/auth/token/refresh, chained)" \
    "$LOADGEN" refresh --base "$BASE" --email "refresh-$mode@example.com" --password "$PASSWORD" \
    -c 32 -d "$DURATION"
  refresh_rps=$(sed -E 's/.*rps=([0-9.]+).*/\1/' <<<"$LAST")
  dpop_scenarios "$mode" "$verify_rps" "$refresh_rps"
  stop_pid "$PID"
}

run_extra() {
  local line l
  start_tokend embedded
  setup_user
  header
  # Login flood: logins saturate the Argon2 pool while JWKS and verify are measured at a
  # steady rate (latency counted from when each request was due).
  log "extra: login flood"
  RUN_NAME=flood-login
  l=$(load1)
  reset_peak
  wrk_line -c 16 -d "$((DURATION + 2))s" \
    -s "$(lua login POST application/json '' "{\"email\":\"$LOGIN_EMAIL\",\"password\":\"$PASSWORD\"}")" \
    "$BASE/auth/login" >"$OUT/flood-login.line" &
  local flood=$!
  sleep 1
  "$LOADGEN" http --url "$BASE/.well-known/jwks.json" -c 4 -d "$DURATION" --warmup 0 \
    --rate 500 >"$OUT/flood-jwks.line" &
  local j=$!
  "$LOADGEN" http --url "$BASE/auth/verify" -H "Authorization: Bearer $ACCESS" -c 4 \
    -d "$DURATION" --warmup 0 --rate 500 >"$OUT/flood-verify.line"
  wait "$j" "$flood"
  row flood "logins (saturating, 16 connections)" "$(cat "$OUT/flood-login.line") load=$l" \
    "$(rss_kb "$PID" VmHWM)"
  row flood "JWKS at 500 req/s during the flood" "$(cat "$OUT/flood-jwks.line")"
  row flood "/auth/verify at 500 req/s during the flood" "$(cat "$OUT/flood-verify.line")"

  # Memory with 1,000 open connections under load.
  RUN_NAME=conn1000
  l=$(load1)
  reset_peak
  log "extra: 1,000 connections"
  line=$(wrk_line -t 2 -c 1000 -d "${DURATION}s" -H "Authorization: Bearer $ACCESS" \
    "$BASE/auth/verify")
  row memory "/auth/verify with 1,000 open connections" "$line load=$l" "$(rss_kb "$PID" VmHWM)"
  stop_pid "$PID"

  # Start-up to ready with the existing keyset (embedded).
  log "extra: start-up"
  PORT=$(free_port)
  local env
  mapfile -t env < <(tokend_env embedded)
  line=$(env -i PATH="$PATH" "${env[@]}" "$LOADGEN" startup --bin "$TOKEND" \
    --url "http://127.0.0.1:$PORT/readyz" --runs 7)
  echo "start-up (embedded, existing keyset), ms to /readyz 200: $line" | tee -a "$RESULTS"
}

# ---- the new flows and scale (issues 16 and 20) ------------------------------------------

# Production mode's services and keyset, once per run.
ensure_production() {
  if [ -n "$REDIS_URL" ]; then return 0; fi
  ensure_services
  start_services
  DB="tokend_load_$(date +%s)"
  "$LOADGEN" keyset --mongodb-uri "$MONGO_URI" --mongodb-db "$DB" --kek "$KEK" \
    --algs EdDSA,RS256 --rsa-bits "$RSA_BITS" >/dev/null
}

rcli() {
  command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
  redis-cli -u "$REDIS_URL" "$@"
}
used_memory() { rcli INFO memory | tr -d '\r' | sed -n 's/^used_memory://p'; }

# Waits (at most 10 minutes) until Redis has finished moving its keyspace to a larger table.
# Writing families can pass a power of two of keys; Redis then doubles its key and expiry
# tables and moves the entries over a little at a time (about 14,000 a second on an idle
# server here), every lookup meanwhile searching both tables. `families` measures a store
# that holds N families, not one in the middle of that move (nor the memory of both tables
# at once); the move's own cost is written down in BENCHMARKS.md. Prints how long it waited.
wait_resized() {
  local waited=0
  while rcli DEBUG HTSTATS 0 | grep -q 'Hash table 1 stats'; do
    [ "$waited" -lt 600 ] || die "Redis is still resizing its tables after 600 s"
    sleep 1
    waited=$((waited + 1))
  done
  echo "$waited"
}

# kv KEY: a value of the last result line.
kv() { sed -nE "s/(^|.* )$1=([^ ]+).*/\\2/p" <<<"$LAST"; }

# note TEXT: a line under the table.
note() { echo "    $*" | tee -a "$RESULTS"; }

# snapshot FILE: tokend's counters and Redis's per-command call counts, for a delta.
snapshot() {
  {
    curl -fsS "$BASE/metrics" |
      grep -E '^tokend_(store_operation_duration_seconds_(count|sum)|device_polls_total)\{' || true
    rcli INFO commandstats | tr -d '\r' |
      sed -nE 's/^cmdstat_([^:]+):calls=([0-9]+).*/redis_calls{cmd="\1"} \2/p'
  } >"$1"
}

# delta BEFORE AFTER [POLLS]: what changed between two snapshots, as KEY=VALUE words:
# store_ops (tokend's store operations by name, the mail worker's left out), redis (calls by
# command: a script is one EVALSHA, the commands it runs are listed too), revoke_ms (the
# time of the one "end every session" store step); with POLLS, per-poll figures.
delta() {
  python3 - "$@" <<'PY'
import re, sys
def load(path):
    out = {}
    for line in open(path):
        m = re.match(r'^(\S+?)(\{[^}]*\})?\s+(\S+)$', line.strip())
        if m:
            out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
d = {k: b.get(k, 0) - a.get(k, 0) for k in b if b.get(k, 0) != a.get(k, 0)}
def label(labels, name):
    m = re.search(name + r'="([^"]*)"', labels)
    return m.group(1) if m else "?"
ops = {}
revoke_s = 0.0
calls = {}
polls = 0
for (name, labels), v in d.items():
    if name == "tokend_store_operation_duration_seconds_count":
        op = label(labels, "op")
        if not op.startswith("mail_"):
            ops[f"{label(labels, 'store')}:{op}"] = int(v)
    elif name == "tokend_store_operation_duration_seconds_sum" and label(labels, "op") == "user_sessions_revoke":
        revoke_s += v
    elif name == "redis_calls":
        cmd = label(labels, "cmd")
        if cmd not in ("info",):
            calls[cmd] = int(v)
    elif name == "tokend_device_polls_total":
        polls += int(v)
fmt = lambda m: ",".join(f"{k}:{v}" for k, v in sorted(m.items())) or "none"
words = [f"store_ops={fmt(ops)}", f"redis={fmt(calls)}", f"revoke_ms={revoke_s * 1000:.2f}"]
if polls:
    poll_ops = ops.get("redis:device_poll", 0)
    other = sum(v for k, v in ops.items() if k != "redis:device_poll")
    words += [f"polls={polls}", f"store_ops_per_poll={poll_ops / polls:.3f}",
              f"other_store_ops={other}",
              f"evalsha_per_poll={calls.get('evalsha', 0) / polls:.3f}",
              f"redis_calls_per_poll={sum(v for k, v in calls.items() if k != 'evalsha') / polls:.3f}",
              f"mongo_ops={sum(v for k, v in ops.items() if k.startswith('mongodb:'))}"]
print(" ".join(words))
PY
}

# The authorization-code exchange (issue 16): codes minted by /oauth/authorize with one
# browser session, exchanged at /oauth/token; ID tokens EdDSA, then RS256 at 2048 and 3072
# bits (access and refresh tokens stay EdDSA: the client's `alg`).
code_rows() {
  local mode=$1 bits=$2 which
  local -a common=(--base "$BASE" --email "code-$mode@example.com" --password "$PASSWORD"
    --redirect-uri "$REDIRECT_URI" -c 32 -d "$DURATION")
  if [ "$bits" = "$RSA_BITS" ]; then
    scenario "$mode" "code exchange alone, EdDSA ID token (rounds of 32 codes a connection)" \
      "$LOADGEN" code "${common[@]}" --client-id app-eddsa --batch 32
    note "pair rate $(kv pair_rps)/s over $(kv rounds) rounds; /oauth/authorize p50 $(kv authorize_p50_ms), p99 $(kv authorize_p99_ms) ms"
    scenario "$mode" "code pairs: /oauth/authorize then the exchange, EdDSA (latency: the exchange)" \
      "$LOADGEN" code "${common[@]}" --client-id app-eddsa --batch 0
    note "/oauth/authorize p50 $(kv authorize_p50_ms), p99 $(kv authorize_p99_ms) ms"
  fi
  scenario "$mode" "code exchange alone, RS256 ID token ($bits-bit key)" \
    "$LOADGEN" code "${common[@]}" --client-id app-rs256-id --batch 32
  note "pair rate $(kv pair_rps)/s over $(kv rounds) rounds; /oauth/authorize p50 $(kv authorize_p50_ms), p99 $(kv authorize_p99_ms) ms"
}

run_code() {
  local mode=$1 keys_dir=$KEYS_DIR db=$DB prefix=$PREFIX
  start_tokend "$mode"
  header
  code_rows "$mode" "$RSA_BITS"
  stop_pid "$PID"
  if [ "$RSA_BITS" != 3072 ]; then
    # The same with tokend's default key size, 3072 bits: a keyset of its own.
    BITS=3072
    if [ "$mode" = production ]; then
      DB="${db}_rsa3072" PREFIX=tokend_rsa3072:
      "$LOADGEN" keyset --mongodb-uri "$MONGO_URI" --mongodb-db "$DB" --kek "$KEK" \
        --algs EdDSA,RS256 --rsa-bits 3072 >/dev/null
    else
      KEYS_DIR="$OUT/keys-3072"
      rm -rf "$KEYS_DIR"
      "$LOADGEN" keyset --dir "$KEYS_DIR" --algs EdDSA,RS256 --rsa-bits 3072 >/dev/null
    fi
    start_tokend "$mode"
    code_rows "$mode" 3072
    stop_pid "$PID"
    BITS=$RSA_BITS KEYS_DIR=$keys_dir DB=$db PREFIX=$prefix
  fi
}

# The hosted sign-in form (issue 16), against the Argon2 ceiling measured right after it.
run_signin() {
  local mode=$1 post_rps
  start_tokend "$mode"
  header
  scenario "$mode" "sign-in form post (POST /login, CSRF, pending request; Argon2 m=19456,t=2,p=1)" \
    "$LOADGEN" signin --base "$BASE" --email "signin-$mode@example.com" --password "$PASSWORD" \
    --client-id app-eddsa --redirect-uri "$REDIRECT_URI" -c 8 -d "$DURATION"
  note "each post preceded by /oauth/authorize without a session (p50 $(kv authorize_p50_ms), p99 $(kv authorize_p99_ms) ms, not counted)"
  post_rps=$(kv rps)
  stop_pid "$PID"
  reference "$mode" "reference: Argon2 ceiling ($(nproc) cores / one hash)" \
    sh -c "'$LOADGEN' argon2 --cores $(nproc) -d 4 | sed 's/ceiling_rps=/rps=/'"
  python3 -c "import sys; print(f'sign-in form post / Argon2 ceiling (cores / hash time) = {float(sys.argv[1]) / float(sys.argv[2]) * 100:.0f} %')" \
    "$post_rps" "$(kv rps)" | tee -a "$RESULTS"
}

# Device-grant polling (issue 20): each connection polls its own pending device code back to
# back, so after the first poll every answer is `slow_down` (RFC 8628 §3.5) — the same one
# store script as `authorization_pending`, plus one field written. Store operations and Redis
# calls per poll come from tokend's metrics and Redis's command counts around the run.
run_device() {
  ensure_production
  start_tokend production
  header
  snapshot "$OUT/device.before"
  scenario production "device-grant polls (own device code a connection; answers slow_down)" \
    "$LOADGEN" device --base "$BASE" --client-id tv-load -c "$CONNS" -d "$DURATION"
  local answers=$LAST
  snapshot "$OUT/device.after"
  LAST="$answers $(delta "$OUT/device.before" "$OUT/device.after")"
  note "answers in the window: $(kv slow_down) slow_down, $(kv authorization_pending) authorization_pending"
  note "per poll, over all $(kv polls) polls of the run: store operations (device_poll) $(kv store_ops_per_poll), Redis EVALSHA $(kv evalsha_per_poll), other Redis calls $(kv redis_calls_per_poll) (commands run inside the script), MongoDB operations $(kv mongo_ops) in all; other store operations in all: $(kv other_store_ops) (the $CONNS device authorizations)"
  stop_pid "$PID"
}

# Logout-all and password change for a user with 100 families (issue 20): one store step
# however many families there are, shown by the store operations and Redis calls of the
# request against the same request for a user with one family.
run_sessions() {
  ensure_production
  start_tokend production
  local email=sessions@example.com current=$PASSWORD next='correct horse battery staple'
  local rounds=5 fams what r access sub status secs listed after
  curl -fsS -o /dev/null -H 'Content-Type: application/json' \
    -d "{\"username\":\"sessions\",\"email\":\"$email\",\"password\":\"$current\"}" \
    "$BASE/auth/register" || true
  {
    echo
    echo "| mode | request | user's families | latency ms, median of $rounds (min–max) | store operations of the request | Redis calls of the request | the store step |"
    echo "| --- | --- | ---: | --- | --- | --- | --- |"
  } | tee -a "$RESULTS"
  for what in logout-all password-change; do
    for fams in 100 1; do
      local -a times=()
      for r in $(seq 1 "$rounds"); do
        access=$(curl -fsS -H 'Content-Type: application/json' \
          -d "{\"email\":\"$email\",\"password\":\"$current\"}" "$BASE/auth/login" |
          python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
        sub=$(python3 -c 'import base64,json,sys; p=sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["sub"])' "$access")
        if [ "$fams" -gt 1 ]; then
          "$LOADGEN" families --redis-url "$REDIS_URL" --prefix "$PREFIX" --user-id "$sub" \
            -n "$((fams - 1))" --seed "sessions-$what-$r" >/dev/null
        fi
        listed=$(rcli HLEN "${PREFIX}sfam:{$sub}")
        [ "$listed" = "$fams" ] || die "$what: the user has $listed families, not $fams"
        snapshot "$OUT/sessions.before"
        if [ "$what" = logout-all ]; then
          read -r status secs < <(curl -sS -o /dev/null -w '%{http_code} %{time_total}\n' \
            -X POST -H "Authorization: Bearer $access" "$BASE/auth/logout/all")
        else
          read -r status secs < <(curl -sS -o /dev/null -w '%{http_code} %{time_total}\n' \
            -X PUT -H "Authorization: Bearer $access" -H 'Content-Type: application/json' \
            -d "{\"current_password\":\"$current\",\"new_password\":\"$next\"}" \
            "$BASE/users/me/password")
          local swap=$current
          current=$next next=$swap
        fi
        snapshot "$OUT/sessions.after"
        [ "$status" = 204 ] || die "$what answered $status"
        after=$(rcli HLEN "${PREFIX}sfam:{$sub}")
        [ "$after" = 0 ] || die "$what left $after families listed"
        status=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $access" \
          "$BASE/auth/verify")
        [ "$status" = 401 ] || die "after $what the access token answered $status, not 401"
        times+=("$secs")
      done
      LAST=$(delta "$OUT/sessions.before" "$OUT/sessions.after")
      python3 - "$what" "$fams" "$(kv store_ops)" "$(kv redis)" "$(kv revoke_ms)" "${times[@]}" <<'PY' | tee -a "$RESULTS"
import statistics, sys
what, fams, ops, calls, revoke = sys.argv[1:6]
t = sorted(float(x) * 1000 for x in sys.argv[6:])
name = "POST /auth/logout/all" if what == "logout-all" else "PUT /users/me/password (two Argon2 hashes)"
print(f"| production | {name} | {fams} | {statistics.median(t):.2f} ({t[0]:.2f}–{t[-1]:.2f}) | "
      f"{ops.replace(',', ', ')} | {calls.replace(',', ', ')} | user_sessions_revoke {revoke} ms |")
PY
    done
  done
  note "Store operations and Redis calls of the last round (each round's are the same); a Lua script is one EVALSHA, and the commands it runs are counted by Redis too."
  stop_pid "$PID"
}

# percent A B [C D]: A / B in percent, rounded; with C and D, (A / C) / (B / D): A against B
# with each first divided by its own reference.
percent() {
  python3 -c "import sys; a, b, c, d = (list(map(float, sys.argv[1:])) + [1, 1])[:4]; print(f'{a / c / (b / d) * 100:.0f}')" "$@"
}

# host_reference WHEN: the refresh's cryptography alone on both cores (tokend idle), a measure
# of what the host does at this moment, as a row of the current table.
host_reference() {
  reference production "reference: refresh crypto (verify + 2 signs) EdDSA, 2 threads, $1" \
    sh -c "'$LOADGEN' sign --alg EdDSA --refresh --threads 2 -d 3 | sed 's/ops=/rps=/'"
}

# Live refresh families at scale (issue 20, SPEC §16): Redis bytes per family and refresh and
# /auth/verify at 1k, 100k and 1M live families, written by loadgen through the session store.
run_families() {
  ensure_production
  # The earlier sections' keys (codes, device grants, revoked jtis, sessions) go first: they
  # live for minutes, and Redis's two key tables (keys, expiries) double their bucket arrays
  # at each power of two of the key count — 16 bytes a key more until the count catches up —
  # so the bytes per family would depend on what ran before (BENCHMARKS.md, run M).
  rcli FLUSHALL >/dev/null
  start_tokend production
  setup_user
  local n filled=0 total=0 before after add line first_refresh='' first_verify='' first_host=''
  local host_before host_rps
  local -a scale_rows=()
  # Warm-up, not recorded: the first requests after a start read low, and the first size is
  # the reference of every later one.
  wrk --latency -t "$WRK_THREADS" -c "$CONNS" -d 3s -H "Authorization: Bearer $ACCESS" \
    "$BASE/auth/verify" >/dev/null 2>&1 || true
  "$LOADGEN" refresh --base "$BASE" --email "families-warmup@example.com" --password "$PASSWORD" \
    -c 32 -d 3 >/dev/null
  for n in $FAMILY_COUNTS; do
    add=$((n - filled))
    [ "$add" -gt 0 ] || continue
    log "families: writing $add families (to $n)"
    before=$(used_memory)
    line=$("$LOADGEN" families --redis-url "$REDIS_URL" --prefix "$PREFIX" -n "$add" --seed "fam-$n")
    log "families: Redis finished resizing its tables $(wait_resized) s after the writes"
    after=$(used_memory)
    total=$((total + after - before))
    filled=$n
    scale_rows+=("$(python3 - "$n" "$add" "$((after - before))" "$total" "$line" "$(rcli DBSIZE)" <<'PY'
import sys
n, add, step, total, line, keys = sys.argv[1:7]
kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
print(f"| {int(n):,} | {int(add):,} | {int(step):,} | {int(step) / int(add):.0f} | "
      f"{int(total) / int(n):.0f} | {int(keys):,} | {float(kv['secs']):.1f} s ({float(kv['per_sec']):,.0f}/s) |")
PY
)")
    header
    # What the host itself does at this step, before and after the two measurements: this host
    # moves by tens of percent over minutes (BENCHMARKS.md), and the steps are minutes apart.
    host_reference "before"
    host_before=$(kv rps)
    scenario production "/auth/verify with $n live families" \
      wrk_get -H "Authorization: Bearer $ACCESS" "$BASE/auth/verify"
    [ -n "$first_verify" ] || first_verify=$(kv rps)
    local verify_rps verify_p99
    verify_rps=$(kv rps) verify_p99=$(kv p99_ms)
    scenario production "refresh with $n live families" \
      "$LOADGEN" refresh --base "$BASE" --email "families-$n@example.com" \
      --password "$PASSWORD" -c 32 -d "$DURATION"
    [ -n "$first_refresh" ] || first_refresh=$(kv rps)
    local refresh_rps refresh_p99
    refresh_rps=$(kv rps) refresh_p99=$(kv p99_ms)
    host_reference "after"
    host_rps=$(python3 -c "import sys; print((float(sys.argv[1]) + float(sys.argv[2])) / 2)" "$host_before" "$(kv rps)")
    [ -n "$first_host" ] || first_host=$host_rps
    note "at $n: /auth/verify $(percent "$verify_rps" "$first_verify") % and refresh $(percent "$refresh_rps" "$first_refresh") % of their first-size figures (p99 $verify_p99 / $refresh_p99 ms); the host's crypto reference (mean of before and after) $(percent "$host_rps" "$first_host") % of the first size's, so against the host: /auth/verify $(percent "$verify_rps" "$first_verify" "$host_rps" "$first_host") % and refresh $(percent "$refresh_rps" "$first_refresh" "$host_rps" "$first_host") %"
  done
  {
    echo
    echo "Redis memory of live families (used_memory before and after loadgen wrote them; one family a made-up user, so each login's record is its user's hash holding that one family):"
    echo
    echo "| live families | written now | used_memory added | bytes per family, this step | bytes per family, all | Redis keys | writing took |"
    echo "| ---: | ---: | ---: | ---: | ---: | ---: | --- |"
    printf '%s\n' "${scale_rows[@]}"
  } | tee -a "$RESULTS"
  # One record of each kind, by MEMORY USAGE: a written one-family user, and the loader's
  # hash (the user of the verify token, with the families of its logins).
  local made loader_sub
  made=$(rcli SCAN 0 MATCH "${PREFIX}sfam:*" COUNT 10000 | sed -n 2p)
  loader_sub=$(python3 -c 'import base64,json,sys; p=sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["sub"])' "$ACCESS")
  note "MEMORY USAGE: a written one-family user's hash $(rcli MEMORY USAGE "$made") bytes ($(rcli OBJECT ENCODING "$made")), the loader's hash $(rcli MEMORY USAGE "${PREFIX}sfam:{$loader_sub}") bytes for $(rcli HLEN "${PREFIX}sfam:{$loader_sub}") families; keys named fam:/ufam: (the layout from before) $(rcli EVAL "return #redis.call('KEYS', ARGV[1]) + #redis.call('KEYS', ARGV[2])" 0 "${PREFIX}fam:*" "${PREFIX}ufam:*")"
  stop_pid "$PID"
}

{
  echo "# deploy/load.sh $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "$(nproc) cores, $(awk '/model name/ {$1=$2=$3=""; print; exit}' /proc/cpuinfo | sed 's/^ *//'),"
  echo "duration ${DURATION}s, ${CONNS} connections, wrk -t ${WRK_THREADS}, TOKEND_LOG=$SERVER_LOG,"
  echo "RSA keys of $RSA_BITS bits; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$RESULTS"

# A keyset made once, reused: start-up with an existing keyset, and RSA keys of $RSA_BITS.
rm -rf "$OUT/keys"
"$LOADGEN" keyset --dir "$OUT/keys" --algs EdDSA,RS256 --rsa-bits "$RSA_BITS" >/dev/null

if want embedded; then
  run_mode embedded
fi
if want production; then
  ensure_production
  run_mode production
fi
if want extra; then
  run_extra
fi
if want code; then
  run_code embedded
  ensure_production
  run_code production
fi
if want signin; then
  run_signin embedded
  ensure_production
  run_signin production
fi
if want device; then
  run_device
fi
if want sessions; then
  run_sessions
fi
if want families; then
  run_families
fi
# `all` has the DPoP rows already (in `embedded` and `production`).
if [[ " ${SECTIONS[*]} " == *" dpop "* ]]; then
  run_dpop embedded
  ensure_production
  run_dpop production
fi
log "results in ${RESULTS#"$ROOT"/}"
