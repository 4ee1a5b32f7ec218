#!/usr/bin/env bash
# The GPU check: run as is from the repository root on a machine with NVIDIA GPUs.
#
#   scripts/gpu_check.sh [KEY=VALUE ...]        # writes $OUT/gpu_check.json (out/gpu_check.json without $OUT)
#
# Measures (anygen/training/gpu_check.py): the 150M recipe's tokens/s and MFU on one GPU, 200 steps, bf16;
# the same recipe under FSDP2 on all GPUs when there are several; the sampler's decode tokens/s at batch
# 1 and 16 against transformers generate(). training/README.md's GPU table is filled from the JSON.
#
# Assumptions (no internet on the GPU machine; the repository is copied without its .venv):
# - a Python >= 3.10 with a CUDA build of torch is installed: $PYTHON if set, else python3;
# - anygen's other dependencies (pyproject.toml) are importable from it; those missing are installed
#   with pip (from a local index or wheel cache configured for pip, e.g. PIP_FIND_LINKS), else the
#   script stops and names them. anygen itself runs from this checkout (PYTHONPATH), not installed.
# - nothing is downloaded: the models have random weights and the data is synthetic.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT_DIR="${OUT:-out}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" - <<'PYEOF'
import sys
import torch
assert sys.version_info >= (3, 10), f"Python >= 3.10 needed, this is {sys.version}"
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA GPU")
print(f"torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
PYEOF

# module name -> pip requirement (pyproject.toml's runtime dependencies)
missing=$("$PY" - <<'PYEOF'
import importlib.util
need = {"transformers": "transformers>=5.0,<5.40", "accelerate": "accelerate>=1.0", "safetensors": "safetensors>=0.4",
        "yaml": "pyyaml>=6", "numpy": "numpy>=1.26", "scipy": "scipy>=1.11", "PIL": "pillow>=10", "tqdm": "tqdm>=4.66",
        "psutil": "psutil>=5.9", "sentencepiece": "sentencepiece>=0.2", "diffusers": "diffusers>=0.35",
        "vector_quantize_pytorch": "vector-quantize-pytorch>=1.20", "emoji": "emoji>=2.10"}
print(" ".join(req for mod, req in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: installing $missing"
    "$PY" -m pip install $missing || { echo "gpu_check: cannot install: $missing (no index reachable?)"; exit 1; }
fi

"$PY" -m anygen.training.gpu_check --out "$OUT_DIR" "$@"
