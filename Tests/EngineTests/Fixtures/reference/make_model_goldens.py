#!/usr/bin/env python3
"""Independent reference data (golden fixtures) for nb's Swift engine tests.

Generator only: nothing in nb runs this at build or test time. It writes small
model checkpoints and the logits / hidden states / greedy continuations that
PyTorch + Hugging Face transformers compute for them, into the folder that holds
this script (Tests/EngineTests/Fixtures/reference/).

Reference stack (what the committed fixtures were made with):
    Python 3.11.7, torch 2.3.1 (CPU), transformers 4.46.3, peft 0.12.0,
    gguf 0.19.0, safetensors 0.8.0 (python package), numpy 2.4.6, tokenizers 0.20.3

How to run it (the venv lives outside the repository, ~6 GB):
    python3 -m venv ~/.cache/nb-baseline
    ~/.cache/nb-baseline/bin/pip install torch==2.3.1 transformers==4.46.3 \
        peft==0.12.0 gguf safetensors numpy
    ~/.cache/nb-baseline/bin/python Tests/EngineTests/Fixtures/reference/make_model_goldens.py

Part (d) needs the real SmolLM2-135M-Instruct Q4_1 GGUF (scripts/fetch_models.sh puts it in
~/.cache/nb); its path can be overridden with NB_SMOLLM2_GGUF. Pass --skip-smollm2 to
regenerate only the tiny-model fixtures.

Everything is deterministic: torch.manual_seed(0) before each tiny model is built,
one CPU thread. See README.md next to this script for the files and their layout.

Deliberate choice: the tiny models use initializer_range=0.2 (not HF's 0.02) and
their 1-D parameters (norm weights, biases) are re-drawn at random after init
(norm weights 1 + 0.1*N(0,1), biases 0.1*N(0,1)). With HF's defaults attention is
almost uniform, norm weights are all 1 and biases all 0, so RoPE / norm-gain /
bias bugs would barely move the logits. Everything stays "randomly initialised
with seed 0".
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
import gguf
import safetensors
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig,
                          GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[3] / "scripts"))
from make_gguf_fixtures import bytes_to_unicode, write_llama_gguf  # noqa: E402  (shared with `make setup`)

SMOLLM2_DEFAULT = Path.home() / ".cache/nb/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"

# The three fixed token-id sequences (ids < 300) used for every tiny model.
SEQUENCES = [
    [42],
    [17, 255, 3, 128, 64, 299, 0],
    [(i * 37 + 11) % 300 for i in range(20)],
]
GEN_SEQUENCE_INDEX = 1  # greedy continuations start from SEQUENCES[1]
GEN_NEW_TOKENS = 10
INIT_RANGE = 0.2

VERSIONS = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "gguf": getattr(gguf, "__version__", None),
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}
GENERATOR = "Tests/EngineTests/Fixtures/reference/make_model_goldens.py"


def gguf_version():
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:  # pragma: no cover
        return None


VERSIONS["gguf"] = VERSIONS["gguf"] or gguf_version()


def log(*a):
    print(*a, flush=True)


def write_json(name, obj):
    path = HERE / name
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")
    log(f"  wrote {name} ({path.stat().st_size} B)")


def floats(t):
    """float32 tensor -> nested lists of Python floats holding the exact float32 values."""
    t = t.detach().to(torch.float32).cpu()
    return t.tolist()


def randomize_1d(model):
    """Norm weights -> 1 + 0.1*N(0,1); biases -> 0.1*N(0,1) (uses the global torch RNG)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim != 1:
                continue
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            elif "ln" in name or "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                raise RuntimeError(f"unexpected 1-D parameter {name}")


def block_list(model):
    return model.transformer.h if isinstance(model, GPT2LMHeadModel) else model.model.layers


def base_model(model):
    return model.transformer if isinstance(model, GPT2LMHeadModel) else model.model


@torch.no_grad()
def forward_details(model, ids):
    """logits [T,V], residual stream after each block [L][T,H], hidden after final norm [T,H],
    mean over heads/positions of the max attention probability (diagnostic only)."""
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o[0][0].clone())) for b in block_list(model)]
    try:
        r = model(torch.tensor([ids]), output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    final = base_model(model)(torch.tensor([ids])).last_hidden_state[0]
    att_max = float(torch.stack([a[0].max(-1).values.mean() for a in r.attentions]).mean())
    return r.logits[0], outs, final, att_max


@torch.no_grad()
def greedy_no_cache(model, ids, n):
    """Reference greedy decoding: full recomputation each step, argmax of last position."""
    seq = list(ids)
    margins = []
    for _ in range(n):
        logits = model(torch.tensor([seq]), use_cache=False).logits[0, -1]
        top2 = torch.topk(logits, 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        seq.append(int(top2.indices[0]))
    return seq[len(ids):], margins


@torch.no_grad()
def greedy_generate(model, ids, n):
    """transformers' generate with the KV cache, never stopping early."""
    gc = GenerationConfig(max_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=None,
                          pad_token_id=0, use_cache=True)
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         generation_config=gc)
    return out[0, len(ids):].tolist()


def model_fixtures(model, name, config_summary):
    model.eval()
    seqs = []
    details = None
    att_maxes = []
    for i, ids in enumerate(SEQUENCES):
        logits, blocks, final, att_max = forward_details(model, ids)
        att_maxes.append(att_max)
        seqs.append({"ids": ids, "logits": floats(logits)})
        if i == GEN_SEQUENCE_INDEX:
            details = (blocks, final)
        log(f"  {name} seq{i} len {len(ids)}: logits [{logits.min():.3f}, {logits.max():.3f}], "
            f"argmax last {int(logits[-1].argmax())}, mean max attention prob {att_max:.3f}")
    blocks, final = details
    write_json(f"{name}-logits.json", {
        "model": name,
        "generator": GENERATOR,
        "versions": VERSIONS,
        "config": config_summary,
        "sequences": seqs,
        "hidden_sequence_index": GEN_SEQUENCE_INDEX,
        "block_outputs": [floats(b) for b in blocks],
        "hidden_after_final_norm": floats(final),
    })

    runs = []
    for k in (GEN_SEQUENCE_INDEX, 2):
        prompt = SEQUENCES[k]
        ref, margins = greedy_no_cache(model, prompt, GEN_NEW_TOKENS)
        gen = greedy_generate(model, prompt, GEN_NEW_TOKENS)
        assert gen == ref, f"{name}: generate (KV cache) {gen} != no-cache argmax loop {ref}"
        log(f"  {name} greedy from seq{k}: {gen}, min top1-top2 margin {min(margins):.4f}")
        runs.append({"prompt_index": k, "prompt_ids": prompt, "new_ids": gen, "all_ids": prompt + gen,
                     "step_margins": margins})
    write_json(f"{name}-generation.json", {
        "model": name,
        "generator": GENERATOR,
        "versions": VERSIONS,
        **{key: runs[0][key] for key in ("prompt_ids", "new_ids", "all_ids", "step_margins")},
        "extra_runs": runs[1:],
        "method": "transformers generate(do_sample=False, use_cache=True, eos_token_id=None, "
                  "max_new_tokens=10); asserted equal to an argmax loop with full recomputation "
                  "and no cache",
    })
    return seqs


def saved_keys(folder):
    from safetensors import safe_open
    keys = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            for k in s.keys():
                keys[k] = f.name
    return keys


@torch.no_grad()
def check_reload(loaded, model, what):
    """The saved checkpoint must hold exactly the model's weights and give its logits. Logits may
    differ in the last bit: torch's single-row (GEMV) path depends on the weights' memory
    alignment, so a reloaded copy can be 1 ulp off for the length-1 sequence."""
    a, b = loaded.state_dict(), model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), what
    worst = max(float((loaded(torch.tensor([ids])).logits - model(torch.tensor([ids])).logits).abs().max())
                for ids in SEQUENCES)
    assert worst < 1e-5, (what, worst)
    log(f"  reloaded {what}: weights identical, max |logit diff| {worst:.1e}")


# ---------------------------------------------------------------------------
# (a) GPT-2

def make_gpt2():
    log("(a) tiny GPT-2")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                     layer_norm_epsilon=1e-5, activation_function="gelu_new",
                     initializer_range=INIT_RANGE, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    model = GPT2LMHeadModel(cfg)
    randomize_1d(model)
    model.eval()
    out = HERE / "tiny-gpt2"
    model.save_pretrained(out, safe_serialization=True)
    sharded = HERE / "tiny-gpt2-sharded"
    model.save_pretrained(sharded, safe_serialization=True, max_shard_size="200KB")
    shards = sorted(p.name for p in sharded.glob("*.safetensors"))
    assert len(shards) >= 2 and (sharded / "model.safetensors.index.json").exists(), shards
    log(f"  shards: {shards}")
    assert saved_keys(out).keys() == saved_keys(sharded).keys()
    # reload both from disk: the saved files must give the same logits
    for folder in (out, sharded):
        m2 = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
        check_reload(m2, model, folder.name)
    model_fixtures(model, "tiny-gpt2", {
        "n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 64, "vocab_size": 300,
        "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new", "tied_lm_head": True,
        "initializer_range": INIT_RANGE, "safetensors_keys": sorted(saved_keys(out))})


# ---------------------------------------------------------------------------
# (b) LLaMA

def llama_config(tied):
    return LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                       rope_theta=10000.0, max_position_embeddings=64, tie_word_embeddings=tied,
                       hidden_act="silu", attention_bias=False, mlp_bias=False,
                       initializer_range=INIT_RANGE, bos_token_id=1, eos_token_id=2,
                       attn_implementation="eager")


def make_llama(tied):
    name = "tiny-llama-tied" if tied else "tiny-llama"
    log(f"(b) {name}")
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tied))
    randomize_1d(model)
    model.eval()
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    out = HERE / name
    model.save_pretrained(out, safe_serialization=True)
    m2 = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    check_reload(m2, model, name)
    seqs = model_fixtures(model, name, {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "vocab_size": 300, "max_position_embeddings": 64,
        "tie_word_embeddings": tied, "hidden_act": "silu", "initializer_range": INIT_RANGE,
        "rope_layout": "Hugging Face (rotate_half: pairs (i, i + head_dim/2))",
        "safetensors_keys": sorted(saved_keys(out))})
    return model, seqs


# ---------------------------------------------------------------------------
# (c) the untied tiny LLaMA as GGUF v3 (F32)

def write_gguf(model, path):
    """The writer `make setup` uses too (scripts/make_gguf_fixtures.py), on this model's weights."""
    sd = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    write_llama_gguf(sd, model.config.to_dict(), path)


def numpy_llama_from_gguf(path, ids, interleaved=True):
    """Independent float64 LLaMA forward reading the GGUF directly, llama.cpp style: Q/K rows as
    stored (permuted) and RoPE rotating adjacent pairs (2i, 2i+1). Returns logits [T, V]."""
    r = gguf.GGUFReader(str(path))
    W = {t.name: np.array(t.data, dtype=np.float64) for t in r.tensors}
    f = {k: v.contents() for k, v in r.fields.items()}
    H = f["llama.embedding_length"]
    nh, nkv = f["llama.attention.head_count"], f["llama.attention.head_count_kv"]
    hd = H // nh
    eps = f["llama.attention.layer_norm_rms_epsilon"]
    theta = f["llama.rope.freq_base"]
    T = len(ids)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    inv = theta ** (-np.arange(0, hd, 2) / hd)            # [hd/2]
    ang = np.arange(T)[:, None] * inv[None, :]            # [T, hd/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):  # x [T, heads, hd]
        if interleaved:
            x0, x1 = x[..., 0::2], x[..., 1::2]
            out = np.empty_like(x)
            out[..., 0::2] = x0 * cos - x1 * sin
            out[..., 1::2] = x0 * sin + x1 * cos
        else:
            x0, x1 = x[..., : hd // 2], x[..., hd // 2:]
            out = np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1)
        return out

    x = W["token_embd.weight"][ids]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(f["llama.block_count"]):
        b = f"blk.{i}."
        h = rms(x, W[b + "attn_norm.weight"])
        q = rope((h @ W[b + "attn_q.weight"].T).reshape(T, nh, hd))
        k = rope((h @ W[b + "attn_k.weight"].T).reshape(T, nkv, hd))
        v = (h @ W[b + "attn_v.weight"].T).reshape(T, nkv, hd)
        att = np.empty((T, nh, hd))
        for hh in range(nh):
            kv = hh // (nh // nkv)
            s = q[:, hh] @ k[:, kv].T / np.sqrt(hd) + mask
            p = np.exp(s - s.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            att[:, hh] = p @ v[:, kv]
        x = x + att.reshape(T, H) @ W[b + "attn_output.weight"].T
        h = rms(x, W[b + "ffn_norm.weight"])
        g = h @ W[b + "ffn_gate.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ W[b + "ffn_up.weight"].T)) @ W[b + "ffn_down.weight"].T
    return rms(x, W["output_norm.weight"]) @ W["output.weight"].T


def make_gguf(model, seqs):
    log("(c) tiny-llama.gguf")
    # Not committed: `make setup` writes the same bytes into ~/.cache/nb/fixtures.
    path = Path(os.environ.get("NB_CACHE", Path.home() / ".cache/nb")) / "fixtures/tiny-llama.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(model, path)
    log(f"  wrote tiny-llama.gguf ({path.stat().st_size} B)")

    # numpy check of the permutation: inverting it gives back the HF rows ...
    sd = model.state_dict()
    r = gguf.GGUFReader(str(path))
    stored = {t.name: np.array(t.data) for t in r.tensors}
    for i in range(2):
        for kind, proj, nh in (("q", "q_proj", 4), ("k", "k_proj", 2)):
            wq = stored[f"blk.{i}.attn_{kind}.weight"]
            hd2 = wq.shape[0] // nh // 2
            back = wq.reshape(nh, hd2, 2, -1).swapaxes(1, 2).reshape(wq.shape)
            assert np.array_equal(back, sd[f"model.layers.{i}.self_attn.{proj}.weight"].numpy())
    # ... and an independent llama.cpp-style forward (stored rows + adjacent-pair RoPE) gives
    # (b)'s logits, while the same forward with rotate-half RoPE on the permuted rows does not.
    worst = 0.0
    for s in seqs:
        ref = np.array(s["logits"])
        ours = numpy_llama_from_gguf(path, s["ids"], interleaved=True)
        worst = max(worst, float(np.abs(ours - ref).max()))
    assert worst < 1e-4, worst
    wrong = numpy_llama_from_gguf(path, SEQUENCES[2], interleaved=False)
    wrong_diff = float(np.abs(wrong - np.array(seqs[2]["logits"])).max())
    assert wrong_diff > 0.1, wrong_diff
    log(f"  numpy llama.cpp-style forward from the GGUF vs (b): max |diff| {worst:.2e}; "
        f"with rotate-half RoPE instead: {wrong_diff:.3f} (so the check is sensitive)")

    # transformers reading the GGUF back (it un-permutes Q/K) must reproduce (b) exactly.
    m = AutoModelForCausalLM.from_pretrained(HERE, gguf_file=path.name, attn_implementation="eager").eval()
    assert not m.config.tie_word_embeddings
    with torch.no_grad():
        for s in seqs:
            got = m(torch.tensor([s["ids"]])).logits[0]
            ref = torch.tensor(s["logits"], dtype=torch.float32)
            assert torch.equal(got, ref), float((got - ref).abs().max())
    log("  transformers from_pretrained(gguf_file=tiny-llama.gguf): logits bit-identical to tiny-llama")
    try:
        tok = AutoTokenizer.from_pretrained(HERE, gguf_file=path.name)
        ids = tok("the cat is in the hall and", add_special_tokens=False).input_ids
        log(f"  toy tokenizer via transformers: {tok.convert_ids_to_tokens(ids)}")
    except Exception as e:  # informational only
        log(f"  (transformers could not build the toy tokenizer: {e!r})")


# ---------------------------------------------------------------------------
# (d) SmolLM2-135M-Instruct (real weights)

_BPE = {}


def plain_bpe(gguf_path, text):
    """Minimal byte-level BPE straight from the GGUF's tokens and merges (no transformers), for
    ASCII text without digits or whitespace runs, where SmolLM2's pre-tokenizer reduces to
    GPT-2's regex."""
    import re
    if not _BPE:
        r = gguf.GGUFReader(str(gguf_path))
        tokens = r.fields["tokenizer.ggml.tokens"].contents()
        merges = r.fields["tokenizer.ggml.merges"].contents()
        _BPE["ids"] = {t: i for i, t in enumerate(tokens)}
        _BPE["ranks"] = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    assert not re.search(r"[0-9]|\s\s|[^\x00-\x7f]", text), text
    b2u = bytes_to_unicode()
    pieces = re.findall(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+", text)
    out = []
    for piece in pieces:
        word = [b2u[b] for b in piece.encode()]
        while len(word) > 1:
            pairs = [(_BPE["ranks"].get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            rank, i = min(pairs)
            if rank == 1 << 30:
                break
            word[i:i + 2] = [word[i] + word[i + 1]]
        out += [_BPE["ids"][w] for w in word]
    return out


def make_smollm2(gguf_path):
    log(f"(d) SmolLM2 from {gguf_path}")
    d, fname = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, tie_word_embeddings=True,
                                                 torch_dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "lm_head not tied"
    c = model.config
    log(f"  config: layers {c.num_hidden_layers}, hidden {c.hidden_size}, heads {c.num_attention_heads}/"
        f"{c.num_key_value_heads}, rope_theta {c.rope_theta}, eps {c.rms_norm_eps}, vocab {c.vocab_size}")
    assert (c.num_hidden_layers, c.hidden_size, c.vocab_size, c.rope_theta) == (30, 576, 49152, 100000.0)

    def enc(text):
        ids = tok(text, add_special_tokens=False).input_ids
        if ids and ids[0] == 1:  # transformers' GGUF tokenizer may prepend <|im_start|> as BOS
            ids = ids[1:]
        return ids

    texts = ["The capital of Italy is", "def fibonacci(n):",
             "<|im_start|>user\nWhat is FHE?<|im_end|>\n<|im_start|>assistant\n"]
    prompts = [enc(texts[0]), enc(texts[1]),
               [1] + enc("user\nWhat is FHE?") + [2] + enc("\n") + [1] + enc("assistant\n")]
    assert 1 not in prompts[0] + prompts[1] and 0 not in prompts[0] + prompts[1]
    joint = tok(texts[2], add_special_tokens=False).input_ids
    assert joint == prompts[2], (joint, prompts[2])
    for text, ids in zip(["The capital of Italy is", "def fibonacci(n):", "user\nWhat is FHE?", "\n",
                          "assistant\n", " Rome"],
                         [prompts[0], prompts[1], prompts[2][1:8], prompts[2][9:10], prompts[2][11:], None]):
        mine = plain_bpe(gguf_path, text)
        assert ids is None or mine == ids, (text, mine, ids)
    log("  prompt ids agree with an independent byte-level BPE over the GGUF's merges")
    rome = enc(" Rome")
    assert len(rome) == 1, rome
    rome = rome[0]

    blob = []
    meta = []
    with torch.no_grad():
        for i, (text, ids) in enumerate(zip(texts, prompts)):
            logits = model(torch.tensor([ids])).logits[0, -1].to(torch.float32)
            assert logits.shape == (49152,) and torch.isfinite(logits).all()
            top = torch.topk(logits, 10)
            blob.append(logits.numpy().astype("<f4"))
            meta.append({
                "text": text,
                "ids": ids,
                "tokens": tok.convert_ids_to_tokens(ids),
                "logits_offset_floats": i * 49152,
                "logits_count": 49152,
                "top10_ids": top.indices.tolist(),
                "top10_tokens": tok.convert_ids_to_tokens(top.indices.tolist()),
                "top10_values": floats(top.values),
                "logit_min": float(logits.min()),
                "logit_max": float(logits.max()),
                "logit_mean": float(logits.double().mean()),
            })
            log(f"  prompt {i} {ids}: top5 {tok.convert_ids_to_tokens(top.indices[:5].tolist())}, "
                f"range [{logits.min():.3f}, {logits.max():.3f}]")
    assert meta[0]["top10_ids"][0] == rome, "' Rome' is not first: lm_head / weights wrong"

    # greedy continuation of prompt 1, 20 tokens
    n = 20
    gc = GenerationConfig(max_new_tokens=n, do_sample=False, num_beams=1, eos_token_id=None,
                          pad_token_id=2, use_cache=True)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompts[0]]), attention_mask=torch.ones(1, len(prompts[0]), dtype=torch.long),
                             generation_config=gc)
    gen = out[0, len(prompts[0]):].tolist()
    ref, margins = greedy_no_cache(model, prompts[0], n)
    assert gen == ref, f"generate {gen} != no-cache argmax {ref}"
    log(f"  greedy: {gen} = {tok.decode(gen)!r}, min margin {min(margins):.4f}")

    (HERE / "smollm2-logits.f32").write_bytes(np.concatenate(blob).tobytes())
    log(f"  wrote smollm2-logits.f32 ({(HERE / 'smollm2-logits.f32').stat().st_size} B)")
    write_json("smollm2-logits.json", {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "generator": GENERATOR,
        "versions": VERSIONS,
        "loading": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., tie_word_embeddings=True), "
                   "weights dequantized to float32 by gguf-py, eager attention, float32",
        "logits_file": "smollm2-logits.f32",
        "logits_dtype": "float32 little-endian",
        "logits_shape": [len(prompts), 49152],
        "rome_id": rome,
        "prompts": meta,
        "greedy": {
            "prompt_index": 0,
            "prompt_ids": prompts[0],
            "new_ids": gen,
            "new_text": tok.decode(gen),
            "step_margins": margins,
            "eos_in_continuation": 2 in gen,
            "method": "transformers generate(do_sample=False, use_cache=True, eos_token_id=None, "
                      "max_new_tokens=20); asserted equal to a no-cache argmax loop",
        },
    })


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--smollm2", type=Path, default=Path(os.environ.get("NB_SMOLLM2_GGUF", SMOLLM2_DEFAULT)))
    args = ap.parse_args()
    torch.set_num_threads(1)
    log(f"versions: {VERSIONS}")
    make_gpt2()
    model, seqs = make_llama(tied=False)
    make_llama(tied=True)
    make_gguf(model, seqs)
    if not args.skip_smollm2:
        if not args.smollm2.exists():
            sys.exit(f"missing {args.smollm2} (pass --skip-smollm2 or set NB_SMOLLM2_GGUF)")
        make_smollm2(args.smollm2)
    log("done")


if __name__ == "__main__":
    main()
