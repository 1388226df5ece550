#!/usr/bin/env bash
# There (one GPU, no registry), from the repository root, after prepare.sh ran here:
#   install the carried wheels, run the GPU tests (pytest -m gpu), time one training step
#   of the dense and the pruned VGG16 (benchmarks/gpu/steps.py), find how many epochs fit
#   in MINUTES (default 6), run the setting, and leave its results, the steps', the fit
#   and the log in $OUT (./gpu-out): 8 files, the most the device tool brings back.
set -euo pipefail
cd "$(dirname "$0")/../.."
setting=${SETTING:-vgg16-cifar10-fast}
minutes=${MINUTES:-6}
out=${OUT:-gpu-out}
mkdir -p "$out"
python3 -m pip install --quiet --no-index --no-deps .carry/wheels/*.whl
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/run.log"
python3 -m pytest -p no:cacheprovider -q -m gpu tests/test_gpu.py 2>&1 | tee -a "$out/run.log" \
    || echo "GPU tests: some failed (above)" | tee -a "$out/run.log"
start=$(date +%s)
python3 benchmarks/gpu/steps.py --batch 256 1024 --peak-tflops 989.4 --out "$out/steps" \
    2>&1 | tee -a "$out/run.log" || echo "steps: failed (above)" | tee -a "$out/run.log"
echo "steps: $(( $(date +%s) - start )) s" | tee -a "$out/run.log"
python3 -m benchmarks fit "$setting" --minutes "$minutes" | tee "$out/fit.json"
epochs=$(python3 -c "import json,sys; print(json.load(open('$out/fit.json'))['epochs'])")
start=$(date +%s)
python3 -m benchmarks run "$setting" --epochs "$epochs" --cache /tmp/bench --fresh \
    --out "$out/$setting" 2>&1 | tee -a "$out/run.log"
echo "whole run: $(( $(date +%s) - start )) s" | tee -a "$out/run.log"
