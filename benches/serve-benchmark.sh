#!/usr/bin/env bash
# Runs the gateway for the side-by-side load benchmark (benches/README.md): the benchmark
# policy (policies/benchmark), the static CRM of run-peers.sh on 127.0.0.1:18081 as upstream,
# and a fresh consent store holding a `marketing` grant for every id of CONSENTED_TXT, seeded
# through the admin API (one import, one transaction) on 127.0.0.1:8081.
#
# Usage: benches/serve-benchmark.sh CONSENTED_TXT [LISTEN_ADDR]   (LISTEN_ADDR default 127.0.0.1:8080)
#   CONSENTED_TXT: one subject id per line (the consented.txt that `run-peers.sh -u` prints).
# Environment: CONSENTRY_BIN: a gateway binary to use instead of building target/release/consentry.
#   CONSENTRY_ADMIN_TOKEN: the admin token; one is generated (and printed) when unset.
#   CONSENTRY_ADMIN_LISTEN: the admin listener (default 127.0.0.1:8081).
#   RUST_LOG etc. pass through to the gateway (decision lines go to stderr at `info`).
# Prints the admin token and GATEWAY_PID=<pid> (for run-peers.sh), then waits for the gateway
# until SIGINT or SIGTERM, which it passes on. The temporary data directory is printed and left
# behind. The import goes through the gateway process: its peak memory includes it (a few
# hundred KB for the 3,750 ids of gen_crm_data.py).
set -euo pipefail

usage() {
  echo "usage: $0 CONSENTED_TXT [LISTEN_ADDR]   (LISTEN_ADDR default 127.0.0.1:8080)" >&2
  exit 2
}
[ $# -ge 1 ] && [ $# -le 2 ] || usage
case $1 in -h | --help) usage ;; esac
consented=$1
listen=${2:-127.0.0.1:8080}
upstream=http://127.0.0.1:18081
[ -f "$consented" ] && [ -r "$consented" ] || { echo "error: cannot read $consented" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
policies=$root/policies/benchmark
[ -d "$policies" ] || { echo "error: no policy directory $policies" >&2; exit 1; }

if [ -n "${CONSENTRY_BIN:-}" ]; then
  bin=$CONSENTRY_BIN
else
  # A no-op when the release binary is up to date.
  (cd "$root" && cargo build --release --quiet)
  bin=${CARGO_TARGET_DIR:-$root/target}/release/consentry
  case $bin in /*) ;; *) bin=$root/$bin ;; esac
fi
[ -x "$bin" ] || { echo "error: no gateway binary at $bin" >&2; exit 1; }

command -v curl >/dev/null || { echo "error: curl is needed to seed consent through the admin API" >&2; exit 1; }
admin=${CONSENTRY_ADMIN_LISTEN:-127.0.0.1:8081}
if [ -z "${CONSENTRY_ADMIN_TOKEN:-}" ]; then
  CONSENTRY_ADMIN_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  echo "admin token (generated): $CONSENTRY_ADMIN_TOKEN"
else
  echo "admin token: from CONSENTRY_ADMIN_TOKEN"
fi
# The gateway reads the token from its environment (never a flag: `ps` would show it).
export CONSENTRY_ADMIN_TOKEN

data=$(mktemp -d "${TMPDIR:-/tmp}/consentry-bench.XXXXXX")
gateway=
cleanup() {
  [ -z "$gateway" ] || kill "$gateway" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT # until the consent is seeded
import=$data/consented.csv
# One CSV line per id: blank lines skipped, CR stripped, each id quoted (RFC 4180). `at` empty:
# now; no expiry, no proof. One import is one transaction.
awk 'BEGIN { print "subject,purpose,kind,at,expires_at,source,proof" }
     { sub(/\r$/, ""); gsub(/^[ \t]+|[ \t]+$/, "") }
     $0 != "" { gsub(/"/, "\"\""); printf "\"%s\",marketing,granted,,,benchmark,\n", $0; n++ }
     END { if (n == 0) { print "error: no ids in the file" > "/dev/stderr"; exit 1 } }' \
  "$consented" >"$import"
# The import is one request body: make room for it whatever the size of the file.
body_limit=$(( $(wc -c <"$import") + 1048576 ))
[ "$body_limit" -gt 16777216 ] || body_limit=16777216

"$bin" serve --listen "$listen" --upstream "$upstream" --policies "$policies" --data-dir "$data" \
  --admin-listen "$admin" --admin-max-body-bytes "$body_limit" &
gateway=$!

# Wait (at most 30 s) for the admin listener to answer.
for _ in $(seq 300); do
  curl -fsS -o /dev/null "http://$admin/healthz" 2>/dev/null && break
  kill -0 "$gateway" 2>/dev/null || { echo "error: the gateway exited" >&2; exit 1; }
  sleep 0.1
done
curl -fsS -o /dev/null "http://$admin/healthz" || { echo "error: no admin API on $admin" >&2; exit 1; }

# The token goes to curl on its standard input, not its command line.
printf 'header = "Authorization: Bearer %s"\n' "$CONSENTRY_ADMIN_TOKEN" |
  curl -sS --fail-with-body -K - -H 'Content-Type: text/csv' --data-binary @"$import" \
    "http://$admin/v1/consent/import" || { echo; echo "error: seeding consent failed" >&2; exit 1; }
echo
rm -f "$import"

echo "data dir: $data"
echo "admin API: http://$admin"
echo "GATEWAY_PID=$gateway"
trap - EXIT
trap 'kill -TERM "$gateway" 2>/dev/null' INT TERM
# `wait` returns early when a trapped signal arrives: wait again for the drain to finish.
status=0
wait "$gateway" || status=$?
if kill -0 "$gateway" 2>/dev/null; then
  wait "$gateway" || status=$?
fi
exit "$status"
