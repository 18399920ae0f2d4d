#!/usr/bin/env bash
# Installs what nb needs, idempotently: Debian packages (apt-get, only when missing).
# Later issues add model downloads into a cache outside the repository.
set -euo pipefail

packages=(pkg-config libcmark-gfm-dev libcmark-gfm-extensions-dev libopenblas-dev libfftw3-dev chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6 toolchain needed)" >&2; exit 1; }
bash "$(dirname "$0")/fetch_models.sh"
bash "$(dirname "$0")/fetch_fixtures.sh"
