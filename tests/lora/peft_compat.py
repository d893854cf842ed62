#!/usr/bin/env python3
"""Hugging Face peft + transformers on the other side of squish's LoRA adapters (driven by
crates/squish-model/tests/lora_peft.rs):

  logits  BASE ADAPTER TOKENS OUT   the logits (float32, every position) of BASE with ADAPTER
                                    loaded by peft.PeftModel.from_pretrained (ADAPTER "-": BASE
                                    alone, e.g. a merged model), as JSON
  make    BASE OUT                  a random adapter (r=4, alpha=8; q_proj, v_proj, up_proj,
                                    down_proj; both factors random) saved by peft into OUT
"""
import json
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM


def base(path):
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()


def logits(base_path, adapter, tokens, out):
    model = base(base_path) if adapter == "-" else PeftModel.from_pretrained(base(base_path), adapter).eval()
    ids = torch.tensor([[int(t) for t in tokens.split(",")]])
    with torch.no_grad():
        values = model(input_ids=ids).logits[0].tolist()
    with open(out, "w") as f:
        json.dump(values, f)


def make(base_path, out):
    torch.manual_seed(11)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                        lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base(base_path), config)
    model.save_pretrained(out)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"logits": logits, "make": make}[cmd](*args)
