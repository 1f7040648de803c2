#!/usr/bin/env bash
# One command from a fresh checkout to a running service on the built-in CamVid model:
#   bash scripts/serve.sh [--port 8000] [--model NAME|PATH] ...
# TORCH_SPEC picks the torch build (default: whatever pip resolves; "torch==2.13.0" is a small CPU one).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
[ -z "${TORCH_SPEC:-}" ] || python -m pip install -q "$TORCH_SPEC"
python -m pip install -q -e .
exec python -m service "$@"
