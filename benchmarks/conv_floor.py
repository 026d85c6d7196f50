"""The conv floor of a CPU: ConvNet-3's dominant convolution and one ConvNet-3 training step, fp32 vs bf16.

ConvNet-3 (width 128, 28 x 28 input) spends most of a DD step in its second and third 3 x 3, 128 -> 128
convolutions. Their speed on a CPU bounds every speed-up ptmdd can reach there, and decides whether bf16 pays:
on a CPU with AMX-bf16 or AVX512-BF16 it is native, elsewhere it is emulated and many times slower than fp32.

    python benchmarks/conv_floor.py [--out benchmarks/results] [--tag NAME] [--repeats 5]

To see what a CPU without AMX would do on an AMX machine, cap oneDNN's ISA (and ATen's vector width):

    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/conv_floor.py --tag avx512bf16-cap
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/conv_floor.py --tag avx2-cap

Prints a Markdown table (median ms per call over ``--repeats`` after 2 warm-up calls, and TFLOP/s for the
conv) and writes ``conv-floor-<tag>.{json,md}`` with the machine record (:func:`ptmdd_lightning.machine.
machine_record`) and the ``ONEDNN_MAX_CPU_ISA``/``ATEN_CPU_CAPABILITY`` overrides in effect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ptmdd_lightning.machine import machine_record
from ptmdd_lightning.nets import build_net

RESULTS = Path(__file__).resolve().parent / "results"


def _median_ms(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def measure(repeats: int) -> list[dict]:
    """Rows ``{"what", "dtype", "layout", "ms", "tflops"}`` for the conv and the ConvNet-3 step."""
    torch.manual_seed(0)
    rows = []
    x = torch.randn(256, 128, 14, 14)
    w = torch.randn(128, 128, 3, 3) * 0.05
    flops = 2 * 256 * 128 * 128 * 9 * 14 * 14
    for bf16 in (False, True):
        for cl in (False, True):
            xx = x.to(memory_format=torch.channels_last) if cl else x
            ww = w.to(memory_format=torch.channels_last) if cl else w
            if bf16:
                xx, ww = xx.bfloat16(), ww.bfloat16()
            ms = _median_ms(lambda xx=xx, ww=ww: F.conv2d(xx, ww, padding=1), repeats)
            rows.append(
                {
                    "what": "conv 256x128x14x14, 3x3, 128->128",
                    "dtype": "bf16" if bf16 else "fp32",
                    "layout": "channels_last" if cl else "NCHW",
                    "ms": ms,
                    "tflops": flops / ms / 1e9,
                }
            )
    net = build_net("ConvNet", channels=1, num_classes=10, image_size=(28, 28))
    images, labels = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
    for bf16 in (False, True):

        def step(bf16=bf16):
            net.zero_grad(set_to_none=True)
            with _autocast(bf16):
                loss = F.cross_entropy(net(images), labels)
            loss.backward()

        rows.append(
            {
                "what": "ConvNet-3 forward+backward, batch 256, 28x28",
                "dtype": "bf16 autocast" if bf16 else "fp32",
                "layout": "NCHW",
                "ms": _median_ms(step, repeats),
                "tflops": None,
            }
        )
    return rows


def to_markdown(rows: list[dict], record: dict) -> str:
    cpu = record["cpu"]
    lines = [
        f"CPU {cpu['model']} ({cpu['kind']}; ISA {', '.join(cpu['isa']) or 'none'}), {record['threads']} "
        f"threads, torch {record['torch']}, overrides {record['overrides'] or 'none'}",
        "",
        "| what | dtype | layout | ms per call | TFLOP/s |",
        "|---|---|---|---:|---:|",
    ]
    for r in rows:
        tflops = f"{r['tflops']:.3f}" if r["tflops"] is not None else ""
        lines.append(f"| {r['what']} | {r['dtype']} | {r['layout']} | {r['ms']:.1f} | {tflops} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--tag", default="", help="file name part (default: the CPU kind)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    record = machine_record("cpu")
    record["overrides"] = {
        k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS") if k in os.environ
    }
    rows = measure(args.repeats)
    md = to_markdown(rows, record)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"conv-floor-{args.tag or record['cpu']['kind']}"
    (out / f"{stem}.json").write_text(json.dumps({"machine": record, "rows": rows}, indent=1) + "\n")
    (out / f"{stem}.md").write_text(md)


if __name__ == "__main__":
    main()
