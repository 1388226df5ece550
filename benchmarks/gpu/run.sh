#!/usr/bin/env bash
# There (one GPU, no registry), from the repository root, after prepare.sh ran here:
#   install the carried wheels, find how many epochs fit in MINUTES (default 8), run the
#   setting, and leave its results (and the fit, and the log) in $OUT (or ./gpu-out).
set -euo pipefail
cd "$(dirname "$0")/../.."
setting=${SETTING:-vgg16-cifar10-fast}
minutes=${MINUTES:-8}
out=${OUT:-gpu-out}
mkdir -p "$out"
python3 -m pip install --quiet --no-index --no-deps .carry/wheels/*.whl
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -m benchmarks fit "$setting" --minutes "$minutes" | tee "$out/fit.json"
epochs=$(python3 -c "import json,sys; print(json.load(open('$out/fit.json'))['epochs'])")
start=$(date +%s)
python3 -m benchmarks run "$setting" --epochs "$epochs" --cache /tmp/bench --fresh \
    --out "$out/$setting" 2>&1 | tee "$out/run.log"
echo "whole run: $(( $(date +%s) - start )) s" | tee -a "$out/run.log"
