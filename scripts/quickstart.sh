#!/usr/bin/env bash
# README command 1: set everything up on a fresh machine and run the quickstart: Fashion-MNIST, IPC 10, DM + CLoM and
# DM alone under the same budget, both evaluated with the random-real baseline under the identical protocol, then
# one table with the paired difference (python -m ptmdd_lightning.compare).
# Extra arguments go to both `ptmdd fit` runs, e.g. `bash scripts/quickstart.sh --trainer.max_steps 50`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y dataset-fashion-mnist || { $SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist; }
fi
latest() { ls -d "lightning_logs/$1"/version_* | sort -V | tail -n 1; }
.venv/bin/ptmdd fit --config configs/quickstart.yaml "$@"
clom=$(latest quickstart)
.venv/bin/ptmdd fit --config configs/quickstart.yaml --model.init_args.ptms '[]' \
  --trainer.logger.init_args.name quickstart_dm_alone "$@"
alone=$(latest quickstart_dm_alone)
echo
echo "[ptmdd] quickstart: $alone (DM alone) and $clom (DM + CLoM), same seed and budget, same evaluation"
.venv/bin/python -m ptmdd_lightning.compare "$alone" "$clom" --labels "DM alone" "DM + CLoM"
