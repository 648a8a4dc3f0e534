#!/usr/bin/env bash
# Bounded fuzzing of geokv's decoders, for CI and by hand:
#
#   fuzz/run.sh [SECONDS_PER_TARGET]     (default 20)
#
# Builds the targets of fuzz/ with cargo-fuzz (installed into ~/.cache/geokv-tools if missing)
# and runs each for SECONDS_PER_TARGET, seeded read-only from the committed fuzz/corpus/<target>.
# New inputs and crash artifacts go to a temporary directory, so a run never dirties the
# clone. Exits non-zero if any target crashes (panic, failed check, out-of-memory, timeout),
# printing the crashing input's path and the command that replays it.
#
# Sanitizer: AddressSanitizer (cargo-fuzz's default), on the stable toolchain through
# RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Zsanitizer=address; the stable rust-std ships the ASan
# runtime). It builds and runs here, and unlike `--sanitizer none` it lets libFuzzer see every
# allocation (-malloc_limit_mb, on by default at the RSS limit), including zstd's C mallocs.
# The code under test is safe Rust plus zstd's C library (not itself instrumented).
set -euo pipefail

seconds="${1:-20}"
case "$seconds" in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac

fuzz_dir="$(cd "$(dirname "$0")" && pwd)"
cd "$fuzz_dir/.."

tools="$HOME/.cache/geokv-tools"
export PATH="$tools/bin:$PATH"
# Its own target directory: the fuzz build (release, sanitizer flags) shares nothing with the
# main build in ~/.cache/geokv-target and must not evict it.
export CARGO_TARGET_DIR="${GEOKV_FUZZ_TARGET_DIR:-$HOME/.cache/geokv-fuzz-target}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz into $tools"
  cargo install --locked cargo-fuzz --root "$tools"
fi

targets=(value_decode batch_decode config_parse)

echo "== building fuzz targets (ASan, release with debug assertions)"
cargo fuzz build --release --debug-assertions --sanitizer address
bin_dir="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

work="$(mktemp -d "${TMPDIR:-/tmp}/geokv-fuzz.XXXXXX")"
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  echo "== fuzzing $t for ${seconds}s"
  # The first directory receives new inputs; the committed seeds are only read.
  # -timeout: one input taking 10 s is a finding (the default is 20 minutes).
  if "$bin_dir/$t" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" "fuzz/corpus/$t" \
    >"$work/$t/log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec)' "$work/$t/log" || true
  else
    failed+=("$t")
    echo "!! $t failed; full log: $work/$t/log"
    grep -E -A1 'panicked at' "$work/$t/log" | head -n 4 || true
    grep -E 'ERROR: |SUMMARY: |Test unit written' "$work/$t/log" || true
    for artifact in "$work/$t/artifacts"/*; do
      [ -e "$artifact" ] || continue
      echo "!! $t crashed on input: $artifact"
      echo "   replay (from the repository root):"
      echo "     PATH=$tools/bin:\$PATH RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo fuzz run -O -a $t $artifact"
      echo "   or with the binary just built: $bin_dir/$t $artifact"
    done
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} of ${#targets[@]} targets crashed: ${failed[*]} (inputs and logs in $work)"
  exit 1
fi
rm -rf "$work"
echo "fuzz: ${#targets[@]} targets ran ${seconds}s each without a crash"
