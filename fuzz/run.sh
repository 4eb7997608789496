#!/usr/bin/env bash
# Run Portcullis's cargo-fuzz targets for FUZZ_SECONDS each. Exit non-zero if any target
# finds a crash (panic, abort, timeout or out-of-memory), or if an input in
# fuzz/regressions/ still crashes.
#
#   fuzz/run.sh                                      # every target, 60 s each
#   FUZZ_SECONDS=600 fuzz/run.sh path_router credentials
#
# Environment:
#   FUZZ_SECONDS           seconds per target (default 60). libFuzzer first runs the whole
#                          corpus once, and it does not stop for the time limit while it
#                          does. For config_parser, with ~1 800 corpus entries, that pass
#                          takes 40-100 s.
#   FUZZ_SANITIZER         address (default) or none (about 2x faster, still finds panics)
#   FUZZ_SKIP_REGRESSIONS  1: do not replay fuzz/regressions/<target>/ first. Replaying
#                          fails the run while a reported bug is still unfixed.
#
# cargo-fuzz needs rustc flags that only nightly accepts (-Zsanitizer, sancov). With a
# stable toolchain, RUSTC_BOOTSTRAP=1 makes rustc accept them, so no nightly is needed.
# Everything is built once, up front, with `cargo fuzz build`, into fuzz/target. The
# first build compiles the whole dependency tree (Pingora etc.): about 35 min on
# 2 cores. After a change under src/, only portcullis is rebuilt (about 8 min). The
# libFuzzer binaries are then run directly, so an edit made during the run does not
# trigger another build.
# Crash inputs go to fuzz/artifacts/<target>/ and new corpus entries to
# fuzz/corpus/<target>/ (both gitignored). fuzz/seeds/<target>/ is read as a second corpus.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
FUZZ_SANITIZER="${FUZZ_SANITIZER:-address}"
ALL_TARGETS=(config_parser path_router credentials)
if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    TARGETS=("${ALL_TARGETS[@]}")
fi

export RUSTC_BOOTSTRAP=1
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# The same flags every time, so the next run does not rebuild.
BUILD_FLAGS=(--sanitizer "$FUZZ_SANITIZER" --codegen-units 16)
HOST="$(rustc -vV | sed -n 's/^host: //p')"
BIN_DIR="target/$HOST/release"

max_len() {
    case "$1" in
        config_parser) echo 8192 ;;
        path_router) echo 1024 ;;
        *) echo 4096 ;;
    esac
}

# One build for all targets: a per-target loop rebuilds portcullis again if src/ changes
# in between.
echo "== building fuzz targets: cargo fuzz build ${BUILD_FLAGS[*]}"
cargo fuzz build "${BUILD_FLAGS[@]}"

failed=()
for t in "${TARGETS[@]}"; do
    bin="$BIN_DIR/$t"
    mkdir -p "corpus/$t" "artifacts/$t"

    if [ "${FUZZ_SKIP_REGRESSIONS:-0}" != 1 ] && [ -d "regressions/$t" ]; then
        for f in "regressions/$t"/*; do
            [ -f "$f" ] || continue
            if "$bin" -runs=1 -rss_limit_mb=2560 \
                -timeout=25 "$f" >"artifacts/$t/replay-$(basename "$f").log" 2>&1; then
                echo "== $t: regression fixed: $f"
            else
                echo "!! $t: regression input still crashes: $f" \
                    "(fuzz/artifacts/$t/replay-$(basename "$f").log)"
                failed+=("$t:$(basename "$f")")
            fi
        done
    fi

    echo "== $t: fuzzing for ${FUZZ_SECONDS}s"
    args=(
        -artifact_prefix="artifacts/$t/"
        -max_total_time="$FUZZ_SECONDS"
        -max_len="$(max_len "$t")"
        -timeout=25
        -rss_limit_mb=2560
        -print_final_stats=1
    )
    if [ -f "dicts/$t.dict" ]; then
        args+=(-dict="dicts/$t.dict")
    fi
    if ! "$bin" "${args[@]}" "corpus/$t" "seeds/$t"; then
        echo "!! $t: crash found; inputs in fuzz/artifacts/$t/:"
        ls -1 "artifacts/$t" | grep -v '\.log$' || true
        failed+=("$t")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "FUZZ FAILED: ${failed[*]}"
    echo "reproduce: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${BUILD_FLAGS[*]} <target> <input>"
    exit 1
fi
echo "fuzz: ${#TARGETS[@]} targets, ${FUZZ_SECONDS}s each, no crash"
