#!/usr/bin/env python3
"""Checks nb's merged exports with the reference libraries, and records what they saw.

Generator only (nb never runs Python). For the tiny GPT-2 and LLaMA of ../reference with the
PEFT adapters of ../peft, it runs the built `nb export` (safetensors, and GGUF F32), then:
  * transformers' AutoModelForCausalLM.from_pretrained(export) -> logits of the PEFT
    fixture's ids, compared with PEFT's own merge_and_unload logits (peft-logits.json);
  * AutoTokenizer.from_pretrained(export) -> the ids of a sentence;
  * gguf.GGUFReader(export.gguf) -> every tensor's name, shape and type, and transformers'
    GGUF loader -> logits again.
For the quantized GGUF types (Q8_0, Q4_0, Q4_1, `--precision`), it quantizes the F32 export's
matrices with gguf-py's own numpy quantizers (gguf.quants.quantize) and compares them with
nb's blocks byte for byte.
It writes export-check.json: the SHA-256 of each exported file (the test re-exports and
requires the same bytes, so these results are about the very files nb writes now), the
largest logit differences, the tokenizer ids and the GGUF tensor list. The GGUF cases start
from the tiny LLaMA's own GGUF (its 300-token toy tokenizer: llama.cpp and transformers take
the vocabulary's size from the tokens, so a GGUF's tokenizer must fit its embedding).

    swift build -c release --product nb
    ~/.cache/nb-baseline/bin/python Tests/EngineTests/Fixtures/export/check_export.py [.build/release/nb]
"""

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent
NB = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[3] / ".build/release/nb").resolve()
TEXT = "Hello world, this is nb."
torch.set_num_threads(1)


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cases():
    """(source model, adapter, format): the tiny safetensors models with their PEFT adapters as
    Hugging Face folders, and the tiny LLaMA read from its GGUF (toy 300-token tokenizer,
    written by `make setup`) as GGUF and as a folder whose tokenizer files nb writes itself."""
    cache = Path.home() / ".cache/nb/fixtures/tiny-llama.gguf"
    return [(FIXTURES / "reference/tiny-gpt2", "gpt2-adapter", "safetensors", "tiny-gpt2"),
            (FIXTURES / "reference/tiny-llama", "llama-adapter", "safetensors", "tiny-llama"),
            (cache, "llama-adapter", "gguf", "tiny-llama"),
            (cache, "llama-adapter", "safetensors", "tiny-llama")]


def main():
    peft = {a["model"]: a for a in json.loads((FIXTURES / "peft/peft-logits.json").read_text())["adapters"]}
    out = {"generator": "Tests/EngineTests/Fixtures/export/check_export.py",
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
           "text": TEXT, "exports": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n, (source, adapter, fmt, reference) in enumerate(cases()):
            target = Path(tmp) / (f"export{n}.gguf" if fmt == "gguf" else f"export{n}")
            subprocess.run([str(NB), "export", "--model", str(source), "--adapter", str(FIXTURES / "peft" / adapter),
                            "--to", str(target)], check=True, capture_output=True)
            case = peft[reference]
            ids = torch.tensor([case["ids"]])
            merged = torch.tensor(case["logits_merged"])
            entry = {"source": source.name, "adapter": adapter, "format": fmt,
                     "logit_range": float(merged.max() - merged.min())}
            if fmt == "gguf":
                hf = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=target.name, attn_implementation="eager").eval()
                reader = gguf.GGUFReader(str(target))
                entry["sha256"] = sha256(target)
                entry["gguf_tensors"] = [{"name": t.name, "shape": [int(d) for d in reversed(t.shape)], "type": t.tensor_type.name}
                                         for t in reader.tensors]
                entry["gguf_token_count"] = len(reader.fields["tokenizer.ggml.tokens"].data)
            else:
                hf = AutoModelForCausalLM.from_pretrained(target, attn_implementation="eager").eval()
                entry["sha256"] = sha256(target / "model.safetensors")
                entry["config_sha256"] = sha256(target / "config.json")
                entry["tokenizer_ids"] = AutoTokenizer.from_pretrained(target)(TEXT, add_special_tokens=False).input_ids
            with torch.no_grad():
                entry["max_abs_diff_vs_peft_merged"] = float((hf(ids).logits[0] - merged).abs().max())
            print({k: v for k, v in entry.items() if k != "gguf_tensors"})
            out["exports"].append(entry)
        # Quantized GGUF: nb's blocks against gguf-py's quantizers on the same F32 matrices.
        f32 = gguf.GGUFReader(str(Path(tmp) / "export2.gguf"))
        matrices = {t.name: np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
                    for t in f32.tensors if len(t.shape) >= 2}
        out["quantized"] = []
        for precision in ["q8_0", "q4_0", "q4_1"]:
            qtype = getattr(gguf.GGMLQuantizationType, precision.upper())
            target = Path(tmp) / f"{precision}.gguf"
            subprocess.run([str(NB), "export", "--model", str(cases()[2][0]), "--adapter", str(FIXTURES / "peft/llama-adapter"),
                            "--to", str(target), "--precision", precision], check=True, capture_output=True)
            reader = gguf.GGUFReader(str(target))
            blocks = same = 0
            worst = 0.0
            types = {}
            for t in reader.tensors:
                types[t.name] = t.tensor_type.name
                if t.name not in matrices:
                    continue
                ours = np.asarray(t.data, dtype=np.uint8).reshape(-1)
                theirs = gguf.quants.quantize(matrices[t.name], qtype).reshape(-1)
                size = gguf.GGML_QUANT_SIZES[qtype][1]
                a, b = ours.reshape(-1, size), theirs.reshape(-1, size)
                blocks += a.shape[0]
                same += int((a == b).all(axis=1).sum())
                deq_ours = gguf.quants.dequantize(ours.reshape(matrices[t.name].shape[0], -1), qtype)
                deq_theirs = gguf.quants.dequantize(theirs.reshape(matrices[t.name].shape[0], -1), qtype)
                worst = max(worst, float(np.abs(deq_ours - deq_theirs).max()))
            entry = {"precision": precision, "sha256": sha256(target), "blocks": blocks, "identical_blocks": same,
                     "max_dequantized_difference": worst, "types": types}
            print({k: v for k, v in entry.items() if k != "types"})
            out["quantized"].append(entry)
    path = HERE / "export-check.json"
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
