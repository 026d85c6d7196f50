#!/usr/bin/env bash
# The findings campaign of issue 14 section 3 (docs/paper.md, docs/reproduce.md "Findings campaign"): the sweeps of
# configs/paper/findings/sweeps/ in the order nm, domain, epoch, na, reviewers (the epoch study's runs beyond its
# deciding ones last: DEFER below), each through `ptmdd-sweep`, pinned to one core with one thread. Run one driver
# per core, each with its shard, so the two never wait for each other:
#   bash scripts/findings.sh OUTDIR 0 0/2 &   bash scripts/findings.sh OUTDIR 1 1/2 &
# Resumable: the same commands continue every run from its last.ckpt; finished runs are skipped, and runs that an
# earlier study finished with identical settings are copied (docs/studies.md). Each study records the commits that
# worked on it (OUTDIR/lightning_logs/sweeps/<name>/commits.txt). Environment: SWEEPS (the sweeps, default all five,
# in order), DEFER (the sweeps whose runs beyond the deciding ones wait until every sweep has had its turn; default
# epoch), PYTHON (default .venv/bin/python of this checkout), WAIT_PID (a process to wait for first, e.g. a driver
# of an earlier commit that is finishing its run), PTMDD_PRECISION (default bf16-mixed: the distillation and
# pretraining precision of every run, whatever CPU kind a session gets; the campaign began on AMX machines, where
# bf16-mixed is the default, and on AMD Zen 4, whose default is fp32, bf16 is native too and no slower). On a CPU
# without native bf16 (neither amx_bf16 nor avx512_bf16 among the flags of CPUINFO, default /proc/cpuinfo; e.g. an
# AVX2-only AMD EPYC, where a campaign DM step took 29.3 s in bf16-mixed against 3.49 s in fp32: docs/speed.md) it
# refuses to start (exit 3) unless ALLOW_EMULATED_BF16=1. `bash scripts/findings.sh --check-cpu` makes that check
# alone (scripts/findings_session.sh start runs it before anything else).
set -uo pipefail
export PTMDD_PRECISION=${PTMDD_PRECISION:-bf16-mixed}
check_cpu() {  # the campaign's bf16 must be native here, or the runs take ~8x as long
  local cpuinfo=${CPUINFO:-/proc/cpuinfo}
  [[ "$PTMDD_PRECISION" == bf16* ]] && [ "${ALLOW_EMULATED_BF16:-0}" != 1 ] || return 0
  grep -qwE 'amx_bf16|avx512_bf16' "$cpuinfo" 2>/dev/null && return 0
  echo "findings.sh: this CPU has no native bf16 (neither amx_bf16 nor avx512_bf16 in $cpuinfo): the campaign's" \
    "PTMDD_PRECISION=$PTMDD_PRECISION would be emulated, each run ~8x slower (docs/speed.md, 'CPUs without native" \
    "bf16'). Continue the campaign in a session on an Intel AMX or AMD Zen 4 (AVX512-BF16) machine, or set" \
    "ALLOW_EMULATED_BF16=1 to run it here anyway; another PTMDD_PRECISION would change the campaign's precision." >&2
  return 3
}
if [ "${1:-}" = --check-cpu ]; then check_cpu; exit $?; fi
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: bash scripts/findings.sh OUTDIR CORE SHARD}
core=${2:?usage: bash scripts/findings.sh OUTDIR CORE SHARD}
shard=${3:?usage: bash scripts/findings.sh OUTDIR CORE SHARD}
python=${PYTHON:-$repo/.venv/bin/python}
check_cpu || exit 3
commit=$(git -C "$repo" rev-parse HEAD)
mkdir -p "$out" && cd "$out" || exit 2
if [ -n "${WAIT_PID:-}" ]; then
  while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 30; done
fi
# Within a study, the runs of the row that decides its finding go first (docs/paper.md, "One row ... decides each
# finding"), shared evenly by the two drivers (--shard over the --point selection), then the rest in the sweep's
# order: the domain study's family, in- vs other-domain CCLoM at alpha 100 and 1000; the na study's N_a = 4 (its
# N_a = 1 is nm's N_m = 1, copied); the epoch study's epoch 150, the reference of all its contrasts (nm's N_m = 2,
# copied once that is done), so that each early epoch finished so far has its paired row. Reviewers' questions are
# open.
first_points() {
  case "$1" in
    epoch) echo "epoch=150" ;;
    domain) echo "alpha=100__real_batch=uniform alpha=1000__real_batch=uniform" \
      "baseline=CCLoM_in-domain_alpha_100 baseline=CCLoM_in-domain_alpha_1000" ;;
    na) echo "N_a=4_+MLP_+ConvNetD1" ;;
  esac
}
sweep_cli() {  # ptmdd-sweep on one core, one thread
  OMP_NUM_THREADS=1 PYTHONPATH="$repo" taskset -c "$core" "$python" -m ptmdd_lightning.studies.cli "$@"
}
run_sweep() {  # run_sweep SWEEP PART: PART "first" (its deciding runs, or all of a sweep with none), "rest", "all"
  local sweep=$1 part=$2 file study point first=()
  file="$repo/configs/paper/findings/sweeps/$sweep.yaml"
  [ -f "$file" ] || { echo "findings.sh: no sweep $file" >&2; exit 2; }
  study="lightning_logs/sweeps/findings_$sweep"
  mkdir -p "$study"
  echo "$commit $(date -u +%FT%TZ) shard $shard core $core" >> "$study/commits.txt"
  echo "[findings] $sweep ($part) shard $shard on core $core at $commit: start $(date -u +%FT%TZ)"
  for point in $(first_points "$sweep"); do first+=(--point "$point"); done
  if [ "$part" != rest ] && [ ${#first[@]} -gt 0 ]; then
    sweep_cli --sweep "$file" --shard "$shard" "${first[@]}"
    echo "[findings] $sweep shard $shard, the deciding runs first: exit $? at $(date -u +%FT%TZ)"
  fi
  if [ "$part" != first ] || [ ${#first[@]} -eq 0 ]; then
    sweep_cli --sweep "$file" --shard "$shard"
    echo "[findings] $sweep shard $shard: exit $? at $(date -u +%FT%TZ)"
  fi
}
# A sweep named in DEFER (default: epoch) runs only its deciding runs in its turn, the rest after every sweep: finding
# 2 is decided by epoch 10 vs 150 (docs/paper.md), and epochs 20 and 50 only say where its sweet spot lies, so they
# wait for the N_a runs and the reviewers' questions, which have none yet.
defer=" ${DEFER-epoch} "
sweeps=${SWEEPS:-nm domain epoch na reviewers}
for sweep in $sweeps; do
  if [[ "$defer" == *" $sweep "* ]]; then run_sweep "$sweep" first; else run_sweep "$sweep" all; fi
done
for sweep in $sweeps; do
  if [[ "$defer" == *" $sweep "* ]]; then run_sweep "$sweep" rest; fi
done
