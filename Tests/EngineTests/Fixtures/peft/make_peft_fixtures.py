#!/usr/bin/env python3
"""PEFT LoRA adapters and merged-model logits (golden fixtures) for nb's LoRA tests.

Generator only: nb never runs Python. It loads the tiny models of
Tests/EngineTests/Fixtures/reference/ (tiny-gpt2/, tiny-llama/), applies PEFT LoRA,
overwrites lora_B (zero at init) with seeded random values so the adapter changes the
logits, saves the adapter with `save_pretrained` and records the logits PEFT computes
(adapter active and after `merge_and_unload`) for one token sequence.

Reference stack: torch 2.3.1 (CPU), transformers 4.46.3, peft 0.12.0.
    ~/.cache/nb-baseline/bin/python Tests/EngineTests/Fixtures/peft/make_peft_fixtures.py

Writes into this script's folder:
    gpt2-adapter/{adapter_config.json, adapter_model.safetensors}   r=4, alpha=8, c_attn
    llama-adapter/{adapter_config.json, adapter_model.safetensors}  r=4, alpha=8, q_proj,v_proj
    peft-logits.json   per adapter: ids, logits with the adapter, logits merged, the wrapped
                       module names; per model: the module names PEFT's "all-linear" wraps.
save_pretrained's README.md (a model-card template) is deleted: nothing in it is data.
Deterministic: torch.manual_seed(0) before each model, one thread, PYTHONHASHSEED=0 (the
script re-executes itself with it) so target_modules, a set in PEFT, is listed in a fixed order.
"""

import json
import os
import platform
from pathlib import Path

import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # base_model_name_or_path is a bare name: never ask the hub
# PEFT writes target_modules from a Python set: fix string hashing so the order is reproducible.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

HERE = Path(__file__).resolve().parent
REFERENCE = HERE.parent / "reference"
IDS = [17, 255, 3, 128, 64, 299, 0]
VERSIONS = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "peft": peft.__version__,
    "safetensors": safetensors.__version__,
}
GENERATOR = "Tests/EngineTests/Fixtures/peft/make_peft_fixtures.py"

torch.set_num_threads(1)


def floats(t):
    return t.detach().to(torch.float32).cpu().tolist()


def load(name):
    model = AutoModelForCausalLM.from_pretrained(REFERENCE / name, torch_dtype=torch.float32)
    model.name_or_path = name  # recorded as base_model_name_or_path (not a local path)
    model.eval()
    return model


def lora_names(model):
    return sorted(n for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer))


def all_linear_names(name):
    model = load(name)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, cfg)
    return [n.removeprefix("base_model.model.") for n in lora_names(wrapped)]


def make(name, out_dir, targets, dropout):
    torch.manual_seed(0)
    model = load(name)
    with torch.no_grad():
        base_logits = model(torch.tensor([IDS])).logits[0]
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=targets,
                     bias="none", task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_B" in n:
                p.copy_(0.5 * torch.randn_like(p))
    wrapped.eval()
    with torch.no_grad():
        adapted = wrapped(torch.tensor([IDS])).logits[0]
    path = HERE / out_dir
    wrapped.save_pretrained(path)
    (path / "README.md").unlink(missing_ok=True)
    modules = [n.removeprefix("base_model.model.") for n in lora_names(wrapped)]
    merged_model = wrapped.merge_and_unload()
    with torch.no_grad():
        merged = merged_model(torch.tensor([IDS])).logits[0]
    diff = float((merged - adapted).abs().max())
    change = float((adapted - base_logits).abs().max())
    print(f"{name}: {len(modules)} LoRA modules, |merged - adapted| {diff:.2e}, |adapted - base| {change:.3f}")
    assert change > 0.05, "the adapter must visibly change the logits"
    return {"model": name, "adapter_dir": out_dir, "r": 4, "lora_alpha": 8, "lora_dropout": dropout,
            "target_modules": targets, "lora_modules": modules, "ids": IDS,
            "logits_adapted": floats(adapted), "logits_merged": floats(merged)}


def main():
    adapters = [
        make("tiny-gpt2", "gpt2-adapter", ["c_attn"], 0.05),
        make("tiny-llama", "llama-adapter", ["q_proj", "v_proj"], 0.1),
    ]
    all_linear = {name: all_linear_names(name) for name in ("tiny-gpt2", "tiny-llama")}
    out = {"generator": GENERATOR, "versions": VERSIONS, "adapters": adapters,
           "all_linear_modules": all_linear}
    with open(HERE / "peft-logits.json", "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print("wrote peft-logits.json")


if __name__ == "__main__":
    main()
