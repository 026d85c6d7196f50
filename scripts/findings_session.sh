#!/usr/bin/env bash
# The findings campaign across machines that come and go (docs/reproduce.md, "Findings campaign"): its state lives
# in benchmarks/findings/findings_runs of this repository between sessions.
#   bash scripts/findings_session.sh start [COMMIT]   # restore the state, start one driver per core at COMMIT
#   bash scripts/findings_session.sh stop             # SIGTERM the drivers (runs checkpoint), save the state here
#   bash scripts/findings_session.sh save             # save the state here while the drivers run (then commit it)
#   bash scripts/findings_session.sh autosave         # save and commit the state every AUTOSAVE_SECONDS (start runs it)
# start: refuses a CPU that would emulate the campaign's bf16 (scripts/findings.sh --check-cpu), installs Debian's
# Fashion-MNIST if missing, copies the saved state to OUTDIR unless it is there, clones this
# repository into CLONE at COMMIT (default HEAD) so that later edits do not change the code under the runs, and
# starts scripts/findings.sh there, shards 0/2 and 1/2 on cores 0 and 1. stop: the drivers' loops first (so no
# next study starts), then every ptmdd-sweep (each stops its run, which writes last.ckpt at its step and keeps the
# models its evaluation tested), waits for them, and copies OUTDIR into the repository without the checkpoints
# Lightning writes beside last.ckpt on SIGTERM. save: the same copy without stopping anything, a safeguard
# against a session that ends before its stop (each checkpoint is replaced atomically, so a copy holds the old or
# the new file, never half of one; half-written temporaries are left out; a claim still marked running is taken
# over once its heartbeat is 10 minutes old). autosave: while a driver of OUTDIR/drivers.pid lives, every
# AUTOSAVE_SECONDS the same save, committed (that folder only) into this repository, and once more when the last
# driver ends; start launches it (log OUTDIR/autosave.log) so that a session cut off before its stop loses at most
# AUTOSAVE_SECONDS of the campaign; stop ends it first. Environment: OUTDIR (/work/findings_runs), CLONE
# (/work/findings_clone), PYTHON (this checkout's .venv/bin/python), SAVED (benchmarks/findings/findings_runs),
# AUTOSAVE_SECONDS (1800; 0: start launches no autosave).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUTDIR:-/work/findings_runs}
clone=${CLONE:-/work/findings_clone}
python=${PYTHON:-$repo/.venv/bin/python}
saved=${SAVED:-$repo/benchmarks/findings/findings_runs}

save() {  # OUTDIR -> the repository, without Lightning's SIGTERM checkpoints and the atomic writers' temporaries
  mkdir -p "$(dirname "$saved")" && rm -rf "$saved.new" && cp -a "$out" "$saved.new"
  find "$saved.new" \( -name 'epoch=*-step=*.ckpt' -o -name '.*.tmp[0-9]*' \) -delete
  rm -rf "$saved" && mv "$saved.new" "$saved"
}

commit_saved() {  # the saved state, and nothing else of the working tree, as one commit of this repository
  git -C "$repo" add -A -- "$saved" &&
    git -C "$repo" commit -q -m "findings campaign: state at $(date -u +%FT%H:%MZ) (autosave)" -- "$saved" ||
    echo "findings_session autosave: nothing committed at $(date -u +%FT%TZ)"
}

drivers_alive() {  # a driver of OUTDIR/drivers.pid still runs
  local pid
  for pid in $(cat "$out/drivers.pid" 2>/dev/null); do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}

# The commands, run from one line below: bash reads a script as it runs, so an autosave that runs for hours would
# otherwise read on from its old offset in a file that a checkout or an edit has since changed.
main() {
  case "${1:-}" in
    start)
      commit=$(git -C "$repo" rev-parse "${2:-HEAD}")
      [ -x "$python" ] || { echo "findings_session: no $python; run: bash -c 'source scripts/env.sh'" >&2; exit 2; }
      bash "$repo/scripts/findings.sh" --check-cpu || exit 3  # bf16 emulated here: the runs would take ~8x as long
      if pgrep -f "scripts/findings.sh" >/dev/null; then
        echo "findings_session: drivers already run (pgrep -af scripts/findings.sh)" >&2; exit 2
      fi
      if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
        apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }
      fi
      [ -d "$out" ] || cp -a "$saved" "$out"
      [ -d "$clone/.git" ] || git clone -q "$repo" "$clone"
      git -C "$clone" fetch -q "$repo" && git -C "$clone" checkout -q "$commit"
      cd "$clone"
      PYTHON=$python nohup bash scripts/findings.sh "$out" 0 0/2 >> "$out/driver0.log" 2>&1 &
      pids=$!
      SWEEPS="nm domain epoch reviewers na" PYTHON=$python nohup bash scripts/findings.sh "$out" 1 1/2 \
        >> "$out/driver1.log" 2>&1 &
      echo "$pids $!" > "$out/drivers.pid"
      echo "findings_session: drivers started at $commit; logs $out/driver{0,1}.log"
      if [ "${AUTOSAVE_SECONDS:-1800}" != 0 ]; then
        nohup bash "$repo/scripts/findings_session.sh" autosave >> "$out/autosave.log" 2>&1 &
        echo "findings_session: autosave every ${AUTOSAVE_SECONDS:-1800} s; log $out/autosave.log"
      fi
      ;;
    stop)
      pkill -TERM -f "findings_session.sh autosave" || true  # between its steps: never half a save or a commit
      while pgrep -f "findings_session.sh autosave" >/dev/null; do sleep 1; done
      pkill -TERM -f "scripts/findings.sh" || true
      sleep 1
      pkill -TERM -f "ptmdd_lightning.studies.cli" || true
      while pgrep -f "ptmdd_lightning" >/dev/null; do sleep 2; done
      save
      echo "findings_session: stopped; state saved in $saved (commit it)"
      ;;
    save)
      [ -d "$out" ] || { echo "findings_session: no $out to save" >&2; exit 2; }
      save
      echo "findings_session: state of the running campaign saved in $saved (commit it)"
      ;;
    autosave)
      [ -d "$out" ] || { echo "findings_session: no $out to save" >&2; exit 2; }
      # SIGTERM (stop) ends the wait at once; during a save or a commit it only marks the loop to end after it,
      # so that a stop never leaves half a save (the old state deleted, the new not moved in) or a half commit
      local stopping=
      trap 'stopping=1' TERM
      while [ -z "$stopping" ] && drivers_alive; do
        sleep "${AUTOSAVE_SECONDS:-1800}" &
        wait $! || kill $! 2>/dev/null || true
        [ -n "$stopping" ] || { save && commit_saved; }
      done
      if [ -n "$stopping" ]; then
        echo "findings_session autosave: stopped at $(date -u +%FT%TZ)"
      else
        echo "findings_session autosave: no driver runs; last save at $(date -u +%FT%TZ)"
      fi
      ;;
    *)
      echo "usage: bash scripts/findings_session.sh start [COMMIT] | stop | save | autosave" >&2
      exit 2
      ;;
  esac
}

main "$@"; exit $?
