#!/usr/bin/env bash
# The GPU check (issue "Green on every machine", point 7): one command on a single-GPU machine, within ~10 minutes.
#   bash scripts/gpu_check.sh OUTDIR
# 1. installs (the venv of scripts/env.sh), 2. runs the test suite with CUDA visible, 3. runs the quickstart on the
# GPU (short: 100 steps, 2 evaluation models x 100 epochs), 4. runs `benchmarks/bench.py --quick` on the GPU.
# Every log, the results tables and the benchmark JSON/Markdown go into OUTDIR; `summary.txt` lists each step's exit
# status and wall time. A failing step does not stop the later ones; the script exits non-zero if any failed.
# Data: Fashion-MNIST from Debian's dataset-fashion-mnist, or FASHION_ROOT=<folder with FashionMNIST/raw>.
set -uo pipefail
OUT=${1:?usage: bash scripts/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
status=0
step() {  # step NAME TIMEOUT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc ${SECONDS}s-${t0}s=$((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || status=1
}
: > "$OUT/summary.txt"
{ nvidia-smi || true; lscpu | head -20; git rev-parse HEAD; } > "$OUT/machine.txt" 2>&1
step install 900 bash -c 'source scripts/env.sh'
step cuda_visible 60 .venv/bin/python -c 'import torch; assert torch.cuda.is_available(), "no CUDA"; print(torch.cuda.get_device_name(0))'
step tests 600 .venv/bin/python -m pytest -m "not slow" -q -x --durations=20
ROOT_ARGS=()
[ -n "${FASHION_ROOT:-}" ] && ROOT_ARGS=(--data.init_args.root "$FASHION_ROOT")
step quickstart 600 .venv/bin/ptmdd fit --config configs/quickstart.yaml --trainer.accelerator gpu \
  --trainer.devices 1 --trainer.max_steps 100 --trainer.logger.init_args.save_dir "$OUT/logs" "${ROOT_ARGS[@]}"
find "$OUT/logs" -name 'results.*' -exec cp {} "$OUT/" \; 2>/dev/null
step bench 600 .venv/bin/python benchmarks/bench.py --quick --out "$OUT/bench"
exit $status
