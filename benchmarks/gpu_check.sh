#!/usr/bin/env bash
# The GPU check, as one short prepared command (under 5 minutes) on a machine with CUDA and a
# Python that has torch and torchvision: from the repository root, `bash benchmarks/gpu_check.sh`.
# featviz runs from this checkout (no install needed: its other needs — typer, rich, Pillow,
# matplotlib, numpy — are in any PyTorch image). Wheels in .whl/ (pytorch-grad-cam, torchcam,
# isal, ttach: see benchmarks/README.md "GPU check") are installed first when present; a peer
# that is missing is reported, not fatal.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/featviz-site .whl/*.whl
  export PYTHONPATH="/tmp/featviz-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 FEATVIZ_WORKER=off
timeout 280 python3 benchmarks/gpu_check.py --images "${GPU_CHECK_IMAGES:-256}" "$@"
