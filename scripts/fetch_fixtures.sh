#!/usr/bin/env bash
# Writes the GGUF test fixtures (checkpoint.gguf, tiny-llama.gguf, tiny-llama3.gguf, tiny-qwen2.gguf) into the cache outside
# the repository (~/.cache/nb/fixtures, or $NB_CACHE/fixtures) with scripts/make_gguf_fixtures.py,
# in a small venv holding llama.cpp's gguf-py (PyPI), and checks their SHA-256. They are model
# files, so they are generated here rather than committed. Idempotent.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cache="${NB_CACHE:-$HOME/.cache/nb}"
out="$cache/fixtures"
venv="$cache/venv-fixtures"
# file | sha256 (the bytes the committed expectations were made from)
fixtures=(
  "checkpoint.gguf|10aa9c31e3b44ead4137025741a5aae853e69ac7d595e802d2288202ae7321b9"
  "tiny-llama.gguf|652db76e6186bcaf25e8ab10213eb8bd276898077afa2523d786f0ba78f564a9"
  "tiny-llama3.gguf|8a0fb4804014576aff86aca3ab2c5268e76c8817b1ada075acccf32165a7b033"
  "tiny-qwen2.gguf|22cf81ec6de675b3d9f3e4bfe18aff402c01733e8c2a0688fa0e5591194607f5"
)

digest() { sha256sum "$1" | cut -d' ' -f1; }
ok() {
  for f in "${fixtures[@]}"; do
    IFS='|' read -r name sum <<<"$f"
    [ -f "$out/$name" ] && [ "$(digest "$out/$name")" = "$sum" ] || return 1
  done
}

ok && exit 0
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import gguf, numpy, safetensors" 2>/dev/null; then
  echo "fixtures: installing gguf-py into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0
fi
mkdir -p "$out"
staging="$(mktemp -d "$cache/fixtures.XXXXXX")"
"$venv/bin/python" "$here/make_gguf_fixtures.py" "$staging" >/dev/null
for f in "${fixtures[@]}"; do
  IFS='|' read -r name sum <<<"$f"
  got=$(digest "$staging/$name")
  [ "$got" = "$sum" ] || { rm -rf "$staging"; echo "fixtures: $name has sha256 $got, expected $sum" >&2; exit 1; }
  mv "$staging/$name" "$out/$name"
  echo "fixtures: $name ok"
done
rm -rf "$staging"
