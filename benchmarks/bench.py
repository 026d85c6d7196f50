"""The ptmdd speed benchmark: ptmdd vs the plain per-class fp32 baseline, same work, same data, one run.

Measures on the REAL Fashion-MNIST (``DistillDataModule(dataset="fashion_mnist")``, batch_real 256):

* seconds per DM iteration at IPC 1 / 10 / 50 (DSA on);
* seconds per DC and per DSA outer iteration at IPC 1 / 10 (the DC schedule: IPC 1 = 1 matching step,
  IPC 10 = 10 matching steps and 9 inner loops of 50 epochs training the net on the synthetic set);
* seconds to evaluate one IPC-10 synthetic set with K = 5 ConvNet-3 (1000 epochs with DSA, then the 10k test
  images), extrapolated from ``--eval-epochs`` measured epochs (stated in the output);
* peak memory of each measurement (its own process: ``ru_maxrss``, and the growth over the RSS after the data
  was loaded; on CUDA ``torch.cuda.max_memory_allocated``).

"ptmdd" is what a user runs: the Lightning ``Distiller`` in a ``Trainer`` with ``precision="bf16-mixed"`` (as the
configs; ``--precision 32`` runs it and the evaluation in fp32 instead, e.g. to measure what bf16 costs on a CPU
without native bf16, such as an AVX2-only one, where ptmdd's own default is fp32: docs/speed.md), device chosen by
Lightning (``accelerator="auto"``), and ``core.evaluate`` with its defaults (bf16, ``mode="auto"``). "baseline" is
``benchmarks/reference.py``: the reference DC/DSA/DM code's per-class loops in eager fp32. Every measurement runs in
a fresh subprocess (clean memory high-water mark, no shared compile caches in memory), one after the other. The
first steps of a ptmdd run (``--warmup``, default 1 step, or one outer iteration's first step for DC) are excluded
and reported separately as the warm-up time, which contains the one-off ``torch.compile`` of the nets.

How the DC/DSA outer iteration is timed: the time of every matching step (batch start -> batch end) and of
every inner loop (batch end -> next batch start) is recorded. The outer iteration is ``outer_loop * mean(match)
+ (outer_loop - 1) * mean(inner)``. With the full settings (no ``--quick``) the measured steps cover one whole
outer iteration, so this is its measured time; with ``--quick`` fewer steps are measured and the outer
iteration is extrapolated from them (the JSON records ``"extrapolated": true`` and the step counts).

Usage (from the repository root; take the CPU lock on the shared 2-core machine)::

    flock /tmp/ptmdd_cpu.lock .venv/bin/python benchmarks/bench.py            # full run (~40 min on 2 cores)
    flock /tmp/ptmdd_cpu.lock .venv/bin/python benchmarks/bench.py --quick    # ~10 min
    .venv/bin/python benchmarks/bench.py --only dm --ipcs 10 --quick          # one row

Writes ``benchmarks/results/<device>-<date>.json`` and ``.md`` and prints the table. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

DSA = "color_crop_cutout_flip_scale_rotate"


# ------------------------------------------------------------------------------------------------ helpers


def _rss_now_mb() -> float:
    """The current resident set size in MiB (``/proc/self/status`` VmRSS; 0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _peak_rss_mb() -> float:
    """The process's peak resident set size in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def machine_info() -> dict:
    """CPU model, cores, torch version, threads, and the GPU when there is one."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "amx_bf16": "amx_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None,
    }
    from ptmdd_lightning.machine import cpu_info

    info["cpu_kind"] = cpu_info()["kind"]
    info["isa"] = cpu_info()["isa"]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _load_data(batch_real: int):
    """The real Fashion-MNIST through ptmdd's DataModule (normalised float32, in memory)."""
    from ptmdd_lightning.data import DistillDataModule

    dm = DistillDataModule(dataset="fashion_mnist", batch_real=batch_real, seed=0)
    dm.setup("fit")
    return dm


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _StepTimer:
    """A Lightning callback: wall and process-CPU time of every step (batch start -> batch end) and of what runs
    between two steps (the DC inner loop, the data); stops the run after ``steps`` steps."""

    def __new__(cls, steps: int):
        from lightning import Callback

        class StepTimer(Callback):
            def __init__(self) -> None:
                self.steps = steps
                self.starts: list[tuple[float, float]] = []
                self.ends: list[tuple[float, float]] = []
                self.rss_start = 0.0

            @staticmethod
            def now() -> tuple[float, float]:
                _sync()
                return time.perf_counter(), time.process_time()

            def on_train_start(self, trainer, pl_module) -> None:
                self.rss_start = _rss_now_mb()

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
                self.starts.append(self.now())

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                self.ends.append(self.now())
                if len(self.ends) >= self.steps:  # stop after this step (and its DC inner loop, which follows)
                    trainer.should_stop = True

            def on_train_end(self, trainer, pl_module) -> None:
                self.starts.append(self.now())  # closes the last step like the start of a next one would

        return StepTimer()


def _stats_memory(rss_start: float) -> dict:
    import torch

    out = {"peak_rss_mb": round(_peak_rss_mb(), 1), "peak_rss_growth_mb": round(_peak_rss_mb() - rss_start, 1)}
    if torch.cuda.is_available():
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


# ------------------------------------------------------------------------------------------------ workers


def _ptmdd_trainer(dm, method: str, ipc: int, steps: int, precision: str = "bf16-mixed", **model_kwargs):
    """Run the Distiller for ``steps`` steps in a Trainer (``precision``: ``"bf16-mixed"`` or ``"32"``) and return
    the step timer.

    The Trainer is told to run 100k steps (a long run, so the Distiller picks its long-run settings, e.g.
    ``torch.compile``; backends/cpu) and the timer stops it after ``steps`` steps; the end of training
    closes the last measured step (so it includes the DC inner loop that follows a step).
    """
    import lightning as L

    from ptmdd_lightning.modules import Distiller

    L.seed_everything(0, verbose=False)
    model = Distiller(
        dataset_info=dm.info,
        ipc=ipc,
        method=method,
        **model_kwargs,
    )
    timer = _StepTimer(steps)
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_steps=100_000,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    return timer, model


def _timed(fn) -> tuple[float, float]:
    """``(wall s, process CPU s)`` of ``fn()`` (CUDA synchronised)."""
    _sync()
    t, c = time.perf_counter(), time.process_time()
    fn()
    _sync()
    return time.perf_counter() - t, time.process_time() - c


def worker_dm(spec: dict) -> dict:
    """Seconds per DM iteration (IPC ``spec['ipc']``, batch_real 256, DSA)."""
    ipc, iters, warmup = spec["ipc"], spec["iters"], spec["warmup"]
    dm = _load_data(spec["batch_real"])
    if spec["impl"] == "ptmdd":
        timer, _ = _ptmdd_trainer(dm, "dm", ipc, warmup + iters, spec.get("precision", "bf16-mixed"))
        wall = [b[0] - a[0] for a, b in zip(timer.starts[:-1], timer.starts[1:], strict=True)]
        cpu = [b[1] - a[1] for a, b in zip(timer.starts[:-1], timer.starts[1:], strict=True)]
        rss0 = timer.rss_start
    else:
        from reference import ReferenceDM

        dev = _device()
        rss0 = _rss_now_mb()
        ref = ReferenceDM(
            dm.train_images.to(dev),
            dm.train_labels.to(dev),
            dm.num_classes,
            ipc,
            batch_real=spec["batch_real"],
            dsa_strategy=DSA,
        )
        wall, cpu = map(list, zip(*[_timed(ref.iteration) for _ in range(warmup + iters)], strict=True))
    return {
        "seconds": sum(wall[warmup:]) / iters,
        "cpu_seconds": sum(cpu[warmup:]) / iters,
        "warmup_s": sum(wall[:warmup]),
        "iters": iters,
        **_stats_memory(rss0),
    }


def worker_dc(spec: dict) -> dict:
    """Seconds per DC/DSA outer iteration (see the module docstring for how it is composed)."""
    from ptmdd_lightning.core.objectives import dc_outer_inner

    ipc, method = spec["ipc"], spec["method"]
    outer, inner = dc_outer_inner(ipc)
    match_steps = spec["match_steps"] or outer  # measured matching steps
    inner_loops = min(match_steps, outer - 1) if outer > 1 else 0  # measured inner loops
    dm = _load_data(spec["batch_real"])
    strategy = None if method == "dc" else DSA
    if spec["impl"] == "ptmdd":
        # step 0 is the warm-up (it compiles); steps 1..match_steps are measured: with match_steps == outer they
        # are exactly one outer iteration's work (outer matching steps, outer - 1 inner loops, one new net)
        timer, _ = _ptmdd_trainer(
            dm, method, ipc, 1 + match_steps, spec.get("precision", "bf16-mixed"), dsa_strategy=strategy
        )
        n = len(timer.ends)
        match = [(timer.ends[i][0] - timer.starts[i][0], timer.ends[i][1] - timer.starts[i][1]) for i in range(n)]
        between = [
            (timer.starts[i + 1][0] - timer.ends[i][0], timer.starts[i + 1][1] - timer.ends[i][1]) for i in range(n)
        ]
        # an inner loop follows step i unless (i + 1) is a multiple of outer_loop (the DC schedule)
        inner_t = [between[i] for i in range(1, n) if (i + 1) % outer != 0]
        warm = match[0][0] + between[0][0]
        rss0 = timer.rss_start
        match = match[1:]
    else:
        from reference import ReferenceDC

        dev = _device()
        rss0 = _rss_now_mb()
        ref = ReferenceDC(
            dm.train_images.to(dev),
            dm.train_labels.to(dev),
            dm.num_classes,
            ipc,
            batch_real=spec["batch_real"],
            dsa_strategy=strategy,
        )
        t0 = time.perf_counter()
        ref.new_net()
        match, inner_t = [], []
        for _ in range(match_steps):
            match.append(_timed(ref.match_step))
            if len(inner_t) < inner_loops:
                inner_t.append(_timed(ref.inner_train))
        warm = time.perf_counter() - t0 - sum(m[0] for m in match) - sum(i[0] for i in inner_t)

    def mean(xs: list[tuple[float, float]], j: int) -> float:
        return sum(x[j] for x in xs) / len(xs) if xs else 0.0

    return {
        "seconds": outer * mean(match, 0) + (outer - 1) * mean(inner_t, 0),
        "cpu_seconds": outer * mean(match, 1) + (outer - 1) * mean(inner_t, 1),
        "match_s": mean(match, 0),
        "inner_s": mean(inner_t, 0),
        "outer_loop": outer,
        "inner_loop": inner,
        "match_steps_measured": len(match),
        "inner_loops_measured": len(inner_t),
        "extrapolated": len(match) < outer or len(inner_t) < outer - 1,
        "warmup_s": warm,
        **_stats_memory(rss0),
    }


def worker_eval(spec: dict) -> dict:
    """Seconds to evaluate one IPC-10 set with ``models`` ConvNet-3 at 1000 epochs (extrapolated from ``epochs``
    measured epochs: ``1000 * train time per epoch + test time``)."""
    import torch

    from ptmdd_lightning.core.evaluate import random_real_subset

    dm = _load_data(256)
    dev = _device()
    g = torch.Generator().manual_seed(0)
    images, labels = random_real_subset(dm.train_images, dm.train_labels, 10, dm.num_classes, g)
    images, labels = images.to(dev), labels.to(dev)
    test_x, test_y = dm.test_images.to(dev), dm.test_labels.to(dev)
    epochs, models, full = spec["epochs"], spec["models"], spec["full_epochs"]
    rss0 = _rss_now_mb()
    out: dict = {}
    if spec["impl"] == "ptmdd":
        from ptmdd_lightning.core.evaluate import EvalProtocol, evaluate_models, train_models

        evp = "32" if spec.get("precision") == "32" else "bf16"
        kw = {"precision": evp, "compile": bool(spec.get("compile", False))}
        # one-off costs (a compile, the vmap trial) are measured with a 1-epoch run first
        warm, _ = _timed(
            lambda: train_models(
                "ConvNet", images, labels, dm.num_classes, models, EvalProtocol(epochs=1, **kw), seed=1
            )
        )
        proto = EvalProtocol(epochs=epochs, **kw)
        t_train, c_train = _timed(
            lambda: out.setdefault(
                "nets", train_models("ConvNet", images, labels, dm.num_classes, models, proto, seed=0)
            )
        )
        t_test, c_test = _timed(
            lambda: out.setdefault(
                "accs", evaluate_models(out["nets"], test_x, test_y, precision=evp, batch_size=proto.test_batch_size)
            )
        )
        acc = float(out["accs"].mean())
    else:
        from reference import RefConvNet, test_accuracy, train_epoch

        t_train = c_train = t_test = c_test = warm = 0.0
        accs = []
        for m in range(models):
            torch.manual_seed(m)
            net = RefConvNet(images.shape[1], dm.num_classes, tuple(images.shape[2:])).to(dev)
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0005)
            w, c = _timed(
                lambda net=net, opt=opt: [train_epoch(net, opt, images, labels, 256, DSA) for _ in range(epochs)]
            )
            t_train, c_train = t_train + w, c_train + c
            w, c = _timed(lambda net=net: accs.append(test_accuracy(net, test_x, test_y)))
            t_test, c_test = t_test + w, c_test + c
        acc = sum(accs) / len(accs)
    return {
        "seconds": t_train / epochs * full + t_test,
        "cpu_seconds": c_train / epochs * full + c_test,
        "train_s_per_epoch": t_train / epochs,
        "test_s": t_test,
        "epochs_measured": epochs,
        "epochs_extrapolated_to": full,
        "extrapolated": epochs < full,
        "models": models,
        "warmup_s": warm,
        "mean_acc_after_measured_epochs": acc,
        **_stats_memory(rss0),
    }


WORKERS = {"dm": worker_dm, "dc": worker_dc, "eval": worker_eval}


# ------------------------------------------------------------------------------------------------ driver


def run_spec(spec: dict, timeout: float) -> dict:
    """Run one measurement in a fresh Python process; return its JSON result (or an error record)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT ") :])
            res["process_s"] = round(time.perf_counter() - t, 1)
            return res
    return {"error": (proc.stderr or proc.stdout)[-2000:]}


def plan(args) -> list[tuple[str, dict]]:
    """(row name, spec) pairs; each spec is run once for ``ptmdd`` and once for ``baseline``."""
    q = args.quick
    rows: list[tuple[str, dict]] = []
    if "dm" in args.only:
        for ipc in args.ipcs:
            rows.append(
                (
                    f"DM iteration, IPC {ipc}",
                    {"kind": "dm", "ipc": ipc, "batch_real": 256, "iters": 3 if q else 10, "warmup": 2},
                )
            )
    for method in ("dc", "dsa"):
        if method in args.only:
            for ipc in [i for i in args.ipcs if i in (1, 10)]:
                rows.append(
                    (
                        f"{method.upper()} outer iteration, IPC {ipc}",
                        {
                            "kind": "dc",
                            "method": method,
                            "ipc": ipc,
                            "batch_real": 256,
                            "match_steps": 2 if q and ipc > 1 else 0,
                        },
                    )
                )
    if "eval" in args.only:
        ep = args.eval_epochs or (5 if q else 40)
        rows.append(
            (
                "evaluate IPC-10 set, 5 ConvNet-3, 1000 ep.",
                {"kind": "eval", "models": 5, "epochs": ep, "full_epochs": 1000},
            )
        )
        rows.append(
            (
                "evaluate, as above, EvalProtocol(compile=True)",
                {"kind": "eval", "models": 5, "epochs": ep, "full_epochs": 1000, "compile": True},
            )
        )
    return rows


def fmt_s(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def to_markdown(result: dict) -> str:
    """The result as a Markdown table (wall seconds, the speed-up in wall and in process CPU time, peak RSS)."""
    mi = result["machine"]
    load = result.get("loadavg")
    lines = [
        f"Machine: {mi['cpu']}, {mi['cores']} cores, {mi['threads']} torch threads, torch {mi['torch']}"
        + (f", GPU {mi['gpu']}" if mi.get("gpu") else "")
        + f"; device {result['device']}; {result['date']}"
        + (f"; 1-min load average at start/end {load[0]:.1f}/{load[1]:.1f}" if load else "")
        + f"; ptmdd precision {result.get('ptmdd_precision', 'bf16-mixed')}, baseline fp32.",
        f"Command: `{result['command']}`",
        "",
        "| work | baseline (s) | ptmdd (s) | speed-up (wall) | speed-up (CPU time) | peak RSS baseline / ptmdd "
        "(MiB) | notes |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        b, p = row["baseline"], row["ptmdd"]
        bs, ps = b.get("seconds"), p.get("seconds")
        bc, pc = b.get("cpu_seconds"), p.get("cpu_seconds")
        ratio = f"{bs / ps:.1f}x" if bs and ps else "n/a"
        cratio = f"{bc / pc:.1f}x" if bc and pc else "n/a"
        notes = []
        for side, r in (("baseline", b), ("ptmdd", p)):
            if "error" in r:
                notes.append(f"{side} failed")
            if r.get("extrapolated"):
                if "epochs_measured" in r:
                    notes.append(f"{side}: {r['epochs_measured']} epochs measured, extrapolated")
                else:
                    notes.append(
                        f"{side}: {r['match_steps_measured']} match steps + {r['inner_loops_measured']} "
                        f"inner loops measured, extrapolated"
                    )
            if "match_s" in r and "error" not in r:
                notes.append(f"{side}: match step {r['match_s']:.2f} s, inner loop {r['inner_s']:.2f} s")
        if "warmup_s" in p:
            notes.append(f"ptmdd warm-up (incl. compile) {p['warmup_s']:.0f} s")
        if "cuda_peak_mb" in p:
            notes.append(f"CUDA peak {p['cuda_peak_mb']:.0f} MiB (baseline {b.get('cuda_peak_mb', 0):.0f})")
        lines.append(
            f"| {row['name']} | {fmt_s(bs)} | {fmt_s(ps)} | {ratio} | {cratio} | "
            f"{b.get('peak_rss_mb', 'n/a')} / {p.get('peak_rss_mb', 'n/a')} | {'; '.join(notes)} |"
        )
    return "\n".join(lines) + "\n"


def free_stem(out: Path, stem: str) -> str:
    """``stem``, or ``stem-b``, ``stem-c``, ... : the first whose ``.json`` and ``.md`` do not exist in ``out`` (an
    earlier run of the same day is never overwritten)."""
    for suffix in [""] + [f"-{c}" for c in "bcdefghijklmnopqrstuvwxyz"]:
        if not (out / f"{stem}{suffix}.json").exists() and not (out / f"{stem}{suffix}.md").exists():
            return stem + suffix
    raise SystemExit(f"bench: {out} already holds {stem} and 25 suffixed runs; pass another --out")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="fewer iterations/epochs; DC outer iterations and the "
        "evaluation are extrapolated from fewer measured steps (stated in the table)",
    )
    ap.add_argument("--only", nargs="+", default=["dm", "dc", "dsa", "eval"], choices=["dm", "dc", "dsa", "eval"])
    ap.add_argument("--ipcs", nargs="+", type=int, default=[1, 10, 50])
    ap.add_argument("--impls", nargs="+", default=["baseline", "ptmdd"], choices=["baseline", "ptmdd"])
    ap.add_argument("--eval-epochs", type=int, default=0, help="measured evaluation epochs (default 40, quick 5)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement process")
    ap.add_argument(
        "--precision",
        choices=["bf16-mixed", "32"],
        default="bf16-mixed",
        help="ptmdd's precision (distillation; the evaluation runs bf16 or fp32 alike); the baseline is fp32 always",
    )
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        spec = json.loads(args.worker)
        if spec["impl"] == "ptmdd":  # ptmdd as the shipped CPU configs run it (keep_freed_memory: true)
            from ptmdd_lightning.nets.forward import keep_freed_memory

            keep_freed_memory()
        res = WORKERS[spec["kind"]](spec)
        from ptmdd_lightning.machine import backend_record, fast_paths_ran

        res["fast_paths"] = fast_paths_ran()  # which speed paths this measurement ran (ptmdd side)
        res["backend"] = backend_record()
        print("RESULT " + json.dumps(res), flush=True)
        return

    import torch

    info = machine_info()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    date = _dt.datetime.now().strftime("%Y-%m-%d")
    result = {
        "machine": info,
        "device": device,
        "date": date,
        "rows": [],
        "command": "python benchmarks/bench.py " + " ".join(sys.argv[1:]),
        "ptmdd_precision": args.precision,
    }
    print(f"machine: {info}", flush=True)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    done: dict[str, dict] = {}
    for name, spec in plan(args):
        spec = {**spec, "precision": args.precision}
        row = {"name": name, "spec": spec}
        for impl in ("baseline", "ptmdd"):
            if impl not in args.impls:
                row[impl] = {"error": "not run"}
                continue
            # the baseline does not depend on ptmdd-only options (e.g. compile): run it once per work
            key = json.dumps(
                {**{k: v for k, v in spec.items() if k not in ("compile", "precision")}, "impl": impl}, sort_keys=True
            )
            if impl == "baseline" and key in done:
                row[impl] = done[key]
                continue
            res = run_spec({**spec, "impl": impl}, args.timeout)
            done[key] = res
            row[impl] = res
            print(
                f"  {name:45s} {impl:8s} "
                + (f"{res['seconds']:.3f} s" if "seconds" in res else f"ERROR {res.get('error', '')[-600:]}"),
                flush=True,
            )
        result["rows"].append(row)
    if load0 is not None:
        result["loadavg"] = [load0, os.getloadavg()[0]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = free_stem(out, f"{device}-{date}" + ("-quick" if args.quick else ""))
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    md = to_markdown(result)
    (out / f"{stem}.md").write_text(md)
    print()
    print(md)
    print(f"written: {out / (stem + '.json')}, {out / (stem + '.md')}")


if __name__ == "__main__":
    main()
