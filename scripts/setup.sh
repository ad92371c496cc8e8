#!/usr/bin/env bash
# Create .venv (if needed) and install tts-pipeline into it. Idempotent.
#   bash scripts/setup.sh          # runtime dependencies
#   bash scripts/setup.sh dev      # + test tools (pytest, ruff, moto)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, pinned: 2.13.0 is a CPU build here; anything unpinned pulls a multi-GB CUDA build.
python -m pip install -q "torch==2.13.0"
extra=""
[ "${1:-}" = "dev" ] && extra="[dev]"
python -m pip install -q -e ".${extra}"
echo "==> installed: $(tts-pipeline --version)"
