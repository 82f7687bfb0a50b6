#!/usr/bin/env bash
# The GPU acceptance of the triton MoE path, in one call of at most 8 minutes on one H100/H200:
#   1. install check            (python bench/gpu_steps.py install)                 ≤  25 s
#   2. the `gpu` tests, fp32 and bf16 (pytest -m gpu)                               ≤ 140 s
#   3. the triton self-check, fp32 and bf16 (python bench/gpu_steps.py self-check)  ≤  40 s
#   4. the MoE layer at T=16384 H=2048 E=64 k=8 I=1024 bf16: triton vs torch vs
#      transformers, fwd+bwd, 2 warm-ups + 7 rotations (bench/moe_kernels.py)       ≤  80 s
#   5. a training step of a ~100 M-active model, bf16-mixed, triton vs torch
#      (python bench/gpu_steps.py train-step)                                       ≤  65 s
#   6. the tiny pipeline, every stage, on the GPU
#      (python bench/gpu_steps.py pipeline; ~100 s on a 2-core CPU)                ≤ 100 s
# then one summary table against the targets (triton layer ≥ 1.3x torch, ≥ 50 % of the bf16
# matmul peak measured in the same run). Each step runs under its own timeout, cut further to
# what is left of a 465 s deadline (a step that overruns is reported as such), so the whole
# stays under 8 minutes. Installs nothing; refuses at once, with a non-zero exit, where there is
# no CUDA device.
#   bash bench/gpu_check.sh              # PYTHON=/path/to/python to choose the interpreter
#   GPU_CHECK_OUT=dir bash bench/gpu_check.sh   # keep the step outputs in dir
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
unset TRITON_INTERPRET  # compiled kernels: the interpreter would time numpy, not the GPU

if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA device visible to $PYTHON (torch.cuda.is_available() is False); nothing checked" >&2
  exit 2
fi

OUT="${GPU_CHECK_OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
START=$SECONDS
DEADLINE=465  # seconds after START: 8 minutes less the summary and a kill's grace period
FAILED=()

step() {  # step NAME SECONDS COMMAND...: run under a timeout, output to $OUT/NAME.log and here
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - (SECONDS - START)))
  [ "$left" -lt "$limit" ] && limit=$left
  echo
  if [ "$limit" -le 0 ]; then
    echo "### $name: not run, the 8-minute budget is spent" | tee "$OUT/$name.log"
    FAILED+=("$name (not run)")
    return
  fi
  echo "### $name (limit ${limit} s)"
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu_check: $name stopped at its ${limit} s limit" | tee -a "$OUT/$name.log"
  fi
  [ "$rc" -eq 0 ] || FAILED+=("$name (rc $rc)")
}

step install 25 "$PYTHON" bench/gpu_steps.py install --out "$OUT/install.json"
step tests 140 "$PYTHON" -m pytest -m gpu tests -q -p no:cacheprovider
step self_check 40 "$PYTHON" bench/gpu_steps.py self-check --out "$OUT/self_check.json"
step moe_kernels 80 "$PYTHON" bench/moe_kernels.py --shapes large --reps 7 --warmups 2 \
  --json "$OUT/moe_kernels.json"
step train_step 65 "$PYTHON" bench/gpu_steps.py train-step --reps 7 --warmups 2 \
  --out "$OUT/train_step.json"
step pipeline 100 "$PYTHON" bench/gpu_steps.py pipeline --out "$OUT/pipeline.json"

"$PYTHON" bench/gpu_steps.py summary "$OUT"
echo
echo "gpu_check: $((SECONDS - START)) s in all; step outputs in $OUT"
if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "gpu_check: failed steps: ${FAILED[*]}" >&2
  exit 1
fi
