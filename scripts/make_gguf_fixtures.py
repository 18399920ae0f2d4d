#!/usr/bin/env python3
"""Writes the GGUF test fixtures into a directory outside the repository (`make setup`
runs it through scripts/fetch_fixtures.sh, which checks their SHA-256):

- checkpoint.gguf: metadata of every GGUF value type, alignment 64, tensors F32, F16,
  BF16, Q8_0, Q4_0, Q4_1 — written and quantized by llama.cpp's gguf-py (the reference for
  GGUFTests; Tests/EngineTests/Fixtures/checkpoint_gguf_expected.json holds what gguf-py
  reads back from it).
- tiny-llama.gguf: the tiny LLaMA of Tests/EngineTests/Fixtures/reference/tiny-llama/ as
  GGUF v3 (F32, llama.cpp tensor names, Q/K rows permuted for interleaved RoPE, a toy
  300-token byte-level BPE vocabulary); its logits are reference/tiny-llama-logits.json.
- tiny-llama3.gguf, tiny-qwen2.gguf: reference/tiny-llama3/ and tiny-qwen2/ as llama.cpp's
  converter writes Llama 3 (rope_freqs.weight) and Qwen2 (make_family_goldens.py).

Needs gguf, numpy and safetensors only:
    python3 scripts/make_gguf_fixtures.py OUTDIR
The other generators (make_checkpoint_fixtures.py, reference/make_model_goldens.py) import
these writers, so the committed expectations and these files come from the same code.
"""
import json
import math
import sys
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

REPO = Path(__file__).resolve().parent.parent
TINY_LLAMA = REPO / "Tests/EngineTests/Fixtures/reference/tiny-llama"
CHECKPOINT_SEED = 20250101  # make_checkpoint_fixtures.py seeds the same generator


def write_checkpoint_gguf(path: Path, rng: np.random.Generator) -> None:
    """The checkpoint-reader fixture; draws from `rng` in a fixed order."""
    w = gguf.GGUFWriter(str(path), "llama")  # writes general.architecture = "llama"
    w.add_custom_alignment(64)               # general.alignment (uint32) = 64
    w.add_uint8("test.uint8", 200)
    w.add_int8("test.int8", -100)
    w.add_uint16("test.uint16", 60000)
    w.add_int16("test.int16", -30000)
    w.add_uint32("test.uint32", 4_000_000_000)
    w.add_int32("test.int32", -2_000_000_000)
    w.add_float32("test.float32", 0.1)
    w.add_bool("test.bool", True)
    w.add_bool("test.bool_false", False)
    w.add_string("test.string", "héllo wörld ✓ 日本語 🦙")
    w.add_uint64("test.uint64", 2**63 + 5)
    w.add_int64("test.int64", -(2**62))
    w.add_float64("test.float64", 3.141592653589793)
    w.add_array("test.array_int32", [1, -2, 3])
    w.add_array("test.array_float32", [0.5, -1.25])
    w.add_array("test.array_bool", [True, False, True])
    w.add_array("test.array_strings", ["a", "ü", "", "🦙 llama", "tab\there"])
    w.add_key_value("test.array_uint64", [1, 2**64 - 1], V.ARRAY, sub_type=V.UINT64)
    w.add_array("test.nested", [[1, 2], [3]])
    w.add_array("test.nested_strings", [["x", "yé"], ["z"]])

    f32 = np.arange(15, dtype=np.float32).reshape(3, 5) - 7.5
    f32.flat[:6] = [np.inf, -np.inf, np.nan, -0.0, np.float32(1e-45), np.finfo(np.float32).max]
    w.add_tensor("f32.matrix", f32)
    w.add_tensor("f32.vector", np.linspace(-1, 1, 7, dtype=np.float32))
    w.add_tensor("f32.cube", np.arange(24, dtype=np.float32).reshape(2, 3, 4) * 0.25)

    f16 = (rng.standard_normal((4, 8)) * 3).astype(np.float16)
    f16.flat[:6] = np.array([np.inf, -np.inf, np.nan, -0.0, 6e-8, 65504], dtype=np.float16)
    w.add_tensor("f16.matrix", f16)

    bf16_src = (rng.standard_normal((2, 16)) * 100).astype(np.float32)
    bf16_src.flat[:3] = [np.inf, -0.0, 1e-40]
    w.add_tensor("bf16.matrix", gguf.quants.quantize(bf16_src, Q.BF16), raw_dtype=Q.BF16)

    for name, qtype, shape, offset in [
        ("q8_0.matrix", Q.Q8_0, (4, 64), 0.0),
        ("q8_0.cube", Q.Q8_0, (2, 2, 32), 0.0),
        ("q4_0.matrix", Q.Q4_0, (3, 96), 0.0),
        ("q4_1.matrix", Q.Q4_1, (5, 64), 0.7),
    ]:
        x = (rng.standard_normal(shape) + offset).astype(np.float32)
        x.reshape(-1, 32)[1] = 0.0  # an all-zero block: d = 0
        w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# --- the tiny LLaMA as GGUF --------------------------------------------------------------

def llama_cpp_permute(w, n_head, n_head_kv=None):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (HF rotate-half rows -> interleaved pairs)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2)
            .reshape(w.shape))


def bytes_to_unicode():
    """GPT-2's byte -> printable unicode map (same as transformers' / llama.cpp's)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


TOY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOY_MERGES = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "r e", "a t", "e n", "Ġ w",
              "o r", "Ġ c", "i s", "Ġ o", "i t", "Ġ f", "a n", "e s", "Ġ b", "Ġ p", "Ġ m", "a l",
              "Ġ i", "o u", "Ġ d", "l l", "a r", "e d", "Ġ h", "i c", "Ġ is", "Ġ in", "Ġ Ġ", "Ġo f",
              "Ġa n", "Ġan d", "Ġ C", "Ċ Ċ", "Ġ R"]
TOY_CHAT_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                     "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                     "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def toy_tokenizer():
    """300 tokens: ids 0-2 control tokens (as in SmolLM2), 3-258 the 256 byte tokens in byte
    order, 259-299 the tokens made by the 41 merges, in merge order."""
    b2u = bytes_to_unicode()
    tokens = TOY_SPECIALS + [b2u[b] for b in range(256)]
    vocab = set(tokens)
    for m in TOY_MERGES:
        a, b = m.split(" ")
        assert a in vocab and b in vocab and (a + b) not in vocab, m
        tokens.append(a + b)
        vocab.add(a + b)
    assert len(tokens) == 300 and len(set(tokens)) == 300
    types = [int(gguf.TokenType.CONTROL)] * len(TOY_SPECIALS) + [int(gguf.TokenType.NORMAL)] * (300 - len(TOY_SPECIALS))
    return tokens, types


def write_llama_gguf(sd: dict, cfg: dict, path: Path) -> None:
    """A Hugging Face LLaMA state dict (numpy float32 arrays, HF names) and its config.json
    values as GGUF v3 with the toy tokenizer."""
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_type("model")
    w.add_name("tiny-llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_rope_dimension_count(cfg["head_dim"])
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
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_chat_template(TOY_CHAT_TEMPLATE)

    def t(name, arr):
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))

    t("token_embd.weight", sd["model.embed_tokens.weight"])
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t(f"blk.{i}.attn_norm.weight", sd[p + "input_layernorm.weight"])
        t(f"blk.{i}.attn_q.weight", llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], n_head, n_head))
        t(f"blk.{i}.attn_k.weight", llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], n_head, n_kv))
        t(f"blk.{i}.attn_v.weight", sd[p + "self_attn.v_proj.weight"])
        t(f"blk.{i}.attn_output.weight", sd[p + "self_attn.o_proj.weight"])
        t(f"blk.{i}.ffn_norm.weight", sd[p + "post_attention_layernorm.weight"])
        t(f"blk.{i}.ffn_gate.weight", sd[p + "mlp.gate_proj.weight"])
        t(f"blk.{i}.ffn_up.weight", sd[p + "mlp.up_proj.weight"])
        t(f"blk.{i}.ffn_down.weight", sd[p + "mlp.down_proj.weight"])
    t("output_norm.weight", sd["model.norm.weight"])
    t("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama3_inverse_frequencies(theta, dim, factor, low, high, original):
    """transformers' llama3 rope: per-frequency scaling by wavelength, float32 as torch does."""
    inv = (np.float32(1.0) / (np.float32(theta) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)))).astype(np.float32)
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


def write_family_gguf(sd, cfg, path, arch):
    """llama.cpp's converter, for these two layouts: Llama permutes Q/K rows for its
    interleaved RoPE and stores llama3 factors in rope_freqs.weight; Qwen2 keeps HF's rows.
    `sd`: HF names to float32 numpy arrays; `cfg`: the config.json values."""
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



def family_fixture(name):
    """A committed tiny family checkpoint (safetensors + config.json) as numpy arrays."""
    from safetensors.numpy import load_file
    folder = REPO / "Tests/EngineTests/Fixtures/reference" / name
    cfg = json.loads((folder / "config.json").read_text())
    return {k: v.astype(np.float32) for k, v in load_file(str(folder / "model.safetensors")).items()}, cfg


def main() -> None:
    from safetensors.numpy import load_file

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    write_checkpoint_gguf(out / "checkpoint.gguf", np.random.default_rng(CHECKPOINT_SEED))
    cfg = json.loads((TINY_LLAMA / "config.json").read_text())
    sd = {k: v.astype(np.float32) for k, v in load_file(str(TINY_LLAMA / "model.safetensors")).items()}
    write_llama_gguf(sd, cfg, out / "tiny-llama.gguf")
    for name, arch in (("tiny-llama3", "llama"), ("tiny-qwen2", "qwen2")):
        write_family_gguf(*family_fixture(name), out / f"{name}.gguf", arch)
    for name in ("checkpoint.gguf", "tiny-llama.gguf", "tiny-llama3.gguf", "tiny-qwen2.gguf"):
        print(f"{name}: {(out / name).stat().st_size} bytes")


if __name__ == "__main__":
    main()
