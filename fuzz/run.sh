#!/usr/bin/env bash
# Runs every cargo-fuzz target of confab-sync for a bounded time, starting from the committed seed
# corpus, and fails if any target crashes (panic, failed invariant, sanitizer report, timeout, OOM).
#
#   CONFAB_FUZZ_SECONDS    seconds per target (default 20)
#   CONFAB_FUZZ_SANITIZER  none (default) | address   (passed to `cargo fuzz -s`). The fuzzed code
#                          is safe Rust, so panics, failed invariants, debug assertions and
#                          overflow checks (on in both) are what fail; AddressSanitizer works but
#                          makes the from-scratch build ~2 min longer on the 2-core machine.
#   CONFAB_FUZZ_TARGETS    space-separated subset (default: every target `cargo fuzz list` shows)
#   CONFAB_FUZZ_TARGET_DIR build directory (default: $CARGO_TARGET_DIR, else
#                          ~/.cache/confab-sync/fuzz-target). Kept outside the checkout so a run from
#                          a fresh clone on the same machine (CI) rebuilds only confab-sync and the
#                          targets (~1 min) instead of the instrumented dependency tree (~4 min).
#
# Only stable Rust is needed: cargo-fuzz asks for nightly flags (-Zsanitizer), which stable rustc
# accepts under RUSTC_BOOTSTRAP=1. cargo-fuzz is installed from crates.io when missing.
# New inputs found during the run go to a temporary directory, never into fuzz/corpus; crashing
# inputs are kept under fuzz/artifacts/<target>/ (git-ignored) and their path is printed.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${CONFAB_FUZZ_SECONDS:-20}"
sanitizer="${CONFAB_FUZZ_SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz from crates.io" >&2
  start=$(date +%s)
  cargo install cargo-fuzz --locked --version '^0.13' >&2
  echo "fuzz: cargo-fuzz installed in $(( $(date +%s) - start )) s" >&2
fi

export CARGO_TARGET_DIR="${CONFAB_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/confab-sync/fuzz-target}}"

work="$(mktemp -d "${TMPDIR:-/tmp}/confab-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# The targets write their scratch files under $TMPDIR: keep them in RAM when we can.
scratch="$work/tmp"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  scratch="$(mktemp -d /dev/shm/confab-fuzz.XXXXXX)"
  trap 'rm -rf "$work" "$scratch"' EXIT
fi
mkdir -p "$scratch"

if [ -n "${CONFAB_FUZZ_TARGETS:-}" ]; then
  read -r -a targets <<<"$CONFAB_FUZZ_TARGETS"
else
  mapfile -t targets < <(cargo fuzz list)
fi

start=$(date +%s)
cargo fuzz build -s "$sanitizer" >&2
echo "fuzz: targets built in $(( $(date +%s) - start )) s" >&2

failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/corpus/$t"
  echo "fuzz: $t for ${seconds}s" >&2
  # First corpus dir (writable, temporary) receives new inputs; the committed seeds are read only.
  if ! TMPDIR="$scratch" cargo fuzz run -s "$sanitizer" "$t" "$work/corpus/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 2>"$work/$t.log"; then
    tail -n 60 "$work/$t.log" >&2
    failed+=("$t")
  else
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$work/$t.log" | sed "s/^/fuzz: $t: /" >&2 || true
  fi
done

# The closing line in the plain "N passed, N failed" form CI reads.
echo "fuzz: $(( ${#targets[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashed: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
