#!/usr/bin/env bash
# Issue 14 section 3: the findings sweeps, one shard per core, from the clone /work/findings at a fixed commit.
#   bash /work/findings_chain.sh CORE SHARD   (CORE 0 or 1; SHARD 0 or 1 of 2) -- resumable: rerun the same command.
core=$1; shard=$2
cd /work/findings_runs
for sweep in nm domain epoch; do
  echo "[chain] $sweep shard $shard/2 core $core start $(date -u +%FT%TZ)"
  OMP_NUM_THREADS=1 PYTHONPATH=/work/findings taskset -c "$core" /work/main/.venv/bin/python -m ptmdd_lightning.studies.cli \
    --sweep /work/findings/configs/paper/findings/sweeps/$sweep.yaml --shard "$shard/2"
  echo "[chain] $sweep shard $shard/2 exit $? $(date -u +%FT%TZ)"
done
