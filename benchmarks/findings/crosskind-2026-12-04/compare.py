"""The cross-CPU-kind check of 2026-12-04 (docs/distributed.md, "Across CPU kinds at the campaign's setting").

python benchmarks/findings/crosskind-2026-12-04/compare.py [INTEL_EXPORT AMD_CHECKPOINT]
prints the per-model accuracy differences (points) of the AMD rerun and of the AMD evaluation of the Intel export
against the Intel run, and, given the two files, the difference of the synthetic images.
"""

import json
import statistics
import sys
from pathlib import Path

here = Path(__file__).parent


def accs(name: str) -> list[float]:
    rows = [r for r in json.loads((here / name).read_text()) if r["set"] == "synthetic"]
    return rows[0]["accs"]


intel = accs("original_intel_results.json")
for label, name in (
    ("AMD rerun", "rerun_amd_results.json"),
    ("AMD evaluation", "eval_amd_of_intel_export_results.json"),
):
    other = accs(name)
    d = [100 * (b - a) for a, b in zip(intel, other, strict=True)]
    print(
        f"{label}: {100 * statistics.fmean(other):.2f} vs Intel {100 * statistics.fmean(intel):.2f}; per model "
        f"{' '.join(f'{x:+.2f}' for x in d)}; mean {statistics.fmean(d):+.3f}, max |d| {max(map(abs, d)):.2f}"
    )
if len(sys.argv) == 3:
    import torch

    x = torch.load(sys.argv[1], weights_only=True)["images"].float()
    y = torch.load(sys.argv[2], weights_only=False)["state_dict"]["synthetic.images"].float()
    print(
        f"images: max |d| {(x - y).abs().max():.3f}, mean |d| {(x - y).abs().mean():.4f}, relative L2 "
        f"{((x - y).norm() / x.norm()):.3f} (normalised pixel units)"
    )
