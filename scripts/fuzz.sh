#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ and runs each for SECONDS seconds (default 60) on its
# committed seed corpus, then prints, per target, the executions, executions per second and
# libFuzzer's coverage (`cov:` edges and `ft:` features) of the run.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Environment:
#   FUZZ_WORK   where each target's growing corpus and logs go (default fuzz/target/work);
#               the committed corpus in fuzz/corpus/ is only read.
#   FUZZ_SEED   libFuzzer's -seed (default 0: a new one each run); CI sets 1, so that a
#               finding there comes back on the same commit.
#   FUZZ_TIMEOUT  seconds one input may take before it is a finding (default 30; CI uses
#               120: on a shared 2-core machine a 1 s input once took 69 s under load).
#
# The toolchain here is stable rustc; cargo-fuzz's AddressSanitizer build passes
# `-Zsanitizer=address`, a nightly flag, so the build sets RUSTC_BOOTSTRAP=1 (which lets
# stable rustc accept it; the ASan runtime ships with the stable toolchain). Without it,
# `cargo fuzz build --sanitizer none` works on plain stable, but then libFuzzer's
# -malloc_limit_mb (the allocation cap below) has no allocator hooks and checks nothing.
#
# Caps: -rss_limit_mb=2048 (the whole process) and -malloc_limit_mb=256 (any single
# allocation): every parser caps its lengths (a stream record at 16 MiB, a control message
# at 1 MiB, a context section at its type's size) far below that, so an input that makes
# one allocate more is a finding. An input that runs longer than FUZZ_TIMEOUT is a finding too.
# A finding stops that target, leaves the input in fuzz/artifacts/<target>/, and makes the
# script exit non-zero after the others ran.
set -uo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz is not installed (scripts/setup.sh installs it)" >&2
    exit 2
fi
# -O: optimised; -a: debug assertions and overflow checks on, so that an integer
# overflow in a length check is a finding rather than a wrap.
if ! cargo fuzz build -O -a >target-build.log 2>&1; then
    tail -40 target-build.log >&2
    echo "error: the fuzz targets do not build (fuzz/target-build.log)" >&2
    exit 2
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
bin_dir="target/x86_64-unknown-linux-gnu/release"
work="${FUZZ_WORK:-target/work}"
failed=0
rows=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "artifacts/$t"
    log="$work/$t.log"
    # The first directory is where new inputs go; the committed seeds are read only.
    "$bin_dir/$t" "$work/$t" "corpus/$t" \
        -max_total_time="$secs" -seed="${FUZZ_SEED:-0}" \
        -rss_limit_mb=2048 -malloc_limit_mb=256 -timeout="${FUZZ_TIMEOUT:-30}" \
        -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"$log" 2>&1
    rc=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$')
    cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
    if [ "$rc" -ne 0 ]; then
        failed=1
        status="FINDING (exit $rc, see fuzz/$log and fuzz/artifacts/$t/)"
        grep -m3 -E 'panicked|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY' "$log" >&2
    else
        status=ok
    fi
    rows+=("$(printf '%-18s %12s %8s/s  %-22s %s' "$t" "${execs:-0}" "${rate:-0}" "${cov:-cov: ?}" "$status")")
done
printf '%-18s %12s %10s  %-22s %s\n' target execs rate coverage status
printf '%s\n' "${rows[@]}"
exit "$failed"
