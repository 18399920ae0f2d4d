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
| tiny-llama3.gguf | tiny-llama3 as llama.cpp writes Llama 3: Q/K rows permuted, `rope_freqs.weight` holding the llama3 factors, key_length 24 |
| tiny-qwen2.gguf | tiny-qwen2 as llama.cpp writes Qwen2: arch `qwen2`, no Q/K permutation (NEOX RoPE), q/k/v biases |

Reference stack: torch 2.13.0 (CPU), transformers 4.46.3, gguf (PyPI), numpy; one thread,
torch.manual_seed(0) before each model. Deterministic.
"""

import math
import sys
from pathlib import Path

import numpy as np
import torch
import gguf
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_model_goldens as base  # noqa: E402  (helpers and the three sequences)
from make_gguf_fixtures import (TOY_CHAT_TEMPLATE, TOY_MERGES, llama_cpp_permute,  # noqa: E402
                                toy_tokenizer)

torch.set_num_threads(1)
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


def llama3_inverse_frequencies(theta, dim, factor, low, high, original):
    """transformers' llama3 rope: per-frequency scaling by wavelength, float32 as torch does."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    factors = []
    for f in inv.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < original / high:
            factors.append(1.0)
        elif wavelen > original / low:
            factors.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def gguf_writer(path, arch, cfg, name):
    w = gguf.GGUFWriter(str(path), arch)
    w.add_type("model")
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_vocab_size(cfg["vocab_size"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    tokens, types = toy_tokenizer()
    w.add_add_space_prefix(False)
    w.add_add_bos_token(False)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(TOY_MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_chat_template(TOY_CHAT_TEMPLATE)
    return w


def write_gguf(model, path, arch):
    """llama.cpp's converter, for these two layouts: Llama permutes Q/K rows for its
    interleaved RoPE and stores llama3 factors in rope_freqs.weight; Qwen2 keeps HF's rows."""
    cfg = model.config.to_dict()
    sd = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    w = gguf_writer(path, arch, cfg, path.stem)
    if cfg.get("rope_scaling"):
        rs = cfg["rope_scaling"]
        assert rs["rope_type"] == "llama3"
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        factors = llama3_inverse_frequencies(cfg["rope_theta"], head_dim, rs["factor"], rs["low_freq_factor"],
                                             rs["high_freq_factor"], rs["original_max_position_embeddings"])
        w.add_tensor("rope_freqs.weight", factors)

    def t(name, arr):
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))

    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    t("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        q, k = sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.k_proj.weight"]
        if arch == "llama":
            q, k = llama_cpp_permute(q, nh, nh), llama_cpp_permute(k, nh, nkv)
        t(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        t(f"blk.{i}.attn_q.weight", q)
        t(f"blk.{i}.attn_k.weight", k)
        t(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        if arch == "qwen2":
            t(f"blk.{i}.attn_q.bias", sd[p + "self_attn.q_proj.bias"])
            t(f"blk.{i}.attn_k.bias", sd[p + "self_attn.k_proj.bias"])
            t(f"blk.{i}.attn_v.bias", sd[p + "self_attn.v_proj.bias"])
        t(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        t(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        t(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        t(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        t(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    t("output_norm.weight", sd["model.norm.weight"])
    if "lm_head.weight" in sd and not cfg.get("tie_word_embeddings"):
        t("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    base.log(f"  wrote {path.name} ({path.stat().st_size} B)")


def main():
    llama3 = build(LlamaForCausalLM, LlamaConfig, head_dim=24, rope_theta=500000.0, max_position_embeddings=64,
                   tie_word_embeddings=True,
                   rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    save(llama3, "tiny-llama3", {"head_dim": 24, "rope_theta": 500000.0, "rope_scaling": "llama3 8/1/4/16", "tied": True})
    write_gguf(llama3, HERE / "tiny-llama3.gguf", "llama")

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
    write_gguf(qwen2, HERE / "tiny-qwen2.gguf", "qwen2")

    mistral = build(MistralForCausalLM, MistralConfig, head_dim=16, rope_theta=1000000.0, max_position_embeddings=64,
                    tie_word_embeddings=False, sliding_window=6)
    save(mistral, "tiny-mistral", {"sliding_window": 6, "rope_theta": 1e6})


if __name__ == "__main__":
    main()
