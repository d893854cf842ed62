#!/usr/bin/env python3
"""Writes a Hugging Face model directory with Llama-2-7B's shapes and random bf16 weights, to
measure what converting a 7B model costs (memory, time) on a machine without one:

    python3 benchmarks/make_7b_shaped.py /tmp/llama-7b-shaped            # 32 layers, 13.5 GB
    python3 benchmarks/make_7b_shaped.py /tmp/llama-7b-wide --layers 2    # same widths, 2 layers

Then, e.g.: /usr/bin/time -v squish convert /tmp/llama-7b-shaped --to int4 -o /tmp/7b-int4.
The weights are noise (quality numbers mean nothing); shapes, dtypes, sharding and the index
are what a real checkpoint has. The tokenizer is the tiny test one (its ids fit the vocab).
Writes one shard (~2 GB) at a time, so it needs little memory.
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTER, VOCAB, HEADS = 4096, 11008, 32000, 32


def tensors(layers):
    """(name, shape) in checkpoint order."""
    yield "model.embed_tokens.weight", (VOCAB, HIDDEN)
    for i in range(layers):
        p = f"model.layers.{i}"
        yield f"{p}.input_layernorm.weight", (HIDDEN,)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield f"{p}.self_attn.{proj}.weight", (HIDDEN, HIDDEN)
        yield f"{p}.post_attention_layernorm.weight", (HIDDEN,)
        yield f"{p}.mlp.gate_proj.weight", (INTER, HIDDEN)
        yield f"{p}.mlp.up_proj.weight", (INTER, HIDDEN)
        yield f"{p}.mlp.down_proj.weight", (HIDDEN, INTER)
    yield "model.norm.weight", (HIDDEN,)
    yield "lm_head.weight", (VOCAB, HIDDEN)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--shard-gb", type=float, default=2.0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    shards, current, size = [], {}, 0
    for name, shape in tensors(args.layers):
        t = torch.ones(shape) if len(shape) == 1 else torch.randn(shape) * 0.02
        current[name] = t.to(torch.bfloat16)
        size += current[name].numel() * 2
        if size >= args.shard_gb * 1e9:
            shards.append(current)
            save_file(current, args.out / f"shard-{len(shards)}.tmp")
            current, size = {}, 0
    if current:
        shards.append(current)
        save_file(current, args.out / f"shard-{len(shards)}.tmp")
    weight_map = {}
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        (args.out / f"shard-{i + 1}.tmp").rename(args.out / name)
        weight_map.update({k: name for k in shard})
        shard.clear()
    (args.out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": args.layers, "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS, "vocab_size": VOCAB, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "bos_token_id": 0, "eos_token_id": 2, "torch_dtype": "bfloat16",
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=1))
    tiny = Path(__file__).resolve().parent.parent / "tests/fixtures/tiny/llama"
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tiny / f, args.out / f)


if __name__ == "__main__":
    main()
