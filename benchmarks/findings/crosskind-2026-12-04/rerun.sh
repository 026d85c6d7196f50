#!/usr/bin/env bash
# Cross-CPU-kind check: the Intel (AMX) campaign run findings_domain alpha=100__real_batch=uniform@seed0, rerun on this
# machine with the identical config (same seeds, bf16-mixed distillation, fp32 evaluation, 10 ConvNet-3 x 500 epochs).
set -euo pipefail
run=/work/findings_runs/lightning_logs/sweeps/findings_domain/runs/alpha=100__real_batch=uniform/seed0/version_0
cd /work/findings_runs   # pool_root ptm_pool/findings is relative
git -C /work/main rev-parse HEAD > /work/crosskind/commit.txt
lscpu | grep "Model name" >> /work/crosskind/commit.txt
OMP_NUM_THREADS=1 PTMDD_PRECISION=bf16-mixed /work/main/.venv/bin/python -m ptmdd_lightning fit --config "$run/sweep_point.yaml" \
  --trainer.logger.init_args.save_dir /work/crosskind --trainer.logger.init_args.name rerun \
  > /work/crosskind/fit.log 2>&1
echo "fit exit $? at $(date -u +%FT%TZ)" >> /work/crosskind/commit.txt
