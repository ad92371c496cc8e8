#!/usr/bin/env bash
# Set up and run the whole pipeline on the bundled demo Codex project (offline, CPU, minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export DVC_NO_ANALYTICS=1
tts-pipeline run --config languages/demo.yaml "$@"
