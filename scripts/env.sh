# Sourced by the scripts: one target dir outside the clone, shared by every checkout on the
# machine, so the cold candle build happens once.
if [ -z "${CARGO_TARGET_DIR:-}" ]; then
  export CARGO_TARGET_DIR="${SQUISH_TARGET_DIR:-$HOME/.cache/squish/target}"
fi
mkdir -p "$CARGO_TARGET_DIR"
