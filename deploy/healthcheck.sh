#!/bin/bash
# Container health probe without curl (debian:bookworm-slim has none): GET /healthz through
# bash's /dev/tcp on the listener that serves it — TOKEND_METRICS_LISTEN when set, else
# TOKEND_LISTEN — and succeed on a 200. Plain HTTP only: when the main listener serves TLS
# (TOKEND_TLS_CERT), set TOKEND_METRICS_LISTEN so the probe has a plain listener to ask.
# TOKEND_HEALTHCHECK_HOST overrides the address asked (default 127.0.0.1).
set -euo pipefail
addr=${TOKEND_METRICS_LISTEN:-${TOKEND_LISTEN:-0.0.0.0:5000}}
port=${addr##*:}
host=${TOKEND_HEALTHCHECK_HOST:-127.0.0.1}
exec 3<>"/dev/tcp/$host/$port"
printf 'GET /healthz HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n' "$host" >&3
IFS= read -r -t 5 status <&3
case "$status" in
  "HTTP/1.1 200"* | "HTTP/1.0 200"*) exit 0 ;;
  *)
    printf 'tokend-healthcheck: %s\n' "${status%$'\r'}" >&2
    exit 1
    ;;
esac
