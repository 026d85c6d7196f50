#!/usr/bin/env bash
# Use the core that idles while the nm pool's fifth member pretrains: the domain study's prepare runs (pools only,
# no points: --shard 98/99 selects none), stopped by SIGTERM (they checkpoint every epoch) when that member is done.
cd /work/findings_runs
pool=ptm_pool/findings/fashion_mnist/ConvNetW32
while :; do
  n=$(pgrep -f "findings_nm/runs/prepare=pool" | wc -l)
  d=$(ls $pool/seed*/epoch150.pt 2>/dev/null | wc -l)
  [ "$d" -ge 4 ] && [ "$n" -le 1 ] && break
  sleep 20
done
busy=$(ps -o ppid= -p "$(pgrep -f 'findings_nm/runs/prepare=pool' | head -1)" | tr -d ' ')
core=1; [ "$busy" = "31040" ] && core=0
echo "[fill] $(date -u +%FT%TZ) nm pool member left on the core of $busy; domain prepare on core $core"
mkdir -p lightning_logs/sweeps/findings_domain
echo "$(git -C /work/findings2 rev-parse HEAD) $(date -u +%FT%TZ) prepare only, core $core (fill_idle.sh)" >> lightning_logs/sweeps/findings_domain/commits.txt
OMP_NUM_THREADS=1 PYTHONPATH=/work/findings2 taskset -c $core /work/main/.venv/bin/python -m ptmdd_lightning.studies.cli \
  --sweep /work/findings2/configs/paper/findings/sweeps/domain.yaml --shard 98/99 &
pid=$!
while [ ! -f $pool/seed4/epoch150.pt ] && kill -0 $pid 2>/dev/null; do sleep 15; done
kill -TERM $pid 2>/dev/null
wait $pid
echo "[fill] $(date -u +%FT%TZ) done (exit $?)"
