#!/usr/bin/env python3
"""The PyTorch + transformers side of squish's GPU benchmark (benchmarks/gpu/run.sh).

For a named real model shape, builds the model from its config with random bf16 weights on the
GPU (no download), optionally saves it as a Hugging Face directory for squish to load, then
times transformers `generate` (greedy, KV cache) on the same shape:

    python3 benchmarks/gpu/hf_shapes.py qwen2.5-7b --save /tmp/qwen7b --batches 1,8,32 -p 512 -n 64

Prints one JSON line per measurement: {"engine": "transformers", "shape", "batch",
"prefill_tok_s", "decode_tok_s"}. Decode tokens/s = batch * (n - 1) / (time of n new tokens -
time of 1 new token), so prefill is not counted in it. The weights are noise: only speed means
anything. The tokenizer saved beside the weights is the tiny test one (its ids fit the vocab).
"""

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import transformers

SHAPES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct (the LoRA benchmark's shape)
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=2,
    ),
    # meta-llama/Llama-3.2-1B
    "llama-3.2-1b": dict(
        model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        bos_token_id=0, eos_token_id=2,
    ),
    # Qwen/Qwen2.5-7B-Instruct
    "qwen2.5-7b": dict(
        model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=2,
    ),
}


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: a dry run of the script


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def build(shape, layers=None):
    cfg = dict(SHAPES[shape])
    if layers:
        cfg["num_hidden_layers"] = layers
    kind = cfg.pop("model_type")
    config = transformers.AutoConfig.for_model(kind, **cfg)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        try:
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        except TypeError:  # transformers 4.x
            model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    return model.eval()


def save(model, out: Path):
    model.save_pretrained(out, max_shard_size="4GB")
    tiny = Path(__file__).resolve().parents[2] / "tests/fixtures/tiny/llama"
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny / f, out / f)


def timed_generate(model, ids, new):
    sync()
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    sync()
    assert out.shape[1] == ids.shape[1] + new
    return time.perf_counter() - t


def copy_bandwidth():
    """GB/s of a device-to-device copy, counting bytes read and written (the memory-bound
    ceiling that decode's weight reads are held to)."""
    src = torch.empty(4 << 30, dtype=torch.uint8, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync()
    t = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    sync()
    gbs = 10 * 2 * src.numel() / (time.perf_counter() - t) / 1e9
    print(json.dumps({"copy_bandwidth_gb_s": round(gbs, 1), "counting": "read + written"}), flush=True)


def bench(model, shape, batches, p, n):
    vocab = model.config.vocab_size
    g = torch.Generator(device=DEVICE).manual_seed(1)
    for b in batches:
        ids = torch.randint(3, vocab, (b, p), device=DEVICE, generator=g)
        timed_generate(model, ids[:, :16], 4)  # warm-up
        first = min(timed_generate(model, ids, 1) for _ in range(2))
        full = timed_generate(model, ids, n)
        row = {
            "engine": "transformers " + transformers.__version__, "shape": shape, "batch": b, "prompt": p, "new": n,
            "prefill_tok_s": round(b * p / first, 1), "decode_tok_s": round(b * (n - 1) / (full - first), 2),
        }
        print(json.dumps(row), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("--save", type=Path, help="also write the model here as a Hugging Face directory")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("-p", type=int, default=512)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--layers", type=int, help="override the layer count (quick dry runs)")
    args = ap.parse_args()
    t = time.perf_counter()
    model = build(args.shape, args.layers)
    print(f"built {args.shape}: {sum(x.numel() for x in model.parameters()) / 1e9:.2f} B parameters in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    if args.save:
        t = time.perf_counter()
        save(model, args.save)
        print(f"saved to {args.save} in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    if not args.no_bench:
        copy_bandwidth()
        bench(model, args.shape, [int(b) for b in args.batches.split(",")], args.p, args.n)


if __name__ == "__main__":
    main()
