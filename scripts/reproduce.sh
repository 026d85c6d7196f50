#!/usr/bin/env bash
# The CPU reproduction campaign (docs/reproduce.md): each row a full-protocol `ptmdd fit`, one after another, pinned
# to one core with one thread (two OpenMP processes on the same cores slow each other many times: docs/speed.md),
# resumable: run the same command again after a kill and every run continues from its last.ckpt; finished runs
# (results.json + synthetic_set.pt) are skipped. At the end it writes OUTDIR/table.md (python -m
# ptmdd_lightning.reproduce OUTDIR).
#   bash scripts/reproduce.sh OUTDIR [ROW ...]
# Rows, in this default order: dm_ipc10 dm_ipc10_clom (seed 0), dsa_ipc1 dsa_ipc1_clom (seeds 0 1 2),
# dc_ipc1 dc_ipc1_clom (seed 0). Environment: SEEDS (the seeds of every row, overriding those), PTMDD_CORE (the
# core to pin to, default 1), PYTHON (default .venv/bin/python of this checkout).
# Run it from a clone at a fixed commit: every run records its commit (OUTDIR/<run>.commit), and a run of another
# commit is never continued (start that row in another OUTDIR, or check out its commit).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: bash scripts/reproduce.sh OUTDIR [ROW ...]}
shift
rows=("$@")
[ ${#rows[@]} -eq 0 ] && rows=(dm_ipc10 dm_ipc10_clom dsa_ipc1 dsa_ipc1_clom dc_ipc1 dc_ipc1_clom)
python=${PYTHON:-$repo/.venv/bin/python}
commit=$(git -C "$repo" rev-parse HEAD)
for row in "${rows[@]}"; do
  [ -f "$repo/configs/reproduce/$row.yaml" ] || { echo "reproduce.sh: no row $row (configs/reproduce/$row.yaml)" >&2; exit 2; }
done
mkdir -p "$out"
cd "$out"
for row in "${rows[@]}"; do
  config="$repo/configs/reproduce/$row.yaml"
  seeds=${SEEDS:-0}
  case "$row" in dsa_ipc1*) seeds=${SEEDS:-0 1 2} ;; esac
  for seed in $seeds; do
    name="reproduce_${row}_seed${seed}"
    run=$(ls -d "lightning_logs/$name"/version_* 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$run" ] && [ -f "$run/results.json" ] && [ -f "$run/synthetic_set.pt" ]; then
      echo "[reproduce] $name: done ($run)"
      continue
    fi
    recorded=""
    [ -f "$name.commit" ] && recorded=$(cat "$name.commit")
    [ -z "$recorded" ] && [ -n "$run" ] && [ -f commit.txt ] && recorded=$(cat commit.txt)  # runs of the first version
    if [ -n "$run" ] && [ -n "$recorded" ] && [ "$recorded" != "$commit" ]; then
      echo "reproduce.sh: $name in $out is a run of commit $recorded, this checkout is $commit; check out that commit or use another OUTDIR" >&2
      exit 2
    fi
    echo "$commit" > "$name.commit"
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
PYTHONPATH="$repo" "$python" -m ptmdd_lightning.reproduce "$out" | tee table.md
