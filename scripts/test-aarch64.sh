#!/usr/bin/env bash
# The ARM kernels (NEON, dotprod) tested under qemu user-mode emulation on an x86 host:
# squish-quant cross-compiled for aarch64, its kernel, layout and activation tests run twice,
# with a CPU that has dotprod and one that has plain NEON only. Only those reach aarch64 code
# (src/aarch64, the ISA dispatch); the rest (quantizers, GPTQ, INT3/INT2, whose aarch64 path is
# the scalar one) is portable code the native run already covers, and took 17 of the step's
# 23 minutes under emulation. Installing the cross toolchain is best effort (it needs
# Debian's and rustup's servers); once installed, a failing test fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

target=aarch64-unknown-linux-gnu
have_tools() {
  command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null &&
    rustup target list --installed 2>/dev/null | grep -qx "$target"
}
if ! have_tools; then
  echo "test-aarch64: installing the cross toolchain (gcc-aarch64-linux-gnu, qemu-user, rust-std)" >&2
  { apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user >/dev/null &&
      rustup target add "$target" >/dev/null 2>&1; } || true
fi
if ! have_tools; then
  echo "test-aarch64: SKIPPED: the aarch64 cross toolchain could not be installed here" >&2
  exit 0
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
for cpu in max cortex-a53; do  # max has dotprod; the Cortex-A53 has plain NEON only
  echo "test-aarch64: squish-quant under qemu -cpu $cpu" >&2
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu" \
    cargo test --release --locked --target "$target" -p squish-quant -- tests::kernels tests::layout tests::act
done
