#!/usr/bin/env bash
# Installs everything dpp needs on a fresh machine (idempotent): the CPU build of torch first
# (a newer torch would pull a multi-GB CUDA build), the Fashion-MNIST Debian package when
# apt is available, then dpp itself with its development extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
    $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null; } \
        || echo "setup: could not install dataset-fashion-mnist; dpp demo will fall back to sklearn digits" >&2
fi

"$PY" -m pip install --quiet -e ".[dev]"
