#!/usr/bin/env bash
# README command 1: set everything up on a fresh machine and run the quickstart (DM + CLoM, Fashion-MNIST, IPC 10).
# Extra arguments go to `ptmdd fit`, e.g. `bash scripts/quickstart.sh --trainer.max_steps 50`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y dataset-fashion-mnist || { $SUDO apt-get update && $SUDO apt-get install -y dataset-fashion-mnist; }
fi
exec .venv/bin/ptmdd fit --config configs/quickstart.yaml "$@"
