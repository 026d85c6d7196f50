#!/usr/bin/env bash
# Evaluation only: the Intel run's export, evaluated on this machine under the run's protocol (10 ConvNet-3 x 500
# epochs, fp32, evaluation seed 0): isolates the evaluation's part of a cross-kind difference.
set -uo pipefail
while pgrep -f "crosskind --trainer.logger.init_args.name rerun" >/dev/null; do sleep 20; done
cd /work/main
run=/work/findings_runs/lightning_logs/sweeps/findings_domain/runs/alpha=100__real_batch=uniform/seed0/version_0
OMP_NUM_THREADS=1 .venv/bin/python -m ptmdd_lightning test --config configs/evaluate.yaml \
  --model.init_args.path "$run/synthetic_set.pt" --model.init_args.archs '[ConvNet]' --model.init_args.num_models 10 \
  --model.init_args.protocol.epochs 500 --model.init_args.protocol.precision 32 --model.init_args.baseline false \
  --data.init_args.classes '[5, 6, 7, 8, 9]' --trainer.logger.init_args.save_dir /work/crosskind \
  --trainer.logger.init_args.name intel_export > /work/crosskind/eval.log 2>&1
echo "eval exit $? at $(date -u +%FT%TZ)" >> /work/crosskind/commit.txt
