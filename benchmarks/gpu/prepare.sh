#!/usr/bin/env bash
# Here (with a package registry): put in .carry/ what the GPU machine lacks, for `device.run`
# to carry: wheels of torch-pruning and fvcore (and fvcore's pure-Python dependencies the GPU
# image does not hold), and the CIFAR-10 JPEG archive. About 21 MB; .carry/ is git-ignored.
set -euo pipefail
cd "$(dirname "$0")/../.."
archive=${1:-../shared/datasets/cifar10-jpg.tar.gz}
mkdir -p .carry/wheels
python3 -m pip wheel --quiet --no-deps --wheel-dir .carry/wheels \
    "torch-pruning>=1.6.1,<1.7" "fvcore>=0.1.5" "iopath>=0.1.7,<0.1.11" "yacs>=0.1.6" termcolor
cp "$archive" .carry/cifar10-jpg.tar.gz
ls -l .carry .carry/wheels
du -sh .carry
