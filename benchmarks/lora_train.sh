#!/usr/bin/env bash
# LoRA training speed and memory on SmolLM2-135M: rank 8 on q/k/v/o, batch 4, rows of 512
# tokens cut from ../shared/corpora/dev-corpus.txt (a benchmark, not a test). Prints squish's
# own summary: tokens/s and peak resident memory.
#   benchmarks/lora_train.sh [MODEL] [STEPS]      (default: the fetched SmolLM2 GGUF, 8 steps)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
source "$root/scripts/env.sh"
model="${1:-${SQUISH_CACHE:-$HOME/.cache/squish}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
steps="${2:-8}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# 2,600 characters of English make more than 512 tokens; --max-seq cuts each row to 512.
python3 - "$root/../shared/corpora/dev-corpus.txt" "$((steps * 4))" > "$work/rows.jsonl" <<'PY'
import json, sys
text = open(sys.argv[1], encoding="utf-8").read()
for i in range(int(sys.argv[2])):
    print(json.dumps({"text": text[i * 2600:(i + 1) * 2600]}))
PY
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
"$CARGO_TARGET_DIR/release/squish" lora train "$model" --data "$work/rows.jsonl" \
  --rank 8 --batch 4 --max-seq 512 --epochs 1 -o "$work/adapter"
