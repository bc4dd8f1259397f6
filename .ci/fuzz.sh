#!/usr/bin/env bash
# CI: every cargo-fuzz target in fuzz/ for a bounded time, on a nightly toolchain (libFuzzer
# needs nightly's sanitizer flags; installed with rustup, and cargo-fuzz with cargo, when
# missing). The same properties also run on stable in every `cargo test`
# (tests/decoder_props.rs).
#
# Each target starts from a copy of its committed seeds (fuzz/corpus/<target>/) in a temporary
# directory, so the repository is not modified; a crash, a timeout, an allocation over
# FUZZ_MALLOC_LIMIT_MB in one call or a leak fails the run, and its input is kept and printed.
#
# Build output goes to $CARGO_TARGET_DIR when set, otherwise to a cache outside the clone
# ($HOME/.cache/bpci/fuzz-target): CI clones afresh each run, and from nothing the instrumented
# build of the whole dependency tree takes about six minutes on two cores, against about one and
# a half to rebuild the workspace's own crates.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds_per_target=${FUZZ_SECONDS_PER_TARGET:-15}
# The largest allocation a decoder may make for one input of at most 4 KiB: the frame
# decoder reserves up to the frame limit it is given (16 MiB at most), bcs sequences up to 1 MiB.
malloc_limit_mb=${FUZZ_MALLOC_LIMIT_MB:-64}
codegen_units=16

echo "== rustfmt --check fuzz/fuzz_targets"
rustfmt --edition 2021 --check fuzz/fuzz_targets/*.rs

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "== installing the nightly toolchain (libFuzzer needs it)"
  timeout 900 rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  timeout 600 cargo install cargo-fuzz --locked
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bpci/fuzz-target}"
mapfile -t targets < <(cd fuzz && cargo +nightly fuzz list)
work=$(mktemp -d)
# cargo-fuzz makes fuzz/artifacts/<target>/ even when libFuzzer is told to write elsewhere:
# remove those empty folders again unless they were there before.
if [ ! -e fuzz/artifacts ]; then
  trap '[ -z "$(find fuzz/artifacts -type f 2>/dev/null)" ] && rm -rf fuzz/artifacts' EXIT
fi

start=$SECONDS
echo "== cargo +nightly fuzz build (target dir $CARGO_TARGET_DIR)"
(cd fuzz && timeout 1200 cargo +nightly fuzz build --codegen-units "$codegen_units")
echo "   built in $((SECONDS - start)) s"

failed=()
summary=()
for target in "${targets[@]}"; do
  corpus="$work/corpus/$target"
  artifacts="$work/artifacts/$target/"
  mkdir -p "$corpus" "$artifacts"
  cp fuzz/corpus/"$target"/seed-* "$corpus"/
  seeds=$(find "$corpus" -type f | wc -l)
  log="$work/$target.log"
  echo "== fuzz $target for ${seconds_per_target} s from $seeds seeds"
  status=0
  (cd fuzz && timeout $((seconds_per_target + 120)) cargo +nightly fuzz run \
    --codegen-units "$codegen_units" "$target" "$corpus" -- \
    -max_total_time="$seconds_per_target" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb="$malloc_limit_mb" -artifact_prefix="$artifacts" -print_final_stats=1) \
    >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log" | tail -n 1)
  found=$(find "$corpus" -type f | wc -l)
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    echo "   FAILED (exit $status): what it found, then the end of its log ($log):"
    grep -m 3 -A 2 -E "panicked at|==ERROR|ERROR: libFuzzer" "$log" | sed 's/^/   | /' || true
    echo "   | ..."
    tail -n 40 "$log" | sed 's/^/   | /'
    for input in "$artifacts"*; do
      [ -f "$input" ] || continue
      echo "   failing input $input (base64): $(base64 -w0 "$input")"
    done
  fi
  summary+=("$(printf '%-18s %-26s corpus %d -> %d' "$target" "${runs:-no final count}" "$seeds" "$found")")
done

echo "== fuzz summary (${seconds_per_target} s per target, $((SECONDS - start)) s with the build)"
printf '   %s\n' "${summary[@]}"
if [ "${#failed[@]}" -ne 0 ]; then
  echo "error: fuzz targets failed: ${failed[*]} (inputs and logs kept in $work)" >&2
  exit 1
fi
rm -rf "$work"
