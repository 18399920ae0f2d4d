#!/usr/bin/env python3
"""AdamW, learning-rate schedules and gradient clipping from PyTorch (golden fixtures).

Generator only: nb never runs Python.
    ~/.cache/nb-baseline/bin/python Tests/EngineTests/Fixtures/optim/make_optim_fixtures.py
Reference stack: torch 2.3.1 (CPU, single-tensor AdamW), transformers 4.46.3.

Writes optim-golden.json next to this script:
  "schedules": transformers' get_linear_schedule_with_warmup and
      get_cosine_schedule_with_warmup (num_cycles 0.5) multipliers for every step
      0...total of a few (warmup, total) pairs, read back from LambdaLR after each step.
  "runs": per run, three float32 parameter tensors (shapes [3, 4], [5], [2, 3]) and five steps
      of random gradients (some scaled up so that clipping bites); each step does
          clip_grad_norm_(params, max_norm)  (when max_norm is not null)
          optimizer.step(); scheduler.step()
      and records the learning rate used, the total gradient norm before clipping, the
      parameters after the step and AdamW's exp_avg / exp_avg_sq.
Every float is a float32 value written exactly (float(np.float32)), except the schedule
multipliers and learning rates, which are Python floats (doubles).
"""

import json
import platform
from pathlib import Path

import torch
import transformers
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

HERE = Path(__file__).resolve().parent
GENERATOR = "Tests/EngineTests/Fixtures/optim/make_optim_fixtures.py"
SHAPES = [[3, 4], [5], [2, 3]]
STEPS = 5

torch.set_num_threads(1)


def floats(t):
    return t.detach().to(torch.float32).reshape(-1).tolist()


def schedule_values(kind, warmup, total):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    make = get_linear_schedule_with_warmup if kind == "linear" else get_cosine_schedule_with_warmup
    sched = make(opt, num_warmup_steps=warmup, num_training_steps=total)
    values = []
    for _ in range(total + 1):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return {"kind": kind, "warmup": warmup, "total": total, "multipliers": values}


def run(name, seed, lr, weight_decay, betas, eps, schedule, warmup, total, max_norm, grad_scales):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    initial = [floats(p) for p in params]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    make = get_linear_schedule_with_warmup if schedule == "linear" else get_cosine_schedule_with_warmup
    sched = make(opt, num_warmup_steps=warmup, num_training_steps=total)
    steps = []
    for k in range(STEPS):
        grads = [torch.randn(s, generator=g) * grad_scales[k] for s in SHAPES]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        raw = [floats(gr) for gr in grads]
        norm = None
        if max_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        clipped = [floats(p.grad) for p in params]
        used_lr = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
        state = [opt.state[p] for p in params]
        steps.append({
            "gradients": raw, "clipped_gradients": clipped, "grad_norm": norm, "lr": used_lr,
            "params": [floats(p) for p in params],
            "exp_avg": [floats(s["exp_avg"]) for s in state],
            "exp_avg_sq": [floats(s["exp_avg_sq"]) for s in state],
            "step": [float(s["step"]) for s in state],
        })
        print(f"{name} step {k}: lr {used_lr:.6g}, grad norm {norm}")
    return {"name": name, "lr": lr, "weight_decay": weight_decay, "betas": list(betas), "eps": eps,
            "schedule": schedule, "warmup": warmup, "total": total, "max_norm": max_norm,
            "shapes": SHAPES, "initial_params": initial, "steps": steps}


def main():
    out = {
        "generator": GENERATOR,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "schedules": [schedule_values(k, w, t) for k in ("linear", "cosine")
                      for (w, t) in ((10, 180), (0, 7), (3, 8), (5, 5))],
        "runs": [
            # The GPT-2 notebook's settings, warmup shortened so all five steps move.
            run("linear-clip", 1, 2e-3, 0.01, (0.9, 0.999), 1e-8, "linear", 2, 5, 1.0,
                [0.1, 3.0, 0.2, 5.0, 0.05]),
            run("cosine-noclip", 2, 1e-2, 0.1, (0.8, 0.99), 1e-6, "cosine", 1, 6, None,
                [1.0, 0.5, 2.0, 1.0, 0.1]),
            run("linear-clip-small", 3, 2e-4, 0.0, (0.9, 0.999), 1e-8, "linear", 0, 5, 0.5,
                [1e-3, 1.0, 1e-2, 2.0, 1e-4]),
        ],
    }
    with open(HERE / "optim-golden.json", "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print("wrote optim-golden.json")


if __name__ == "__main__":
    main()
