#!/usr/bin/env bash
# `make fuzz`: coverage-guided fuzzing with AFL++ on stable Rust (afl.rs), each target in
# fuzz/src/targets.rs for FUZZ_SECONDS (default 300) on one core, then a table of what was
# tried and found. Installs cargo-afl (which builds its own AFL++) under .tools on first use.
# Inputs that crash or hang a target are copied to fuzz/findings/<target>/ and make the
# command fail; fix the cause, then move the input to fuzz/regressions/<target>/, where
# `make test` replays it for good. Each run starts from the seeds, the regressions and the
# corpus earlier runs grew (kept in target/fuzz-corpus/<target>/, outside git: thousands of
# machine-made files), so fuzzing time adds up across runs instead of starting over.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
seconds=${FUZZ_SECONDS:-300}
targets=${FUZZ_TARGETS:-decode multipart url_guard prefix_filter collection_spec}
export PATH="$root/.tools/bin:$PATH" XDG_DATA_HOME="$root/.tools/share"

if ! cargo afl --version >/dev/null 2>&1; then
    echo "==> installing cargo-afl (AFL++ built from its bundled source; a few minutes)"
    cargo install cargo-afl --version 0.18.2 --locked --root "$root/.tools"
fi
if [ ! -d "$XDG_DATA_HOME/afl.rs" ]; then
    cargo afl config --build --force
fi

# The commit the targets are built from, named now: a commit made while they run is not theirs.
run_line="make fuzz, FUZZ_SECONDS=$seconds, commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with changes)'), $(date -u +%Y-%m-%d)"

echo "==> building the instrumented targets (its own target dir: every crate is instrumented)"
(cd fuzz && CARGO_TARGET_DIR="$root/target/fuzz" cargo afl build --release --locked)
binary="$root/target/fuzz/release/fuzz"

results=()
failed=0
for target in $targets; do
    out="$root/target/fuzz-out/$target"
    grown="$root/target/fuzz-corpus/$target"
    inputs="$root/target/fuzz-in/$target"
    rm -rf "$out" "$inputs"
    mkdir -p "$out" "$grown" "$inputs"
    cp "fuzz/seeds/$target"/* "$inputs/"
    for kept in "fuzz/regressions/$target"/* "$grown"/*; do
        [ -e "$kept" ] && cp "$kept" "$inputs/"
    done
    echo "==> fuzzing $target for ${seconds}s from $(ls "$inputs" | wc -l) inputs (seeds, regressions, grown corpus)"
    FUZZ_TARGET=$target AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_NO_CRASH_README=1 \
        AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
        cargo afl fuzz -i "$inputs" -o "$out" -V "$seconds" "$binary" >"$out.log" 2>&1 || {
        echo "afl-fuzz stopped with an error on $target; the end of its log:" >&2
        tail -20 "$out.log" >&2
        failed=1
        continue
    }
    stats="$out/default/fuzzer_stats"
    value() { sed -n "s/^$1 *: *//p" "$stats"; }
    # Keep what this run grew for the next one.
    for queued in "$out/default/queue"/id:*; do
        [ -e "$queued" ] && cp "$queued" "$grown/$(sha256sum "$queued" | cut -c1-16)"
    done
    found=0
    for kind in crashes hangs; do
        for input in "$out/default/$kind"/id:*; do
            [ -e "$input" ] || continue
            mkdir -p "fuzz/findings/$target"
            cp "$input" "fuzz/findings/$target/$kind-$(basename "$input" | cut -d, -f1 | tr ':' '-')"
            found=$((found + 1))
        done
    done
    [ "$found" -eq 0 ] || failed=1
    results+=("$(printf '| %-15s | %8s | %12s | %10s | %7s | %8s | %7s | %5s |' "$target" "$(value run_time)" \
        "$(value execs_done)" "$(value execs_per_sec)" "$(value corpus_count)" "$(value bitmap_cvg)" \
        "$(value saved_crashes)" "$(value saved_hangs)")")
done

echo
echo "$run_line"
echo
echo "| target          | seconds  | inputs tried | per second | corpus  | coverage | crashes | hangs |"
echo "|-----------------|----------|--------------|------------|---------|----------|---------|-------|"
printf '%s\n' "${results[@]}"
if [ "$failed" -ne 0 ]; then
    echo "findings copied to fuzz/findings/; replay one with: FUZZ_TARGET=<target> $binary < <file>" >&2
    exit 1
fi
