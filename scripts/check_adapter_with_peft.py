#!/usr/bin/env python3
"""Checks that a LoRA adapter saved by nb loads in Python's PEFT and gives nb's logits.

Not part of the build or the tests (nb never runs Python); a manual interoperability check,
run in the reference venv (torch, transformers with GGUF support, peft):

    .build/release/nb top-tokens --model smollm2 --adapter DIR --prompt "What is FHE?" --k 5 --json > /tmp/nb.json
    ~/.cache/nb-baseline/bin/python scripts/check_adapter_with_peft.py DIR /tmp/nb.json

Loads SmolLM2-135M-Instruct from the GGUF that `make setup` downloads (dequantized by
transformers), applies the adapter with `PeftModel.from_pretrained`, and prints PEFT's and
nb's logits for nb's top tokens at the prompt's last position.
"""
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

adapter_dir, nb_json = sys.argv[1], sys.argv[2]
cache = os.environ.get("NB_CACHE", os.path.expanduser("~/.cache/nb"))
model_dir = os.path.join(cache, "models", "smollm2-135m-instruct")
torch.set_num_threads(1)
base = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", torch_dtype=torch.float32)
base.lm_head.weight = base.model.embed_tokens.weight  # the GGUF's head is tied; transformers leaves it unset
nb = json.load(open(nb_json))
ids = torch.tensor([nb["prompt_ids"]])
model = PeftModel.from_pretrained(base, adapter_dir)
with torch.no_grad():
    logits = model(ids).logits[0, -1]
worst = 0.0
for t in nb["top"]:
    theirs = float(logits[t["id"]])
    worst = max(worst, abs(theirs - t["logit"]))
    print(f'{t["id"]:6d} {t["token"]!r:16} nb {t["logit"]:10.4f}  peft {theirs:10.4f}')
print(f"max |difference| {worst:.2e}")
sys.exit(0 if worst < 1e-3 else 1)
