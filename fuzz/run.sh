#!/usr/bin/env bash
# Runs every cargo-fuzz target for T seconds each (default 60), one after
# the other, and prints per target: executions, exec/s, coverage (cov) and
# features (ft) from libFuzzer's final stats, the corpus size, findings.
#
#   fuzz/run.sh [T] [TARGET...]
#
# Environment:
#   FUZZ_SANITIZER  address (default) or none (if the ASan runtime is missing)
#   FUZZ_JOBS       parallel targets (default 1; the machine is shared)
#   FUZZ_WORK       where the grown corpora and logs go (default fuzz/work)
#
# The committed seeds (fuzz/corpus/<target>) are only read; new inputs go
# to $FUZZ_WORK/corpus/<target>, and crashes to fuzz/artifacts/<target>.
# Exits 1 if any target found something. Needs `cargo install cargo-fuzz`.
# `-Zsanitizer` needs RUSTC_BOOTSTRAP=1 on a stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."

T="${1:-60}"
shift || true
SAN="${FUZZ_SANITIZER:-address}"
WORK="${FUZZ_WORK:-fuzz/work}"
JOBS="${FUZZ_JOBS:-1}"
export RUSTC_BOOTSTRAP=1
if [ "$#" -gt 0 ]; then
  TARGETS=("$@")
else
  mapfile -t TARGETS < <(ls fuzz/fuzz_targets | sed -n 's/\.rs$//p')
fi

command -v cargo-fuzz >/dev/null || { echo "run.sh: cargo-fuzz missing: cargo install cargo-fuzz" >&2; exit 2; }
# cargo fuzz's default build: release, debug assertions and overflow checks on.
cargo fuzz build -s "$SAN" >&2
BIN="${CARGO_TARGET_DIR:-fuzz/target}/x86_64-unknown-linux-gnu/release"

run_one() {
  local t="$1" log="$WORK/logs/$1.log"
  mkdir -p "$WORK/corpus/$t" "$WORK/logs" "fuzz/artifacts/$t"
  local before
  before=$(ls "fuzz/artifacts/$t" | wc -l)
  # -timeout: one input taking over 10 s is a finding; -rss_limit_mb bounds memory.
  # The binary `cargo fuzz run` would start, started directly: nothing is
  # rebuilt between targets even if the sources change meanwhile.
  "$BIN/$t" -artifact_prefix="fuzz/artifacts/$t/" \
    -max_total_time="$T" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    "$WORK/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1 || true
  local after
  after=$(ls "fuzz/artifacts/$t" | wc -l)
  echo "$((after - before))" >"$WORK/logs/$t.findings"
}

export -f run_one
export T SAN WORK BIN
printf '%s\n' "${TARGETS[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}'

status=0
printf '%-24s %12s %8s %6s %7s %8s %9s\n' target executions exec/s cov ft corpus findings
for t in "${TARGETS[@]}"; do
  log="$WORK/logs/$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  # The last status line ("#N DONE cov: X ft: Y corp: U/S ...") carries the final figures.
  last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([^ ]*\).*/\1/p' <<<"$last")
  found=$(cat "$WORK/logs/$t.findings")
  [ "$found" = 0 ] || status=1
  printf '%-24s %12s %8s %6s %7s %8s %9s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$found"
done
echo "(corpus: units/bytes held by libFuzzer at the end; logs in $WORK/logs; findings in fuzz/artifacts/<target>)"
exit "$status"
