#!/usr/bin/env bash
# The prepared device check for a session that has a GPU: the CUDA tests, then the GPU numbers every issue asks
# for, on one H100/H200, in ONE device call.
#
# Budget: a session gets one call of at most 600 s and 15 min of device time in all, machine start included
# (minutes). So this script stops itself after GPU_CHECK_BUDGET_S seconds (default 540, from its own start,
# wheel install included), leaving the call's last minute as slack. Each step has its own time limit, cut to
# what is left of the budget; a step that would get under 15 s is skipped and recorded as such. The limits
# below, with 30 s for the wheel install and 10 s for nvidia-smi, sum to 540 s. Steps run most important first:
#   pytest_gpu 90 s   every `gpu`-marked test (CUDA kernels, sparse/flex PISA vs the reference on CUDA)
#   sdxl 180 s        the full SDXL architecture (random weights, bf16): inference at 512 and 1024x768 px, full
#                     frame and tiled, both protocols, planner estimate vs peak; a training step at 512 px with
#                     and without gradient checkpointing (BENCHMARKS.md "Full SDXL architecture", GPU rows)
#   pisa_sparse 90 s  PISA chunked vs sparse vs flex_sparse at 1024/2048 px and training settings
#   pipeline 60 s     one-step pipeline latency and peak memory at 2048 px (full frame, then tiled)
#   train 30 s        one SDXL training step at 512 px, batch 4, with/without gradient checkpointing
#   pisa 30 s         dense reference vs chunked PISA memory and time (the older PISA section)
#   renderers 20 s    classical renderers, CPU and CUDA
# Partial results survive a cut: every step logs to $OUT/NAME.log as it runs (the benchmarks print one JSON
# row per measured setting, flushed), and $OUT/summary.tsv gets a line per step (exit status 124 = cut by its
# limit) as soon as the step ends. Results land in $OUT (the device tool's folder) or outputs/gpu_check; merge
# the BENCHMARKS.md sections written there into the repository's BENCHMARKS.md (a benchmark writes its
# section only when it finishes; otherwise take the rows from its log).
#
# The device image has torch, CuPy, transformers, peft, accelerate, timm and scikit-image but not diffusers,
# kornia, lpips or piq: carry their wheels (README of the device tool), from the repository root here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl diffusers==0.42.1 kornia==0.9.0 kornia-rs==0.2.0 lpips==0.1.4 piq==0.8.0
# then run `bash benchmarks/gpu_check.sh` through the device tool with carry [".whl"] and timeout_s 600.
# (Test modules that import a package the image lacks fail to collect; pytest_gpu carries on without them.)
set -uo pipefail
OUT=${OUT:-outputs/gpu_check}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
MIN_STEP=15
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SECONDS=0
printf 'step\texit\tseconds\tlimit\n' > "$OUT/summary.tsv"

if ls .whl/*.whl >/dev/null 2>&1; then
  timeout -k 5 30 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  printf 'wheels\t%s\t%s\t30\n' "$?" "$SECONDS" >> "$OUT/summary.tsv"
fi
timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

step() {  # step NAME SECONDS COMMAND...: run with min(SECONDS, budget left), log to $OUT/NAME.log, keep going
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < MIN_STEP)); then
    echo "== $name skipped: ${left} s of the ${BUDGET} s budget left"
    printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$OUT/summary.tsv"
    return
  fi
  echo "== $name (limit ${limit} s, ${left} s of the budget left)"
  local start=$SECONDS rc
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/$name.log"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" >> "$OUT/summary.tsv"
}
step pytest_gpu 90 python3 -m pytest -q -p no:cacheprovider -m gpu --continue-on-collection-errors tests
step sdxl 180 python3 -m benchmarks.bench_sdxl --train_steps 2 --output "$OUT/BENCHMARKS.md" --json "$OUT/sdxl.json"
step pisa_sparse 90 python3 -m benchmarks.bench_pisa --plan sparse --devices cuda --output "$OUT/BENCHMARKS.md" \
  --json "$OUT/pisa_sparse.json"
step pipeline 60 python3 -m benchmarks.gpu_pipeline --sizes 2048 --modes full tiled --repeats 1 \
  --json "$OUT/pipeline.json"
step train 30 python3 -m benchmarks.gpu_train --batches 4 --repeats 2 --json "$OUT/train.json"
step pisa 30 python3 -m benchmarks.bench_pisa --devices cuda --timeout 15 --output "$OUT/BENCHMARKS.md" \
  --json "$OUT/pisa.json"
step renderers 20 python3 -m benchmarks.bench_renderers --output "$OUT/BENCHMARKS.md"
echo "gpu_check done after ${SECONDS} s of the ${BUDGET} s budget; summary: $OUT/summary.tsv"
cat "$OUT/summary.tsv"
