"""Accuracy equivalence: DM + CLoM through ptmdd's fast path vs the per-class fp32 baseline, same settings.

Issue "Speed", acceptance point 4: the fast path (batched classes, bf16 autocast, the compiled channels-last
ConvNet of ``backends/cpu/fastnet.py``) must not change what the distillation learns. This script distils real
Fashion-MNIST twice with the same settings and evaluates both synthetic sets under one protocol:

* **fast**: the Lightning ``Distiller`` in a ``Trainer`` (``precision="bf16-mixed"``, what a user runs);
* **baseline**: ``benchmarks/reference.py`` ``ReferenceDM`` (``main_DM.py``'s per-class loop, eager fp32) with
  the same CLoM term (Lu et al. 2023, Eq. 2: ``alpha * CE(ptm(syn_aug), y)``, one PTM, on the DSA view);

then trains ``--models`` fresh ConvNet-3 on each set and on a random real IPC subset (``core.evaluate``:
SGD 0.01, momentum 0.9, wd 5e-4, lr x0.1 at half, batch 256, DSA) and tests them on the 10k real test
images. The two distilled sets should land within each other's evaluation noise (mean +- std over models).

Both runs start from the same real images (``init="real"`` draws with the seed; the two implementations draw
their own, so the starting sets differ, as two seeds would) and see independently drawn real batches; the
PTM is ``ptm_pool/fashion_mnist/ConvNetW32/seed0/epoch1.pt`` (the quickstart's pool; pretrained here if it is
missing).

Usage (repository root; ~25 min on 2 CPU cores with the defaults)::

    .venv/bin/python benchmarks/equivalence.py                     # 200 steps, 5 models x 150 epochs
    .venv/bin/python benchmarks/equivalence.py --steps 20 --models 2 --epochs 10   # a smoke run

Writes ``benchmarks/results/equivalence-<device>-<date>.json`` and ``.md`` and prints the table. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

DSA = "color_crop_cutout_flip_scale_rotate"
PTM_ARCH, PTM_SEED, PTM_EPOCH = "ConvNetW32", 0, 1


def _ptm(pool_root: Path):
    """Load (pretraining it first if missing) the frozen PTM both runs use."""
    from ptmdd_lightning.core.guidance import load_ptm, member_path

    path = member_path(pool_root, "fashion_mnist", PTM_ARCH, PTM_SEED, PTM_EPOCH)
    if not path.is_file():
        from ptmdd_lightning.main import main

        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/pretrain/fashion_mnist.yaml"),
                "--model.init_args.arch",
                PTM_ARCH,
                "--trainer.max_epochs",
                str(PTM_EPOCH),
                "--seed_everything",
                str(PTM_SEED),
                "--trainer.callbacks.PTMCheckpoint.init_args.epochs",
                f"[{PTM_EPOCH}]",
                "--trainer.callbacks.PTMCheckpoint.init_args.pool_root",
                str(pool_root),
            ]
        )
    net, _ = load_ptm(path)
    return net, path


def distil_fast(dm, args) -> tuple:
    """The ptmdd Distiller, ``args.steps`` steps, bf16-mixed; returns ``(images, labels, seconds)``."""
    import lightning as L

    from ptmdd_lightning.core.guidance import PTMGroup
    from ptmdd_lightning.modules import Distiller

    L.seed_everything(args.seed, verbose=False)
    model = Distiller(
        dataset_info=dm.info,
        ipc=args.ipc,
        method="dm",
        dsa_strategy=DSA,
        init="real",
        lr_img=1.0,
        ptms=[PTMGroup(arch=PTM_ARCH, alpha=args.alpha, num_seeds=1, epoch=PTM_EPOCH, loss="clom")],
        pool_root=str(args.pool_root),
        guidance_view="augmented",
    )
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        max_steps=args.steps,
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    t = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    secs = time.perf_counter() - t
    syn = model.synthetic
    return syn.images.detach().float().cpu().clone(), syn.labels.detach().cpu().clone(), secs


def distil_baseline(dm, ptm, args) -> tuple:
    """``reference.ReferenceDM`` with CLoM, ``args.steps`` iterations, fp32; returns ``(images, labels, s)``."""
    import torch
    from reference import ReferenceDM

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ref = ReferenceDM(
        dm.train_images.to(dev),
        dm.train_labels.to(dev),
        dm.num_classes,
        args.ipc,
        batch_real=args.batch_real,
        dsa_strategy=DSA,
        lr_img=1.0,
        seed=args.seed,
        ptm=ptm.to(dev),
        alpha=args.alpha,
    )
    t = time.perf_counter()
    for _ in range(args.steps):
        ref.iteration()
    secs = time.perf_counter() - t
    return ref.image_syn.detach().cpu().clone(), ref.label_syn.cpu().clone(), secs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200, help="distillation iterations of each run")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--batch-real", type=int, default=64, help="real images per class per iteration")
    ap.add_argument("--alpha", type=float, default=100.0, help="CLoM weight (see docs/paper.md for the scale)")
    ap.add_argument("--models", type=int, default=5, help="evaluation models per synthetic set")
    ap.add_argument("--epochs", type=int, default=150, help="evaluation epochs per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pool-root", type=Path, default=ROOT / "ptm_pool")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args(argv)

    import torch

    from ptmdd_lightning.backends.cpu.fastnet import can_compile
    from ptmdd_lightning.core.evaluate import EvalProtocol, random_real_subset, summarize, train_and_test
    from ptmdd_lightning.data import DistillDataModule

    dm = DistillDataModule(dataset="fashion_mnist", batch_real=args.batch_real, seed=args.seed)
    dm.setup("fit")
    ptm, ptm_path = _ptm(args.pool_root)
    sets = {
        "ptmdd fast path (bf16, batched, compiled)": distil_fast(dm, args),
        "baseline (per-class loop, fp32)": distil_baseline(dm, ptm, args),
    }
    g = torch.Generator().manual_seed(args.seed)
    rx, ry = random_real_subset(dm.train_images, dm.train_labels, args.ipc, dm.num_classes, g)
    sets["random real subset"] = (rx, ry, 0.0)
    proto = EvalProtocol(epochs=args.epochs, dsa_strategy=DSA, precision="bf16", compile=can_compile())
    rows = []
    for name, (x, y, secs) in sets.items():
        accs = train_and_test(
            "ConvNet", x, y, dm.test_images, dm.test_labels, dm.num_classes, args.models, proto, seed=args.seed
        )
        s = summarize(accs)
        rows.append({"set": name, "distil_seconds": round(secs, 1), "accs": [round(float(a), 4) for a in accs], **s})
        print(
            f"{name}: {100 * s['mean']:.2f} +- {100 * s['std']:.2f} % ({args.models} models; distilled in "
            f"{secs:.0f} s)",
            flush=True,
        )
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cmd = "python benchmarks/equivalence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result = {
        "command": cmd.strip(),
        "date": str(_dt.date.today()),
        "device": dev,
        "ptm": str(ptm_path),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
    }
    md = [
        f"Command: `{result['command']}` ({dev}, {result['date']}); DM + CLoM (alpha {args.alpha}, one "
        f"{PTM_ARCH} PTM, epoch {PTM_EPOCH}), IPC {args.ipc}, batch_real {args.batch_real}, {args.steps} "
        f"iterations; evaluation: {args.models} ConvNet-3 x {args.epochs} epochs, DSA, bf16.",
        "",
        "| synthetic set | test accuracy (%) | per model (%) | distillation (s) |",
        "|---|---:|---|---:|",
    ]
    for r in rows:
        md.append(
            f"| {r['set']} | {100 * r['mean']:.2f} +- {100 * r['std']:.2f} | "
            f"{', '.join(f'{100 * a:.1f}' for a in r['accs'])} | {r['distil_seconds']:.0f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    from bench import free_stem  # never overwrite an earlier run of the same day

    stem = args.out / free_stem(args.out, f"equivalence-{dev}-{result['date']}")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"written: {stem}.json, {stem}.md")
    return result


if __name__ == "__main__":
    main()
