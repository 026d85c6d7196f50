"""The DC fast path computes the same matching gradient as the module path, within bf16 noise.

On real Fashion-MNIST (a class-balanced batch of 256 real images per class; IPC 10 synthetic images initialised
from real ones) and three randomly initialised ConvNet-3, it computes the DC loss (Zhao et al. 2021, Alg. 1;
``core.objectives.dc_loss``) and its gradient w.r.t. the synthetic images three ways:

* fp32 through the module (the reference);
* bf16 autocast through the module (what ptmdd ran before the fast path);
* bf16 autocast through the fast path: the real side's per-class forward/backward via ``FastNet.forward``
  (compiled, first ConvNet block through the CPU kernel) and the synthetic side via ``FastNet.class_grads``
  (compiled ``vmap(grad)``).

It prints each bf16 variant's loss and the relative difference and cosine of its gradient to the fp32 one. The
fast path must be as close to fp32 as the module's bf16 path. Timings are not measured here (see bench.py).

Usage: ``.venv/bin/python benchmarks/dc_gradient_check.py`` (about 1 min on 2 cores). Results: docs/speed.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    import bench

    from ptmdd_lightning.backends.cpu.fastnet import FastNet
    from ptmdd_lightning.core.objectives import dc_loss
    from ptmdd_lightning.nets import build_net

    dm = bench._load_data(256)
    real, real_labels = next(iter(dm.train_dataloader()))
    k = dm.num_classes
    syn = real.view(k, 256, *real.shape[1:])[:, :10].reshape(k * 10, *real.shape[1:]).clone().requires_grad_(True)
    syn_labels = torch.arange(k).repeat_interleave(10)
    for seed in range(3):
        torch.manual_seed(seed)
        net = build_net("ConvNet", dm.channels, k, dm.image_size)
        fast = FastNet(net, compile=True)
        out = {}
        for name, kwargs, bf16 in (
            ("fp32", {}, False),
            ("module", {}, True),
            ("fast", {"forward": fast.forward, "syn_class_grads": fast.class_grads}, True),
        ):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = dc_loss(net, real, real_labels, syn, syn_labels, k, **kwargs)
            (grad,) = torch.autograd.grad(loss, syn)
            out[name] = (loss.item(), grad)
        loss0, grad0 = out["fp32"]
        row = [f"net seed {seed}: fp32 module loss {loss0:.3f}"]
        for name in ("module", "fast"):
            value, grad = out[name]
            cos = torch.nn.functional.cosine_similarity(grad0.flatten(), grad.flatten(), dim=0).item()
            rel = ((grad - grad0).norm() / grad0.norm()).item()
            row.append(f"bf16 {name}: loss {value:.3f}, gradient rel. difference to fp32 {rel:.3f}, cosine {cos:.4f}")
        print("; ".join(row), flush=True)


if __name__ == "__main__":
    main()
