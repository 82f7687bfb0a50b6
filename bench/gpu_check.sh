#!/usr/bin/env bash
# GPU check for the triton MoE backend: the `gpu` tests, then the kernel benchmark, then a summary.
# Installs nothing; needs a CUDA GPU and the project's environment (python with torch + triton).
# Budget: under 8 minutes (tests ≤ 3 min, benchmark ≤ 4 min, each killed past its limit).
#   bash bench/gpu_check.sh            # PYTHON=/path/to/python to choose the interpreter
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
unset TRITON_INTERPRET  # compiled kernels: the interpreter would time numpy, not the GPU

if ! "$PYTHON" -c 'import sys, torch, triton; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device (or no torch/triton) in $PYTHON; nothing to check" >&2
  exit 2
fi
"$PYTHON" -c 'import torch, triton; print("#", torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)'

LOG="$(mktemp -d)"
timeout 180 "$PYTHON" -m pytest -m gpu tests -q -p no:cacheprovider >"$LOG/tests.txt" 2>&1
TESTS_RC=$?
tail -n 15 "$LOG/tests.txt"
timeout 240 "$PYTHON" bench/moe_kernels.py >"$LOG/bench.txt" 2>&1
BENCH_RC=$?
cat "$LOG/bench.txt"

echo
echo "## gpu_check summary"
echo "| step | result |"
echo "|---|---|"
echo "| pytest -m gpu tests | rc $TESTS_RC: $(grep -E '(passed|failed|error)' "$LOG/tests.txt" | tail -n 1) |"
echo "| bench/moe_kernels.py | rc $BENCH_RC |"
grep -E '^\| triton' "$LOG/bench.txt" || true
echo
echo "router and transformers rows, large shape:"
grep -E '^large .*(router|hf-grouped_mm)' "$LOG/bench.txt" || true
[ "$TESTS_RC" -eq 0 ] && [ "$BENCH_RC" -eq 0 ]
