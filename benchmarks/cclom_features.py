"""CCLoM's real features: embedding the B drawn images every step (the authors') vs ptmdd's feature table.

CCLoM with ``cclom_real: uniform`` (the authors' ``CCLoM.__get_images_randomly``, B = 8196 in their README) embeds
B real images through the step's PTM at every distillation step. With ``guidance_view: raw`` a frozen PTM's
features of an image never change, so ptmdd embeds the training set once per member
(``ptmdd_lightning.core.guidance.ptm_feature_table``) and gathers the drawn rows afterwards
(``cclom_feature_table: true``, the default). This measures both on the real Fashion-MNIST training set:

* ``per step``: draw B indices, gather the images, embed them (no gradient), as the distiller does per step;
* ``table``: build the table once (reported apart), then draw B indices and gather the rows;

in the autocast of ``--precision`` (bf16: the ``bf16-mixed`` the CPU configs run; 32: fp32), on
``torch.get_num_threads()`` threads (``OMP_NUM_THREADS``). Also checks that both give the same features (largest
absolute difference). The PTM is a randomly initialised ``--arch`` (its cost is that of a trained one).

Usage (from the repository root; one core, as the findings campaign runs)::

    OMP_NUM_THREADS=1 taskset -c 1 .venv/bin/python benchmarks/cclom_features.py            # ~2 min on Intel
    .venv/bin/python benchmarks/cclom_features.py --classes 5 6 7 8 9 --steps 10 --precision 32

Writes ``benchmarks/results/cclom_features-cpu-<date>-n<training images>-<precision>.json`` and ``.md`` and prints
the table. Not a test.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ptmdd_lightning.core.guidance import PTMMember, ptm_feature_table
from ptmdd_lightning.data import DistillDataModule
from ptmdd_lightning.machine import machine_record
from ptmdd_lightning.nets import build_net

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="ConvNetW32", help="the PTM (the findings' pools: ConvNetW32)")
    ap.add_argument("--batch", type=int, default=8196, help="B, cclom_batch_size (the authors' README: 8196)")
    ap.add_argument("--steps", type=int, default=10, help="measured steps of each path")
    ap.add_argument("--classes", type=int, nargs="*", default=None, help="a class subset (the domain study: 5-9)")
    ap.add_argument("--precision", choices=["bf16", "32"], default="bf16")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()

    dm = DistillDataModule(dataset="fashion_mnist", classes=args.classes)
    dm.setup("fit")
    images, info = dm.train_images, dm.info
    torch.manual_seed(0)
    net = build_net(args.arch, info.channels, info.num_classes, tuple(info.image_size)).eval().requires_grad_(False)
    meta = {"image_size": tuple(info.image_size), "channels": info.channels, "mean": info.mean, "std": info.std}
    member = PTMMember(net, meta, 1.0, "cclom", info.mean, info.std)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()
    gen = torch.Generator().manual_seed(0)

    def draw() -> torch.Tensor:
        return torch.randint(0, images.shape[0], (args.batch,), generator=gen)

    per_step, per_step_feats = [], []
    with torch.no_grad(), autocast:
        for _ in range(args.steps):
            t = time.perf_counter()
            idx = draw()
            feats = member.net.embed(member.adapt(images.index_select(0, idx)))
            per_step.append(time.perf_counter() - t)
            per_step_feats.append((idx, feats))
        t = time.perf_counter()
        table = ptm_feature_table(member, images, chunk=args.batch)
        build = time.perf_counter() - t
        gathered = []
        for _ in range(args.steps):
            t = time.perf_counter()
            table.index_select(0, draw())
            gathered.append(time.perf_counter() - t)
    max_diff = max(float((table.index_select(0, i).float() - f.float()).abs().max()) for i, f in per_step_feats)
    step_s, gather_s = sum(per_step) / len(per_step), sum(gathered) / len(gathered)
    result = {
        "arch": args.arch,
        "batch": args.batch,
        "steps": args.steps,
        "classes": args.classes,
        "train_images": int(images.shape[0]),
        "feature_dim": int(table.shape[1]),
        "precision": args.precision,
        "per_step_embed_s": step_s,
        "table_build_s": build,
        "table_gather_s": gather_s,
        "table_mb": table.numel() * table.element_size() / 2**20,
        "break_even_steps": build / max(step_s - gather_s, 1e-12),
        "max_abs_feature_diff": max_diff,
        "machine": machine_record("cpu", args.precision),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    md = (
        f"| PTM | B | training images | precision | per step: embed B (s) | table: build once (s) | "
        "table: gather B (s) | table (MB) | break-even (steps) | max feature diff |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {args.arch} | {args.batch} | {result['train_images']} | {args.precision} | {step_s:.3f} | {build:.2f} | "
        f"{gather_s:.4f} | {result['table_mb']:.0f} | {result['break_even_steps']:.1f} | {max_diff:.2g} |\n\n"
        f"{args.steps} steps each; {result['machine']['cpu']['model']} ({result['machine']['cpu']['kind']}), "
        f"{result['machine']['threads']} thread(s), "
        f"torch {result['machine']['torch']}.\n"
    )
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"cclom_features-cpu-{_dt.date.today().isoformat()}-n{images.shape[0]}-{args.precision}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(md)
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
