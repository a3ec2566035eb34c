#!/usr/bin/env bash
# GPU check of the BraTS network (see benchmarks/gpu_check.py): under 5 minutes on one GPU.
#
# On the GPU machine, from the repository root:
#     bash benchmarks/gpu_check.sh                 # then the gpu_check.py options, e.g. --iterations 40
#     bash benchmarks/gpu_check.sh --methods       # every method of Table 1 instead (benchmarks/seg_method_cost.py):
#                                                  # step time and peak memory at 160x160x80, batch 2, bf16, and
#                                                  # mmFormer at 128^3; then seg_method_cost.py options
# Before, where PyPI can be reached (this workplace's GPU machines reach no registry):
#     bash benchmarks/gpu_check.sh --fetch-wheels  # monai's wheel into .whl/ (carry .whl with the tree)
#
# What it installs: nothing into the system. The GPU image's own CUDA build of
# torch is used as it is (the project pins torch==2.13.0 for CPU machines only;
# installing that pin there would replace the CUDA build); mckd runs from this
# working tree (src/ on PYTHONPATH); a package the image lacks (monai, for the
# U-Net blocks and the Dice loss) comes from .whl/ if it is there, else from
# the registry, into a private folder (/tmp/mckd-gpu-site).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NEEDED="monai==1.6.1"  # the version the CPU environment was tested with; pure Python

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p .whl
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    $PY -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl $NEEDED
    ls -l .whl
    exit 0
fi

SITE=/tmp/mckd-gpu-site
missing=$($PY - <<'PYEOF'
import importlib.util
need = {"monai": "monai", "yaml": "pyyaml", "safetensors": "safetensors", "tqdm": "tqdm", "numpy": "numpy"}
print(" ".join(pip for mod, pip in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: installing into $SITE: $missing"
    if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
        $PY -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
    else
        $PY -m pip install --quiet --no-deps --target "$SITE" $(echo "$missing" | sed "s/\bmonai\b/$NEEDED/")
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader 2>/dev/null || true
$PY -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'monai', monai.__version__)"
if [ "${1:-}" = "--methods" ]; then
    shift
    exec timeout 290 $PY benchmarks/seg_method_cost.py --config configs/table1_gpu.yaml --device cuda --precision bf16 \
        --iterations 10 --warmup 5 --crop-of mmformer=128,128,128 --budget-s 250 "$@"
fi
exec timeout 290 $PY benchmarks/gpu_check.py "$@"
