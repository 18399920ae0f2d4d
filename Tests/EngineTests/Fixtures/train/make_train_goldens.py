#!/usr/bin/env python3
"""LoRA fine-tuning steps from PyTorch + PEFT (golden fixtures) for nb's training tests.

Generator only: nb never runs Python. It fine-tunes the tiny models of
Tests/EngineTests/Fixtures/reference/ (tiny-gpt2/, tiny-llama/) with PEFT LoRA for a few
optimizer steps and records what a faithful reimplementation must reproduce: micro-batch
losses, learning rates, gradient norms, the accumulated gradients of the first two steps
and the LoRA weights after the last step.

Reference stack: torch 2.3.1 (CPU, 1 thread), transformers 4.46.3, peft 0.12.0.
    ~/.cache/nb-baseline/bin/python Tests/EngineTests/Fixtures/train/make_train_goldens.py

Per case ("gpt2", "llama"):
  * load the model in float32 with eager attention, model.train() (every dropout in the
    configs is 0; LoRA dropout is 0 as well, so no random numbers are drawn in training);
  * torch.manual_seed(0), get_peft_model: lora_A keeps PEFT's kaiming-uniform init,
    every lora_B (zero at init, which would make the first lora_A gradients zero) is
    overwritten with 0.1 * N(0, 1) from a seeded torch.Generator, in named_parameters order;
  * save that starting adapter with save_pretrained into <case>-init/ (README.md deleted);
  * torch.optim.AdamW over the trainable (LoRA) parameters in named_parameters order
    (foreach=False: the single-tensor loop, which is also torch's CPU default), a
    transformers schedule, and per optimizer step, 2 micro-batches of 2 rows x 12 tokens:
        for each micro-batch: loss_mb = model(input_ids, attention_mask, labels).loss
                              (loss_mb / 2).backward()
        step loss = mean of the micro-batch losses
        lr        = scheduler.get_last_lr()[0]            (the rate this step uses)
        grad_norm = clip_grad_norm_(params, max_norm)     (total norm before clipping)
        optimizer.step(); scheduler.step(); optimizer.zero_grad()
Micro-batches: ids drawn from numpy's PCG64 (seeded) in 3..<300, so no special id (0, 1, 2)
occurs as a real token; rows are right-padded with the model's eos id; attention_mask 1 on
real tokens, 0 on padding; labels = ids with -100 on a 3-4 token "question" prefix and on
padding. HF shifts labels inside the model and averages over the non-ignored positions of
the micro-batch.

Writes into this script's folder:
    gpt2-init/, llama-init/    adapter_config.json + adapter_model.safetensors (start weights)
    train-golden.json          see README.md for the layout
Tensor floats are float32 values written as their shortest round-trip decimal (parse as
Float to get the exact bits); learning rates are Python floats (doubles).
Deterministic: fixed seeds, one thread, PYTHONHASHSEED=0 (the script re-executes itself with
it) so that target_modules, a set in PEFT, is saved in a fixed order.
"""

import json
import os
import platform
import re
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # base_model_name_or_path is a bare name: never ask the hub
# PEFT writes target_modules from a Python set: fix string hashing so the order is reproducible.
if os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable] + sys.argv)

import numpy as np
import peft
import safetensors
import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import (AutoModelForCausalLM, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent
GENERATOR = "Tests/EngineTests/Fixtures/train/make_train_goldens.py"
VERSIONS = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "peft": peft.__version__,
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}
ROWS = 2           # rows per micro-batch
WIDTH = 12         # tokens per row (padded)
ACCUMULATION = 2   # micro-batches per optimizer step
VOCAB = 300
FIRST_ID = 3       # real tokens are drawn from FIRST_ID..<VOCAB (no bos/eos/pad ids)

CASES = [
    {
        "name": "gpt2", "model": "tiny-gpt2", "targets": ["c_attn"],
        "lr": 2e-3, "weight_decay": 0.01, "betas": (0.9, 0.999), "eps": 1e-8,
        "schedule": "linear", "warmup": 0, "steps": 3, "max_grad_norm": 1.0,
        "b_seed": 101, "data_seed": 201,
    },
    {
        "name": "llama", "model": "tiny-llama", "targets": "all-linear",
        "lr": 1e-2, "weight_decay": 0.01, "betas": (0.9, 0.999), "eps": 1e-8,
        "schedule": "cosine", "warmup": 1, "steps": 4, "max_grad_norm": 0.5,
        "b_seed": 102, "data_seed": 202,
    },
]
# The model families beyond the first two (`--families`, written to train-golden-families.json
# so the first file keeps the bytes it was made with under torch 2.3.1): Llama 3.x with its
# llama3 rope scaling, explicit head_dim 24 and tied head.
FAMILY_CASES = [
    {
        "name": "llama3", "model": "tiny-llama3", "targets": "all-linear",
        "lr": 1e-2, "weight_decay": 0.01, "betas": (0.9, 0.999), "eps": 1e-8,
        "schedule": "cosine", "warmup": 1, "steps": 3, "max_grad_norm": 0.5,
        "b_seed": 103, "data_seed": 203,
    },
]
GRADIENT_STEPS = (1, 2)  # 1-based optimizer steps whose accumulated gradients are recorded

torch.set_num_threads(1)


def f32(x):
    """A float32 value as the Python float of its shortest round-trip decimal."""
    return float(str(np.float32(x)))


def flat(t):
    return [f32(v) for v in t.detach().to(torch.float32).reshape(-1).tolist()]


def tensor_entry(t):
    return {"shape": list(t.shape), "values": flat(t)}


def saved_name(name):
    """PEFT's parameter name as saved in adapter_model.safetensors (adapter name removed)."""
    return re.sub(r"\.default(\.weight)$", r"\1", name)


def micro_batches(rng, count, eos):
    """`count` micro-batches of ROWS x WIDTH, right-padded with eos."""
    out = []
    for _ in range(count):
        lengths = [WIDTH, int(rng.integers(7, WIDTH))]   # one full row, one shorter (7..11)
        if rng.integers(0, 2):
            lengths.reverse()
        tokens, labels, mask = [], [], []
        for n in lengths:
            prefix = int(rng.integers(3, 5))  # 3 or 4 "question" tokens
            ids = [int(v) for v in rng.integers(FIRST_ID, VOCAB, size=n)]
            tokens.append(ids + [eos] * (WIDTH - n))
            labels.append([-100] * prefix + ids[prefix:] + [-100] * (WIDTH - n))
            mask.append([1] * n + [0] * (WIDTH - n))
        out.append({"tokens": tokens, "labels": labels, "attention_mask": mask})
    return out


def make_scheduler(opt, case):
    make = {"linear": get_linear_schedule_with_warmup,
            "cosine": get_cosine_schedule_with_warmup}[case["schedule"]]
    return make(opt, num_warmup_steps=case["warmup"], num_training_steps=case["steps"])


def run(case):
    name = case["name"]
    model = AutoModelForCausalLM.from_pretrained(FIXTURES / "reference" / case["model"],
                                                 torch_dtype=torch.float32,
                                                 attn_implementation="eager")
    model.name_or_path = case["model"]  # recorded as base_model_name_or_path (not a local path)
    eos = model.config.eos_token_id
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=case["targets"],
                     bias="none", task_type="CAUSAL_LM")
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrapped = get_peft_model(model, cfg)
    peft_warnings = sorted({str(w.message) for w in caught})
    for w in peft_warnings:
        print(f"{name}: warning from get_peft_model: {w}")

    g = torch.Generator().manual_seed(case["b_seed"])
    with torch.no_grad():
        for n, p in wrapped.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))

    init_dir = HERE / f"{name}-init"
    wrapped.save_pretrained(init_dir)
    (init_dir / "README.md").unlink(missing_ok=True)

    named = [(n, p) for n, p in wrapped.named_parameters() if p.requires_grad]
    assert named and all("lora_" in n for n, _ in named), "only LoRA parameters may train"
    saved = load_file(init_dir / "adapter_model.safetensors")
    assert sorted(saved) == sorted(saved_name(n) for n, _ in named), "saved names differ"
    for n, p in named:
        assert torch.equal(saved[saved_name(n)], p.detach()), f"saved {n} differs"
    with open(init_dir / "adapter_config.json") as f:
        saved_config = json.load(f)

    params = [p for _, p in named]
    opt = torch.optim.AdamW(params, lr=case["lr"], betas=case["betas"], eps=case["eps"],
                            weight_decay=case["weight_decay"], foreach=False)
    sched = make_scheduler(opt, case)
    rng = np.random.default_rng(case["data_seed"])
    data = micro_batches(rng, case["steps"] * ACCUMULATION, eos)

    wrapped.train()
    steps, gradients = [], []
    for k in range(case["steps"]):
        batches = data[k * ACCUMULATION:(k + 1) * ACCUMULATION]
        losses = []
        for mb in batches:
            out = wrapped(input_ids=torch.tensor(mb["tokens"]),
                          attention_mask=torch.tensor(mb["attention_mask"]),
                          labels=torch.tensor(mb["labels"]), use_cache=False)
            (out.loss / ACCUMULATION).backward()
            losses.append(out.loss.item())
        for n, p in named:
            assert p.grad is not None and p.grad.abs().max() > 0, f"step {k + 1}: zero gradient for {n}"
        if k + 1 in GRADIENT_STEPS:
            gradients.append({"step": k + 1,
                              "gradients": {saved_name(n): tensor_entry(p.grad) for n, p in named}})
        lr = sched.get_last_lr()[0]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=case["max_grad_norm"]).item()
        opt.step()
        sched.step()
        opt.zero_grad()
        step_loss = sum(losses) / len(losses)
        clipped = norm > case["max_grad_norm"]
        steps.append({
            "step": k + 1,
            "micro_batches": [dict(mb,
                                   label_count=sum(v != -100 for row in mb["labels"] for v in row[1:]))
                              for mb in batches],
            "micro_batch_losses": [f32(l) for l in losses],
            "loss": step_loss,
            "lr": lr,
            "grad_norm": f32(norm),
            "clipped": clipped,
        })
        print(f"{name} step {k + 1}: losses {[f'{l:.6f}' for l in losses]} mean {step_loss:.6f} "
              f"lr {lr:.6g} grad_norm {norm:.6f}{' (clipped)' if clipped else ''}")
    assert any(s["clipped"] for s in steps) or name == "gpt2", f"{name}: clipping never triggered"

    final = {saved_name(n): tensor_entry(p) for n, p in named}
    lora_modules = sorted(n.removeprefix("base_model.model.") for n, m in wrapped.named_modules()
                          if isinstance(m, peft.tuners.lora.LoraLayer))
    return {
        "name": name,
        "model_dir": f"reference/{case['model']}",
        "model_class": type(model).__name__,
        "attn_implementation": "eager",
        "init_adapter_dir": f"train/{name}-init",
        "eos_token_id": eos,
        "pad_token_id": eos,
        "lora": {"r": 4, "lora_alpha": 8, "scaling": 8 / 4, "lora_dropout": 0.0, "bias": "none",
                 "target_modules": case["targets"],
                 "saved_target_modules": saved_config["target_modules"],
                 "fan_in_fan_out": saved_config["fan_in_fan_out"],
                 "lora_B_init": f"0.1 * torch.randn(shape, generator=torch.Generator().manual_seed({case['b_seed']})) "
                                "per lora_B in named_parameters order"},
        "lora_modules": lora_modules,
        "trainable_parameters": [{"name": saved_name(n), "shape": list(p.shape)} for n, p in named],
        "optimizer": {"kind": "AdamW", "lr": case["lr"], "betas": list(case["betas"]),
                      "eps": case["eps"], "weight_decay": case["weight_decay"]},
        "schedule": {"kind": case["schedule"], "num_warmup_steps": case["warmup"],
                     "num_training_steps": case["steps"]},
        "max_grad_norm": case["max_grad_norm"],
        "gradient_accumulation_steps": ACCUMULATION,
        "micro_batch_shape": [ROWS, WIDTH],
        "data_seed": case["data_seed"],
        "peft_warnings": peft_warnings,
        "steps": steps,
        "gradients": gradients,
        "final_parameters": final,
    }


def main():
    families = "--families" in sys.argv[1:]
    cases = [run(c) for c in (FAMILY_CASES if families else CASES)]
    out = {"generator": GENERATOR, "versions": VERSIONS, "cases": cases}
    path = HERE / ("train-golden-families.json" if families else "train-golden.json")
    with open(path, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path.name} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
