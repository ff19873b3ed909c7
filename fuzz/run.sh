#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) on the stable toolchain, without a
# sanitizer, starting from the checked-in seed corpora. Prints libFuzzer's execution count per
# target; exits non-zero if a target finds a crash (the reproducer is left in fuzz/artifacts/).
#
# Usage: fuzz/run.sh [SECONDS]    (CARGO_TARGET_DIR and FUZZ_TARGETS are honoured)
set -euo pipefail

seconds="${1:-60}"
cd "$(dirname "$0")"
targets="${FUZZ_TARGETS:-policy_compile engine_differential path_normalise}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

target_dir=()
if [[ -n "${CARGO_TARGET_DIR:-}" ]]; then
    target_dir=(--target-dir "$CARGO_TARGET_DIR")
fi

cargo fuzz build -s none "${target_dir[@]}"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=()
summary=()
for t in $targets; do
    # Fuzz in a scratch copy so that new inputs do not end up in the checked-in corpus.
    work="$logs/corpus-$t"
    mkdir -p "$work"
    cp -r "corpus/$t/." "$work/" 2>/dev/null || true
    mkdir -p "artifacts/$t"
    echo "== $t: ${seconds}s"
    status=0
    cargo fuzz run -s none "${target_dir[@]}" "$t" "$work" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        >"$logs/$t.log" 2>&1 || status=$?
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | grep -o '[0-9]*$' | tail -1 || true)"
    done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$logs/$t.log" | tail -1 || true)"
    if [[ $status -ne 0 ]]; then
        tail -n 60 "$logs/$t.log"
        failed+=("$t")
        summary+=("$t: FAILED (exit $status) after ${execs:-?} executions; see fuzz/artifacts/$t/")
    else
        summary+=("$t: ${execs:-?} executions in ${seconds}s, no crash  [${done_line}]")
    fi
done
echo "== summary"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -ne 0 ]]; then
    echo "crashes found in: ${failed[*]}" >&2
    exit 1
fi
