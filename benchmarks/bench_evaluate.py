"""Benchmark of the evaluation engine (``ptmdd_lightning.core.evaluate``): 5 ConvNet-3 on an IPC-10 set.

Trains ``--models`` ConvNet-3 (width 128, depth 3, instance norm, ReLU, avg-pool) on ``--n`` random 1x28x28
"synthetic" images for ``--epochs`` epochs with DSA, then tests them on ``--test`` random images, in several
engine configurations, and prints the per-epoch time (all models together), the test time, and the
extrapolation to 300 and 1000 epochs. Wall time and process CPU time are both reported: on a shared
machine the CPU time is the steadier number.

Usage::

    PYTHONPATH=. python benchmarks/bench_evaluate.py --epochs 50 --threads 2
    PYTHONPATH=. python benchmarks/bench_evaluate.py --configs loop-32 loop-bf16 vmap-bf16

The net is ``ptmdd_lightning.nets.build_net("ConvNet", ...)`` when ``nets`` provides it, else a local copy
of the DC code's ConvNet-3 (identical layers). Not a test; nothing is asserted.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from torch import nn

from ptmdd_lightning.core.evaluate import EvalProtocol, evaluate_models, train_models

#: name -> (mode, precision, channels_last, compile)
CONFIGS = {
    "loop-32": ("loop", "32", False, False),  # the reference: sequential fp32 runs
    "loop-32-cl": ("loop", "32", True, False),
    "loop-bf16": ("loop", "bf16", False, False),
    "loop-bf16-cl": ("loop", "bf16", True, False),
    "loop-bf16-compile": ("loop", "bf16", False, True),
    "loop-bf16-cl-compile": ("loop", "bf16", True, True),
    "loop-32-compile": ("loop", "32", False, True),
    "vmap-32": ("vmap", "32", False, False),
    "vmap-bf16": ("vmap", "bf16", False, False),
}


class LocalConvNet3(nn.Module):
    """The DC code's ConvNet-3 for 1x28x28 inputs.

    3 x [conv3x3 -> GroupNorm(128, 128) -> ReLU -> AvgPool2d(2)], the first conv with padding 3 (28 -> 32),
    then Linear(2048, K).
    """

    def __init__(self, channels: int = 1, num_classes: int = 10, width: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = channels
        for d in range(3):
            layers += [
                nn.Conv2d(c, width, 3, padding=3 if (channels == 1 and d == 0) else 1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2),
            ]
            c = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def convnet_factory(channels: int, num_classes: int, image_size: tuple[int, int]):
    """``build_net('ConvNet', ...)`` when available, else :class:`LocalConvNet3`."""
    try:
        from ptmdd_lightning.nets import build_net

        build_net("ConvNet", channels, num_classes, image_size)
        return "ConvNet", "ptmdd_lightning.nets.build_net('ConvNet')"
    except Exception:  # noqa: BLE001 - nets/ not ready yet
        return (lambda: LocalConvNet3(channels, num_classes)), "local ConvNet-3 copy"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=50)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--n", type=int, default=100, help="synthetic images (IPC 10 x 10 classes)")
    ap.add_argument("--test", type=int, default=10000, help="test images (times are scaled to 10k)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dsa", default="color_crop_cutout_flip_scale_rotate")
    ap.add_argument("--configs", nargs="+", default=["loop-32", "loop-bf16", "vmap-32", "vmap-bf16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    k, c, hw = 10, 1, (28, 28)
    images = torch.randn(args.n, c, *hw, generator=g)
    labels = torch.arange(args.n) % k
    test_images = torch.randn(args.test, c, *hw, generator=g)
    test_labels = torch.randint(0, k, (args.test,), generator=g)
    arch, arch_name = convnet_factory(c, k, hw)
    print(
        f"{args.models} x {arch_name} on {args.n} x {c}x{hw[0]}x{hw[1]} images, {args.epochs} epochs, "
        f"DSA {args.dsa!r}, test {args.test}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )
    rows = []
    for name in args.configs:
        mode, precision, channels_last, compile_ = CONFIGS[name]
        proto = EvalProtocol(
            epochs=args.epochs,
            precision=precision,
            channels_last=channels_last,
            compile=compile_,
            dsa_strategy=args.dsa,
        )
        if compile_:  # compile once (a 1-epoch run), so that the timed run below measures the steps
            w0 = time.perf_counter()
            train_models(arch, images, labels, k, args.models, replace(proto, epochs=1), seed=0, mode=mode)
            print(f"{name:20s} compilation + 1 epoch: {time.perf_counter() - w0:.1f} s wall", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        models = train_models(arch, images, labels, k, args.models, proto, seed=0, mode=mode)
        t1, c1 = time.perf_counter(), time.process_time()
        accs = evaluate_models(
            models,
            test_images,
            test_labels,
            precision,
            proto.test_batch_size,
            mode=mode,
            channels_last=channels_last,
        )
        t2, c2 = time.perf_counter(), time.process_time()
        ep_wall, ep_cpu = (t1 - t0) / args.epochs, (c1 - c0) / args.epochs
        scale = 10000 / args.test  # test times are reported per 10k test images
        row = (name, ep_wall, ep_cpu, (t2 - t1) * scale, (c2 - c1) * scale)
        rows.append(row)
        print(
            f"{name:20s} train {ep_wall:7.3f} s/epoch wall ({ep_cpu:7.3f} cpu) | test 10k {row[3]:6.2f} s "
            f"({row[4]:6.2f} cpu) | 300 ep {300 * ep_wall + row[3]:7.0f} s | 1000 ep "
            f"{1000 * ep_wall + row[3]:7.0f} s wall ({1000 * ep_cpu + row[4]:7.0f} cpu) | "
            f"mean acc {float(accs.mean()):.3f}",
            flush=True,
        )
    base = next((r for r in rows if r[0] == "loop-32"), None)
    if base is not None:
        for name, ep_wall, ep_cpu, test_wall, test_cpu in rows:
            print(
                f"speed-up of {name:20s} over loop-32 at 1000 epochs: wall "
                f"{(1000 * base[1] + base[3]) / (1000 * ep_wall + test_wall):5.2f}x, cpu "
                f"{(1000 * base[2] + base[4]) / (1000 * ep_cpu + test_cpu):5.2f}x"
            )


if __name__ == "__main__":
    main()
