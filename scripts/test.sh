#!/usr/bin/env bash
# The test command: fetches the real model once (cached outside the repo), then runs every
# test with the one build profile (release: optimised, incremental). Reuses a target dir
# outside the clone when one exists, so CI on a warm machine does not rebuild candle.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/env.sh
# Two tests at a time, one compute thread each: spin-waiting thread pools that share cores
# slow each other down far more than they gain.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}" RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}"

scripts/fetch-models.sh >/dev/null
cargo build --release --workspace --locked
cargo test --release --workspace --locked "$@"
# The ARM kernels, under emulation (skipped with a message where the toolchain cannot be had).
scripts/test-aarch64.sh
