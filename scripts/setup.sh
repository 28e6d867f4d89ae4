#!/usr/bin/env bash
# Set up stune in ./.venv: torch first (pinned, so no CUDA build is pulled by accident on a CPU
# machine), then stune and its test tools with everything held to constraints.txt.
#   CPU machines: torch==2.13.0 resolves to the CPU wheel where pip is configured for it; elsewhere
#                 set TORCH_INDEX_URL to PyTorch's CPU wheel index to get the small CPU build.
#   GPU machines: the same command installs PyPI's CUDA build of torch 2.13.0.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
"${PIP[@]}" -c constraints.txt -e ".[dev]"
.venv/bin/python -c "import torch, sentence_transformers, ray, optuna; print(f'stune ready: torch {torch.__version__}, sentence-transformers {sentence_transformers.__version__}, ray {ray.__version__}, optuna {optuna.__version__}, cuda={torch.cuda.is_available()}')"
