#!/usr/bin/env bash
# The prepared device check for a session that has a GPU: CUDA tests, then the GPU numbers every issue asks
# for, in one call of about 8 minutes on one H100/H200. Results land in $OUT (the device tool's folder) or
# outputs/gpu_check; merge the BENCHMARKS.md sections it writes there into the repository's BENCHMARKS.md.
#
# The device image has torch, CuPy, transformers, peft, accelerate, timm and scikit-image but not diffusers,
# kornia, lpips or piq: carry their wheels (README of the device tool), from the repository root here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl diffusers==0.42.1 kornia==0.9.0 kornia-rs==0.2.0
# then run `bash benchmarks/gpu_check.sh` through the device tool with carry [".whl"] and timeout_s 600.
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, keep going on failure
  local name=$1 limit=$2; shift 2
  echo "== $name"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "== $name exit $?" | tee -a "$OUT/$name.log"
  tail -n 25 "$OUT/$name.log"
}
step pytest_gpu 120 python3 -m pytest -q -m gpu tests/kernels
step renderers 90 python3 -m benchmarks.bench_renderers --output "$OUT/BENCHMARKS.md"
step pisa 120 python3 -m benchmarks.bench_pisa --devices cuda --output "$OUT/BENCHMARKS.md" --json "$OUT/pisa.json"
step pytest_gpu_pisa 90 python3 -m pytest -q -m gpu tests/models/test_pisa_sparse.py
step pisa_sparse 120 python3 -m benchmarks.bench_pisa --plan sparse --devices cuda --dense-16k --output "$OUT/BENCHMARKS.md" --json "$OUT/pisa_sparse.json"
step pipeline 150 python3 -m benchmarks.gpu_pipeline --json "$OUT/pipeline.json"
step train 120 python3 -m benchmarks.gpu_train --json "$OUT/train.json"
