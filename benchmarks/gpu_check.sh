#!/usr/bin/env bash
# GPU check, for a machine with CUDA: the test suite's GPU-marked tests, then every benchmark on the
# GPU (bf16 autocast, as the app trains there), printing the table of targets.
#
#   PYTHON=.venv/bin/python benchmarks/gpu_check.sh [--quick] [--results DIR] [--readme]
#
# PYTHON must have requirements-dev.txt installed with a CUDA build of torch (pip's default torch
# wheel on Linux). Extra arguments go to benchmarks/run.py; its table lands in
# benchmarks/results/cuda/summary.md unless --results says otherwise. Exits non-zero if there is
# no GPU, a GPU test fails, or a benchmark cannot run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device; nothing to check")
print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
PY
"$PYTHON" -m pytest -q -m gpu tests/test_gpu.py
"$PYTHON" benchmarks/run.py --device cuda "$@"
