#!/usr/bin/env bash
# Runs the gateway for the side-by-side load benchmark (benches/README.md): the benchmark
# policy (policies/benchmark), the static CRM of run-peers.sh on 127.0.0.1:18081 as upstream,
# and a fresh consent store holding a `marketing` grant for every id of CONSENTED_TXT.
#
# Usage: benches/serve-benchmark.sh CONSENTED_TXT [LISTEN_ADDR]   (LISTEN_ADDR default 127.0.0.1:8080)
#   CONSENTED_TXT: one subject id per line (the consented.txt that `run-peers.sh -u` prints).
# Environment: CONSENTRY_BIN: a gateway binary to use instead of building target/release/consentry.
#   RUST_LOG etc. pass through to the gateway (decision lines go to stderr at `info`).
# Prints GATEWAY_PID=<pid> (for run-peers.sh), then runs the gateway in the foreground until
# SIGINT or SIGTERM. The temporary data directory is printed and left behind.
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

data=$(mktemp -d "${TMPDIR:-/tmp}/consentry-bench.XXXXXX")
trap 'rm -rf "$data"' EXIT # until the gateway replaces this shell
import=$data/consented.csv
# One CSV line per id: blank lines skipped, CR stripped, each id quoted (RFC 4180). `at` empty:
# now; no expiry, no proof. One import is one transaction.
awk 'BEGIN { print "subject,purpose,kind,at,expires_at,source,proof" }
     { sub(/\r$/, ""); gsub(/^[ \t]+|[ \t]+$/, "") }
     $0 != "" { gsub(/"/, "\"\""); printf "\"%s\",marketing,granted,,,benchmark,\n", $0; n++ }
     END { if (n == 0) { print "error: no ids in the file" > "/dev/stderr"; exit 1 } }' \
  "$consented" >"$import"
"$bin" consent --data-dir "$data" import "$import"
rm -f "$import"

echo "data dir: $data"
echo "GATEWAY_PID=$$"
trap - EXIT
exec "$bin" serve --listen "$listen" --upstream "$upstream" --policies "$policies" --data-dir "$data"
