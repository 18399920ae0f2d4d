#!/usr/bin/env python3
"""Writes the checkpoint-reader fixtures for Tests/EngineTests (GGUFTests, SafeTensorsTests).

Independent references: llama.cpp's gguf-py (writer, quantizers, reader, dequantizers)
and Hugging Face's safetensors. Run from anywhere:

    python3 -m venv ~/.cache/nb-venv-gguf
    ~/.cache/nb-venv-gguf/bin/pip install gguf numpy safetensors
    ~/.cache/nb-venv-gguf/bin/python Tests/EngineTests/Fixtures/make_checkpoint_fixtures.py

Outputs (next to this script):
- checkpoint.gguf: metadata of every GGUF value type (nested arrays, unicode strings),
  alignment 64, tensors F32, F16, BF16, Q8_0, Q4_0, Q4_1 (1-D to 3-D).
- checkpoint_gguf_expected.json: each tensor read back with GGUFReader and dequantized by
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
from pathlib import Path

import gguf
import numpy as np
import safetensors
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

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
    path = HERE / "checkpoint.gguf"
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
