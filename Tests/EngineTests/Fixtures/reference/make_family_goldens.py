#!/usr/bin/env python3
"""Reference fixtures for the model families beyond the first tiny GPT-2/LLaMA.

Generator only (nb never runs Python): it builds tiny random checkpoints with transformers
and writes, beside this script, each model's safetensors folder plus the logits and greedy
continuations transformers computes for them (same layout as make_model_goldens.py, whose
helpers it reuses), and two GGUF files written the way llama.cpp's converter writes them.

    ~/.cache/nb-baseline/bin/python Tests/EngineTests/Fixtures/reference/make_family_goldens.py

| folder | what it exercises |
|---|---|
| tiny-llama3 | Llama 3.x: rope_scaling llama3 (factor 8, low 1, high 4, original 16), rope_theta 500000, explicit head_dim 24 (hidden/heads = 16), tied head |
| tiny-llama-linear | rope_scaling linear (factor 4), attention_bias and mlp_bias true, untied |
| tiny-llama-dynamic | rope_scaling dynamic (factor 2), max_position_embeddings 16: the 20-token sequence and the continuations run past it |
| tiny-qwen2 | Qwen2: q/k/v biases, rope_theta 1e6, untied, use_sliding_window false |
| tiny-mistral | Mistral: sliding_window 6 (shorter than the 20-token sequence), rope_theta 1e6, untied |
| tiny-llama3.gguf (not committed: `make setup` writes it into ~/.cache/nb/fixtures) | tiny-llama3 as llama.cpp writes Llama 3: Q/K rows permuted, `rope_freqs.weight` holding the llama3 factors, key_length 24 |
| tiny-qwen2.gguf (likewise) | tiny-qwen2 as llama.cpp writes Qwen2: arch `qwen2`, no Q/K permutation (NEOX RoPE), q/k/v biases |

Reference stack: torch 2.13.0 (CPU), transformers 4.46.3, gguf (PyPI), numpy; one thread,
torch.manual_seed(0) before each model. Deterministic.
"""

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_model_goldens as base  # noqa: E402  (helpers and the three sequences)
sys.path.insert(0, str(HERE.parents[3] / "scripts"))
from make_gguf_fixtures import write_family_gguf  # noqa: E402  (shared with `make setup`)

torch.set_num_threads(1)
# Model files are not committed: `make setup` writes these GGUFs from the committed folders.
GGUF_DIR = Path(os.environ.get("NB_CACHE", Path.home() / ".cache/nb")) / "fixtures"
GGUF_DIR.mkdir(parents=True, exist_ok=True)
base.GENERATOR = "Tests/EngineTests/Fixtures/reference/make_family_goldens.py"

COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, hidden_act="silu",
              initializer_range=base.INIT_RANGE, bos_token_id=1, eos_token_id=2,
              attn_implementation="eager")


def build(cls, cfg_cls, **kw):
    torch.manual_seed(0)
    cfg = cfg_cls(**{**COMMON, **kw})
    model = cls(cfg)
    base.randomize_1d(model)
    return model.eval()


ORIGINAL = (base.greedy_generate, base.forward_details, base.greedy_no_cache)


def save(model, name, summary, greedy_check=True):
    base.log(f"{name}")
    base.greedy_generate, base.forward_details, base.greedy_no_cache = ORIGINAL
    out = HERE / name
    model.save_pretrained(out, safe_serialization=True)
    again = type(model).from_pretrained(out, attn_implementation="eager").eval()
    base.check_reload(again, model, name)
    if not greedy_check:
        # Dynamic NTK scaling changes the frequencies with the length, so a cached continuation
        # (keys rotated when they were computed) and a full recomputation differ by design:
        # the fixture records transformers' cached generate, the way nb decodes. transformers'
        # rotary module also keeps the longest length it has seen and only grows its base, so
        # its state is reset before every call: each sequence is run as by a fresh model.
        rotary = model.model.rotary_emb

        def fresh(f):
            def run(*a):
                rotary.inv_freq = rotary.original_inv_freq.clone()
                rotary.max_seq_len_cached = rotary.original_max_seq_len
                return f(*a)
            return run
        generate, details = base.greedy_generate, base.forward_details
        base.greedy_generate = fresh(generate)
        base.forward_details = fresh(details)
        base.greedy_no_cache = lambda m, ids, n: (base.greedy_generate(m, ids, n), [0.0] * n)
    seqs = base.model_fixtures(model, name, {**summary, "safetensors_keys": sorted(base.saved_keys(out))})
    return seqs


def write_gguf(model, path, arch):
    sd = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    write_family_gguf(sd, model.config.to_dict(), path, arch)
    base.log(f"  wrote {path.name} ({path.stat().st_size} B) (make setup writes the same bytes)")


def main():
    llama3 = build(LlamaForCausalLM, LlamaConfig, head_dim=24, rope_theta=500000.0, max_position_embeddings=64,
                   tie_word_embeddings=True,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    save(llama3, "tiny-llama3", {"head_dim": 24, "rope_theta": 500000.0, "rope_scaling": "llama3 8/1/4/16", "tied": True})
    write_gguf(llama3, GGUF_DIR / "tiny-llama3.gguf", "llama")

    linear = build(LlamaForCausalLM, LlamaConfig, rope_theta=10000.0, max_position_embeddings=64,
                   tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                   rope_scaling={"rope_type": "linear", "factor": 4.0})
    save(linear, "tiny-llama-linear", {"rope_scaling": "linear 4", "attention_bias": True, "mlp_bias": True})

    dynamic = build(LlamaForCausalLM, LlamaConfig, rope_theta=10000.0, max_position_embeddings=16,
                    tie_word_embeddings=False, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    save(dynamic, "tiny-llama-dynamic", {"rope_scaling": "dynamic 2", "max_position_embeddings": 16},
         greedy_check=False)

    qwen2 = build(Qwen2ForCausalLM, Qwen2Config, rope_theta=1000000.0, max_position_embeddings=64,
                  tie_word_embeddings=False, use_sliding_window=False, sliding_window=4096, max_window_layers=2)
    save(qwen2, "tiny-qwen2", {"rope_theta": 1e6, "qkv_bias": True})
    write_gguf(qwen2, GGUF_DIR / "tiny-qwen2.gguf", "qwen2")

    mistral = build(MistralForCausalLM, MistralConfig, head_dim=16, rope_theta=1000000.0, max_position_embeddings=64,
                    tie_word_embeddings=False, sliding_window=6)
    save(mistral, "tiny-mistral", {"sliding_window": 6, "rope_theta": 1e6})


if __name__ == "__main__":
    main()
