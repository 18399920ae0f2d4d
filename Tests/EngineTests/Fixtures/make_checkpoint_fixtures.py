#!/usr/bin/env python3
"""Writes the checkpoint-reader fixtures for Tests/EngineTests (GGUFTests, SafeTensorsTests).

Independent references: llama.cpp's gguf-py (writer, quantizers, reader, dequantizers)
and Hugging Face's safetensors. Run from anywhere:

    python3 -m venv ~/.cache/nb-venv-gguf
    ~/.cache/nb-venv-gguf/bin/pip install gguf numpy safetensors
    ~/.cache/nb-venv-gguf/bin/python Tests/EngineTests/Fixtures/make_checkpoint_fixtures.py

Outputs (next to this script):
- checkpoint_gguf_expected.json: checkpoint.gguf (metadata of every GGUF value type, nested
  arrays, unicode strings, alignment 64, tensors F32, F16, BF16, Q8_0, Q4_0, Q4_1, 1-D to 3-D;
  written by scripts/make_gguf_fixtures.py, which `make setup` runs into ~/.cache/nb/fixtures
  — the file is not committed) with each tensor read back with GGUFReader and dequantized by
  gguf.quants.dequantize: type, row-major shape, Float32 bit patterns (exact, NaN-safe).
- tensors.safetensors (+ _expected.json): F32, F16, BF16 and an I64 tensor, with metadata.
- sharded/: model.safetensors.index.json and two shards.
- smollm2_rows.json: a few rows of three tensors of the real SmolLM2-135M-Instruct GGUF
  (Q8_0, Q4_1, F32), dequantized by gguf-py; rewritten only when the model is present
  (`make setup` downloads it).

GGUFTests mirrors the metadata values below; keep them in sync.
"""
import importlib.metadata
import json
import os
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
import safetensors
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from make_gguf_fixtures import write_checkpoint_gguf  # noqa: E402  (the writer shared with `make setup`)

FORMAT_VERSION = 1
HERE = Path(__file__).resolve().parent
SMOLLM2 = Path.home() / ".cache/nb/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
HEADER = {
    "format_version": FORMAT_VERSION,
    "generator": "Tests/EngineTests/Fixtures/make_checkpoint_fixtures.py",
    "gguf_py": importlib.metadata.version("gguf"),
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
}


def bits(a: np.ndarray) -> list[int]:
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.uint32).tolist()


def write_json(name: str, obj) -> None:
    with open(HERE / name, "w", encoding="utf-8") as f:
        json.dump({**HEADER, **obj}, f, separators=(",", ":"))
        f.write("\n")


def make_gguf(rng: np.random.Generator) -> None:
    # The file itself is not committed: scripts/make_gguf_fixtures.py writes it (with this
    # same generator state) into the cache `make setup` fills; here it goes to a scratch file.
    path = Path(tempfile.mkdtemp()) / "checkpoint.gguf"
    write_checkpoint_gguf(path, rng)

    reader = gguf.GGUFReader(str(path))
    tensors = []
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = [int(d) for d in reversed(t.shape.tolist())]  # GGUF ne[] reversed = row-major
        assert values.size == int(np.prod(shape)), t.name
        tensors.append({"name": t.name, "type": t.tensor_type.name, "shape": shape, "bits": bits(values)})
    write_json("checkpoint_gguf_expected.json", {"alignment": int(reader.alignment), "tensors": tensors})
    print(f"{path.name}: {path.stat().st_size} bytes, {len(tensors)} tensors")


def spec(dtype: str, array: np.ndarray):
    return safetensors.TensorSpec(dtype=dtype, shape=list(array.shape),
                                  data_ptr=array.ctypes.data, data_len=array.nbytes)


def make_safetensors(rng: np.random.Generator) -> None:
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    f32.flat[:3] = [np.inf, np.nan, -0.0]
    f16 = (rng.standard_normal((2, 3, 2)) * 10).astype(np.float16)
    f16.flat[:2] = np.array([6e-8, -np.inf], dtype=np.float16)
    bf16 = (rng.standard_normal(5).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    i64 = np.arange(4, dtype=np.int64)
    arrays = {"a.f32": ("float32", f32), "b.f16": ("float16", f16), "c.bf16": ("bfloat16", bf16), "d.i64": ("int64", i64)}
    path = HERE / "tensors.safetensors"
    safetensors.serialize_file({k: spec(d, a) for k, (d, a) in arrays.items()}, str(path),
                               metadata={"format": "pt ✓ ünïcode"})  # one key: the writer orders keys by hash

    expected = []
    with safetensors.safe_open(str(path), framework="numpy") as f:
        for name in ["a.f32", "b.f16"]:
            x = f.get_tensor(name)
            expected.append({"name": name, "shape": list(x.shape), "bits": bits(x.astype(np.float32))})
    bf = (bf16.astype(np.uint32) << 16).view(np.float32)  # bfloat16 = upper half of a float32
    expected.append({"name": "c.bf16", "shape": [5], "bits": bits(bf)})
    write_json("tensors_expected.json", {"tensors": expected})

    shard_dir = HERE / "sharded"
    shard_dir.mkdir(exist_ok=True)
    shards = {
        "model-00001-of-00002.safetensors": {"embed.weight": np.arange(6, dtype=np.float32).reshape(2, 3)},
        "model-00002-of-00002.safetensors": {"norm.weight": np.array([1.5, -2.0], dtype=np.float32),
                                             "head.bias": np.array([0.25], dtype=np.float16)},
    }
    weight_map = {}
    for shard, tensors in shards.items():
        safetensors.serialize_file({k: spec(v.dtype.name, v) for k, v in tensors.items()},
                                   str(shard_dir / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in tensors})
    with open(shard_dir / "model.safetensors.index.json", "w") as f:
        json.dump({"metadata": {"total_size": 38}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")


def make_smollm2_rows() -> None:
    if not SMOLLM2.exists():
        print(f"{SMOLLM2} missing (run `make setup`); smollm2_rows.json left as it is")
        return
    reader = gguf.GGUFReader(str(SMOLLM2))
    by_name = {t.name: t for t in reader.tensors}
    picks = [("token_embd.weight", [0, 1, 2, 1000, 49151]),
             ("blk.0.attn_q.weight", [0, 575]),
             ("output_norm.weight", [0])]
    out = []
    for name, rows in picks:
        t = by_name[name]
        data = t.data.reshape(-1, t.data.shape[-1])  # (rows, bytes or values per row)
        values = gguf.quants.dequantize(data[rows], t.tensor_type)
        out.append({"name": name, "type": t.tensor_type.name, "rows": rows,
                    "row_length": int(t.shape[0]), "bits": bits(values)})
    write_json("smollm2_rows.json", {"model_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                                     "tensors": out})
    print(f"smollm2_rows.json: {[(n, len(r)) for n, r in picks]}")


if __name__ == "__main__":
    os.chdir(HERE)
    rng = np.random.default_rng(20250101)
    make_gguf(rng)
    make_safetensors(rng)
    make_smollm2_rows()
