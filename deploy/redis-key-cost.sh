#!/usr/bin/env bash
# What one Redis key costs, by type and value size (BENCHMARKS.md, "What a key costs"):
# `bash deploy/redis-key-cost.sh [REDIS-SERVER]`
#
# Starts its own redis-server (Debian's by default) on a free loopback port with no
# persistence, and for each layout writes 100,000 keys named like tokend's refresh families
# (`tokend:fam:{<22 characters>}`), each with a TTL, in one EVAL into the emptied server; prints
# used_memory after minus before, divided by the number of keys. The last rows write the layout
# that one key per login would take (each user's families as fields of one hash, a family's
# record one packed value under its 22-character id): per family, for users with one, two, four
# and ten families; and last the layout tokend writes. Stops the server afterwards.
set -euo pipefail

SERVER=${1:-$(command -v redis-server)}
CLI=$(command -v redis-cli)
N=100000
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$SERVER" --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
PID=$!
trap 'kill "$PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  "$CLI" -p "$PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done

used() { "$CLI" -p "$PORT" info memory | awk -F: '$1 == "used_memory" {print $2}' | tr -d '\r'; }

# cost LABEL LUA-BODY: the body writes key i (1..N); `sid` is a 22-character family id and
# `user` a 24-character user id.
cost() {
  "$CLI" -p "$PORT" flushall >/dev/null
  local before after
  before=$(used)
  "$CLI" -p "$PORT" eval "for i = 1, $N do
    local sid = string.format('%022d', i * 7919)
    local user = string.format('%024x', i)
    $2
  end
  return 1" 0 >/dev/null
  after=$(used)
  echo "| $1 | $(((after - before) / N)) |"
}

TTL=86400000
echo "$("$SERVER" --version | cut -d' ' -f1-3), $N keys a row"
echo
echo "| one key holding | bytes per key (per family in the last rows) |"
echo "| --- | ---: |"
for v in 40 64 100 140; do
  cost "a $v-byte string" \
    "redis.call('SET', 'tokend:fam:{' .. sid .. '}', string.rep('x', $v), 'PX', $TTL)"
done
for v in 40 60 100; do
  cost "a hash of one field (22-byte name) with a $v-byte value" \
    "local k = 'tokend:ufam:{' .. user .. '}'
    redis.call('HSET', k, sid, string.rep('x', $v))
    redis.call('PEXPIRE', k, $TTL)"
done
cost "a sorted set of one member (a one-family user's list)" \
  "local k = 'tokend:ufam:{' .. user .. '}'
  redis.call('ZADD', k, 1700000000000, sid)
  redis.call('PEXPIRE', k, $TTL)"
for v in 40 56 60 64; do
  cost "a user's hash holding one family: a $v-byte value under its 22-byte id" \
    "local k = 'tokend:u:{' .. user .. '}'
    redis.call('HSET', k, sid, string.rep('x', $v))
    redis.call('PEXPIRE', k, $TTL)"
done
for n in 2 4 10; do
  cost "a user's hash holding $n families of 56 bytes each (per family)" \
    "if i % $n == 0 then
      local k = 'tokend:u:{' .. user .. '}'
      for j = 0, $n - 1 do
        redis.call('HSET', k, string.format('%022d', (i + j) * 7919), string.rep('x', 56))
      end
      redis.call('PEXPIRE', k, $TTL)
    end"
done
# The layout tokend writes (docs/sessions.md, "The records"): the user's hash named by a
# 36-character user id, each family under its 8-character id, a 53-byte value (no address), 57
# (IPv4) or 61 (an IPv6 /64).
for v in 53 57 61; do
  cost "tokend's layout: \`tokend:sfam:{<user id>}\`, one family of $v bytes under an 8-byte id" \
    "local k = 'tokend:sfam:{' .. string.format('%036x', i) .. '}'
    redis.call('HSET', k, 'f' .. string.sub(sid, 16), string.rep('x', $v))
    redis.call('PEXPIRE', k, $TTL)"
done
# The key name is part of the cost: the same one-family user (57 bytes) under a key prefix of
# 17 characters, the longest whose names stay in the same allocator step, and of 18 and 23
# characters (`tokend_load_<10 digits>:`).
for p in tokend_abcdefghi: tokend_abcdefghij: tokend_load_1764612345:; do
  cost "tokend's layout under the ${#p}-character prefix \`$p\`, one family of 57 bytes" \
    "local k = '${p}sfam:{' .. string.format('%036x', i) .. '}'
    redis.call('HSET', k, 'f' .. string.sub(sid, 16), string.rep('x', 57))
    redis.call('PEXPIRE', k, $TTL)"
done
