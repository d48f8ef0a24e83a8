#!/usr/bin/env bash
# GPU measurements on a lent machine (the `device` tool; see docs/benchmarks.md):
# sampler ms/batch (B=4 pairs, 160³) and CVA training steps (ResEnc-L 128³, Primus-M 160³, batch 4).
# Expects, carried with the call: .whl/ (wheels of packages the GPU image lacks: zarr, numcodecs,
# donfig, crc32c, webdataset, braceexpand, dynamic-network-architectures, timm 1.0.22, nibabel), .gpu/store (a
# preprocessed store, e.g. from `openmind-prep demo`) and .gpu/mni.nii.gz (nilearn's MNI152 T1).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
python3 benchmarks/sampler.py --device cuda --batches 50 --volume .gpu/mni.nii.gz 2>&1 | tee "$OUT/sampler_cuda.txt"
python3 benchmarks/sampler.py --device cuda --batches 50 --always-spatial --volume .gpu/mni.nii.gz 2>&1 | tee "$OUT/sampler_cuda_p1.txt"
python3 benchmarks/train_step.py --store .gpu/store --steps 10 --warmup 3 --num-workers 4 2>&1 | tee "$OUT/train_step.txt"
