#!/usr/bin/env python3
"""The peer of `squish lora train --device cuda` in squish's GPU check (benchmarks/gpu/run.sh):
peft + transformers LoRA training on a real model shape with random bf16 weights (no download),
the same adapter (rank, alpha, targets), batch and sequence length:

    python3 benchmarks/gpu/peft_train.py smollm2-135m --batch 4 --seq 512 --steps 20

Prints one JSON line: {"engine": "peft ...", "shape", "batch", "seq", "steps", "tokens_per_s",
"peak_gpu_gb"}. The base is bf16 and so are the adapters (peft follows the base's dtype);
AdamW at 2e-4; the first two steps are a warm-up and not timed. Peak memory is PyTorch's
largest allocation (torch.cuda.max_memory_allocated), its cache and context not counted.
"""

import argparse
import json
import time

import peft
import torch
import transformers

from hf_shapes import DEVICE, build, sync


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16.0)
    ap.add_argument("--targets", default="q_proj,k_proj,v_proj,o_proj")
    args = ap.parse_args()
    model = build(args.shape).train()
    config = peft.LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=args.targets.split(","))
    model = peft.get_peft_model(model, config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    g = torch.Generator(device=DEVICE).manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), device=DEVICE, generator=g)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(2):
        step()
    sync()
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    secs = time.perf_counter() - t
    print(json.dumps({
        "engine": f"peft {peft.__version__} + transformers {transformers.__version__}", "shape": args.shape,
        "batch": args.batch, "seq": args.seq, "steps": args.steps, "rank": args.rank, "targets": args.targets,
        "tokens_per_s": round(args.steps * args.batch * args.seq / secs, 1), "last_loss": round(loss.item(), 4),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if DEVICE == "cuda" else None,
    }), flush=True)


if __name__ == "__main__":
    main()
