#!/usr/bin/env bash
# The CPU reproduction campaign (docs/reproduce.md): each row a full-protocol `ptmdd fit`, one after another, pinned
# to one core with one thread (two OpenMP processes on the same cores slow each other many times: docs/speed.md),
# resumable: run the same command again after a kill and every row continues from its last.ckpt; finished rows
# (results.json + synthetic_set.pt) are skipped.
#   bash scripts/reproduce.sh OUTDIR [ROW ...]        rows: dm_ipc10 dm_ipc10_clom (default: all, in this order)
# Environment: SEEDS (default "0"), PTMDD_CORE (the core to pin to, default 1), PYTHON (default .venv/bin/python).
# Run it from a clone at a fixed commit; OUTDIR/commit.txt records the commit, and a different one is refused.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: bash scripts/reproduce.sh OUTDIR [ROW ...]}
shift
rows=("$@")
[ ${#rows[@]} -eq 0 ] && rows=(dm_ipc10 dm_ipc10_clom)
python=${PYTHON:-$repo/.venv/bin/python}
commit=$(git -C "$repo" rev-parse HEAD)
mkdir -p "$out"
cd "$out"
if [ -f commit.txt ] && [ "$(cat commit.txt)" != "$commit" ]; then
  echo "reproduce.sh: $out holds runs of commit $(cat commit.txt), this checkout is $commit; use that commit or another OUTDIR" >&2
  exit 2
fi
echo "$commit" > commit.txt
for row in "${rows[@]}"; do
  config="$repo/configs/reproduce/$row.yaml"
  [ -f "$config" ] || { echo "reproduce.sh: no row $row ($config)" >&2; exit 2; }
  for seed in ${SEEDS:-0}; do
    name="reproduce_${row}_seed${seed}"
    run=$(ls -d "lightning_logs/$name"/version_* 2>/dev/null | tail -n 1 || true)
    if [ -n "$run" ] && [ -f "$run/results.json" ] && [ -f "$run/synthetic_set.pt" ]; then
      echo "[reproduce] $name: done ($run)"
      continue
    fi
    resume=()
    if [ -n "$run" ] && [ -f "$run/checkpoints/last.ckpt" ]; then
      # continue with the precision the run started with (the default differs between CPU kinds)
      precision=$(sed -n 's/^  precision: *//p' "$run/config.yaml" | head -n 1)
      resume=(--ckpt_path last)
      [ -n "$precision" ] && resume+=(--trainer.precision "$precision")
    fi
    echo "[reproduce] $name: $([ ${#resume[@]} -gt 0 ] && echo "resuming $run" || echo "starting") at $(date -u +%FT%TZ)"
    OMP_NUM_THREADS=1 PYTHONPATH="$repo" taskset -c "${PTMDD_CORE:-1}" "$python" -m ptmdd_lightning fit \
      --config "$config" --seed_everything "$seed" --trainer.logger.init_args.name "$name" \
      --trainer.enable_progress_bar false "${resume[@]}" >> "$name.log" 2>&1
    echo "[reproduce] $name: finished at $(date -u +%FT%TZ)"
  done
done
