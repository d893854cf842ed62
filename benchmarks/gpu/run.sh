#!/usr/bin/env bash
# squish's GPU check, one script: on a machine with an NVIDIA GPU (driver for CUDA 13, nvcc and
# PyTorch + transformers, no Rust, no network), from the repository root, with a squish binary
# built `--features cuda` (docs/cuda.md):
#
#   SQUISH_BIN=./squish SQUISH_TESTS="squish-model.cuda squish-model.lora_cuda squish-backend.cuda" benchmarks/gpu/run.sh [quick|nospeed]
#
# 0. the GPU test binaries named in SQUISH_TESTS (crate.test; built with --features cuda);
# 1. correctness: the tiny golden models (dense, INT4, INT8) evaluated on the CPU and on the
#    GPU: perplexities must agree within 1% (the GPU computes in bf16), greedy text is shown;
# 2. `squish serve --device cuda`: real /v1/chat/completions requests, plain and streamed;
# 3. speed: random-weight models of real shapes (Llama-3.2-1B, Qwen2.5-7B; hf_shapes.py
#    writes them), BF16 and INT4, prefill and batch 1/8/32 decode, beside transformers
#    `generate` on the same shapes in the same run. `quick` skips the 7B, `nospeed` all of 3;
# 4. LoRA: `squish lora train --device cuda` on a random SmolLM2-shaped model, BF16 and INT4
#    bases, beside peft + transformers training the same adapter shape (peft_train.py), then
#    `squish run --lora` on the GPU.
# Logs go to $OUT (default /tmp/gpu-check); the summary is $OUT/summary.txt. Exit status 1 when
# a correctness or serving check failed.
set -u
BIN="$(realpath "${SQUISH_BIN:-./squish}")"
OUT="${OUT:-/tmp/gpu-check}"
WORK="${WORK:-/tmp/gpu-work}"
mkdir -p "$OUT" "$WORK"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_CACHE_MAXSIZE=4294967296 RUST_LOG="${RUST_LOG:-warn}"
START=$(date +%s)
GPU="${SQUISH_DEVICE:-cuda}"  # cpu: a dry run of the script itself on a machine without a GPU
FAILED=0
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/summary.txt"; }
fail() { FAILED=1; say "FAIL: $*"; }

say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
say "squish: $("$BIN" --version 2>&1)"
"$BIN" run tests/fixtures/tiny/llama --device $GPU --raw --prompt "Once" -n 4 --temperature 0 > "$OUT/first-cuda-call.txt" 2>&1 \
  || fail "first CUDA run: $(tail -3 "$OUT/first-cuda-call.txt")"
say "first CUDA process done (includes the driver's one-time PTX compilation)"

# 0. the GPU tests (test binaries built here with --features cuda, see docs/cuda.md)
for t in ${SQUISH_TESTS:-}; do
  name=$(basename "$t")
  CARGO_MANIFEST_DIR="$PWD/crates/${name%%.*}" "$t" --nocapture --test-threads 1 > "$OUT/test-$name.log" 2>&1 \
    && say "ok tests $name: $(grep -E '^test result' "$OUT/test-$name.log")" \
    || fail "tests $name: $(grep -E -A2 'panicked' "$OUT/test-$name.log" | head -8)"
  grep -E "worst relative|skipped" "$OUT/test-$name.log" | tee -a "$OUT/summary.txt"
done

# 1. correctness on the tiny golden models
TEXT="$WORK/text.txt"
cat README.md docs/ARCHITECTURE.md > "$TEXT"
for m in llama qwen2 qwen3; do
  src="tests/fixtures/tiny/$m"
  for scheme in dense int4 int8 int3 int2; do
    dir="$src"
    if [ $scheme != dense ]; then
      dir="$WORK/$m-$scheme"
      [ -d "$dir" ] || "$BIN" convert "$src" --to $scheme -o "$dir" > "$OUT/convert-$m-$scheme.log" 2>&1 || { fail "convert $m $scheme"; continue; }
    fi
    for dev in cpu $GPU; do
      "$BIN" eval "$dir" --text "$TEXT" --ctx 64 --chunks 8 --device $dev --json > "$WORK/eval-$m-$scheme-$dev.json" 2> "$OUT/eval-$m-$scheme-$dev.err" \
        || fail "eval $m $scheme on $dev: $(tail -2 "$OUT/eval-$m-$scheme-$dev.err")"
      "$BIN" run "$dir" --device $dev --raw --prompt "The model" -n 12 --temperature 0 > "$WORK/run-$m-$scheme-$dev.txt" 2>/dev/null
    done
    python3 - "$WORK/eval-$m-$scheme-cpu.json" "$WORK/eval-$m-$scheme-$GPU.json" "$m $scheme" <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
try:
    cpu, gpu = (json.load(open(p)) for p in sys.argv[1:3])
except Exception as e:
    print(f"FAIL: {sys.argv[3]}: no perplexity ({e})"); sys.exit()
a, b = cpu["ppl"], gpu["ppl"]
rel = abs(a - b) / a
print(f"{'ok' if rel < 0.01 else 'FAIL:'} {sys.argv[3]}: perplexity cpu {a:.4f} cuda {b:.4f} (relative difference {rel:.2e})")
EOF
    say "  greedy cpu:  $(tr '\n' ' ' < "$WORK/run-$m-$scheme-cpu.txt")"
    say "  greedy cuda: $(tr '\n' ' ' < "$WORK/run-$m-$scheme-$GPU.txt")"
  done
done
grep -q "^FAIL" "$OUT/summary.txt" && FAILED=1

# 2. serving on the GPU
PORT=18111
"$BIN" serve --model "$WORK/llama-int4" --device $GPU --port $PORT --ctx 256 > "$OUT/serve.log" 2>&1 &
SERVE=$!
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 0.5; done
BODY='{"model":"llama-int4","messages":[{"role":"user","content":"Say something."}],"max_tokens":12,"temperature":0}'
curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' -d "$BODY" > "$OUT/chat.json" \
  && python3 -c "import json,sys; r=json.load(open(sys.argv[1])); c=r['choices'][0]; assert c['message']['content'] and r['usage']['completion_tokens']>0; print('ok serve chat:', repr(c['message']['content']), c['finish_reason'])" "$OUT/chat.json" | tee -a "$OUT/summary.txt" \
  || fail "serve chat: $(cat "$OUT/chat.json" 2>/dev/null | head -c 300)"
curl -sfN "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' -d "${BODY%\}},\"stream\":true}" > "$OUT/chat-stream.txt" \
  && grep -q '^data: \[DONE\]' "$OUT/chat-stream.txt" && say "ok serve stream: $(grep -c '^data: {' "$OUT/chat-stream.txt") chunks" \
  || fail "serve stream: $(head -c 300 "$OUT/chat-stream.txt" 2>/dev/null)"
kill -TERM $SERVE; wait $SERVE 2>/dev/null
say "serve exited with $? after SIGTERM"

# 3. speed, beside transformers
bench_shape() {
  local shape=$1 dir="$WORK/$1"
  say "shape $shape: transformers build, save and generate"
  python3 benchmarks/gpu/hf_shapes.py "$shape" --save "$dir" --batches 1,8,32 -p 512 -n 64 > "$OUT/hf-$shape.jsonl" 2> "$OUT/hf-$shape.err" \
    || fail "transformers $shape: $(tail -3 "$OUT/hf-$shape.err")"
  cat "$OUT/hf-$shape.jsonl" | tee -a "$OUT/summary.txt"
  for m in "$dir" "$dir-int4"; do
    if [ "$m" = "$dir-int4" ]; then
      "$BIN" convert "$dir" --to int4 -o "$dir-int4" > "$OUT/convert-$shape.log" 2>&1 || fail "convert $shape: $(tail -2 "$OUT/convert-$shape.log")"
      say "converted $shape to int4: $(grep -E 'bits/weight|size|time' "$OUT/convert-$shape.log" | tr -s ' ' | tr '\n' ';')"
    fi
    "$BIN" bench "$m" --device $GPU -p 512 -n 64 -r 2 --streams 8,32 > "$OUT/bench-$(basename "$m").md" 2> "$OUT/bench-$(basename "$m").err" \
      || fail "bench $m: $(tail -3 "$OUT/bench-$(basename "$m").err")"
    cat "$OUT/bench-$(basename "$m").md" | tee -a "$OUT/summary.txt"
  done
  rm -rf "$dir" "$dir-int4"
}
# 4. LoRA training on the GPU, beside peft + transformers on the same shape and adapter
lora_stage() {
  local dir="$WORK/smollm2-135m" data="$WORK/lora-train.jsonl" held="$WORK/lora-eval.jsonl"
  python3 benchmarks/gpu/hf_shapes.py smollm2-135m --save "$dir" --no-bench 2> "$OUT/hf-smollm2.err" \
    || { fail "smollm2-135m shape: $(tail -3 "$OUT/hf-smollm2.err")"; return; }
  # 80 training rows and 8 held-out ones of this repository's prose, each over 512 tokens.
  python3 - "$data" "$held" <<'EOF'
import json, sys
text = open("README.md").read() + open("docs/ARCHITECTURE.md").read()
for path, rows, offset in ((sys.argv[1], 80, 0), (sys.argv[2], 8, 500)):
    with open(path, "w") as f:
        for i in range(rows):
            start = (i * 997 + offset) % (len(text) - 4000)
            f.write(json.dumps({"text": text[start:start + 4000]}) + "\n")
EOF
  python3 benchmarks/gpu/peft_train.py smollm2-135m --batch 4 --seq 512 --steps 20 > "$OUT/peft.jsonl" 2> "$OUT/peft.err" \
    || fail "peft: $(tail -3 "$OUT/peft.err")"
  cat "$OUT/peft.jsonl" | tee -a "$OUT/summary.txt"
  "$BIN" convert "$dir" --to int4 -o "$dir-int4" > "$OUT/convert-smollm2.log" 2>&1 || fail "convert smollm2-135m: $(tail -2 "$OUT/convert-smollm2.log")"
  for m in "$dir" "$dir-int4"; do
    local name=$(basename "$m")
    "$BIN" lora train "$m" --device $GPU --data "$data" --eval-data "$held" --batch 4 --max-seq 512 -o "$WORK/adapter-$name" > "$OUT/lora-$name.log" 2>&1 \
      && say "ok squish lora train $name: $(grep -E '^(base|epoch|saved)' "$OUT/lora-$name.log" | tr -s ' ' | tr '\n' ';')" \
      || fail "lora train $name: $(tail -3 "$OUT/lora-$name.log")"
  done
  "$BIN" run "$dir-int4" --device $GPU --lora "$WORK/adapter-smollm2-135m-int4" --raw --prompt "The model" -n 8 --temperature 0 > "$OUT/lora-run.txt" 2> "$OUT/lora-run.err" \
    && say "ok squish run --lora on the GPU: $(tr '\n' ' ' < "$OUT/lora-run.txt")" || fail "run --lora: $(tail -2 "$OUT/lora-run.err")"
  rm -rf "$dir" "$dir-int4"
}
lora_stage

[ "${1:-}" = nospeed ] || bench_shape llama-3.2-1b
[ -n "${1:-}" ] || bench_shape qwen2.5-7b
say "done, failed=$FAILED"
exit $FAILED
