"""The baseline: a plain fp32, per-class-loop implementation of DM, DC/DSA and the evaluation protocol.

This is what ``benchmarks/bench.py`` measures ptmdd against. It follows the reference code of the DC/DSA/DM
papers (github.com/VICO-UoE/DatasetCondensation: ``networks.py`` ``ConvNet``; ``utils.py`` ``DiffAugment``
and the ``rand_*`` ops, ``distance_wb``, ``match_loss``, ``epoch``, ``evaluate_synset``; ``main.py`` (DC/DSA)
and ``main_DM.py`` (DM)) step by step, in eager fp32, with one small forward (and backward) per class, as
those scripts do. It deliberately does NOT import anything from ``ptmdd_lightning`` that could be made faster
(nets, DSA, objectives, evaluation), so that speed work on the package never speeds up the baseline. Only
the data (normalised real images) is shared with the ptmdd side, so both do the same work on the same data.

Deviations from the reference scripts, none of which changes the amount of work:

* the DSA seed of a class is drawn from a seeded ``random.Random`` instead of ``int(time.time() * 1000) %
  100000``, so that runs are reproducible;
* ``affine_grid``/``grid_sample`` get ``align_corners=True``, the behaviour of the torch 1.2 the reference
  was written for;
* ``evaluate_synset`` trains ``epochs`` epochs and decays the lr once at ``epochs // 2`` (the reference runs
  ``Epoch + 1`` epochs and decays after epoch ``Epoch // 2 + 1``), the same schedule as
  ``ptmdd_lightning.core.evaluate``, so that both sides train the same number of steps.

Shapes: images are ``(N, C, H, W)`` float32, normalised with the dataset mean/std; labels ``(N,)`` int64.
Not a test and not part of the package.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ------------------------------------------------------------------------------------------------ network


class RefConvNet(nn.Module):
    """``networks.py`` ``ConvNet`` (net_width 128, net_depth 3, relu, instancenorm, avgpooling).

    ``depth`` x [conv3x3 (padding 3 for the first conv of 1-channel inputs) -> GroupNorm(width, width,
    affine) -> ReLU(inplace) -> AvgPool2d(2, 2)], then ``Linear(width * h * w, K)``.
    ``forward``: ``(N, C, H, W) -> (N, K)``; ``embed``: ``(N, C, H, W) -> (N, width * h * w)``.
    """

    def __init__(
        self, channel: int, num_classes: int, im_size: tuple[int, int], width: int = 128, depth: int = 3
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, (h, w) = channel, im_size
        if im_size[0] == 28:  # the reference: 28x28 grows to 32x32 through the first conv's padding 3
            h, w = 32, 32
        for d in range(depth):
            layers += [
                nn.Conv2d(c, width, 3, padding=3 if channel == 1 and d == 0 else 1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2),
            ]
            c, h, w = width, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * h * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.features(x)
        return self.classifier(out.reshape(out.size(0), -1))

    def embed(self, x: Tensor) -> Tensor:
        out = self.features(x)
        return out.reshape(out.size(0), -1)


# ------------------------------------------------------------------------------------- DSA (utils.py)


@dataclass
class ParamDiffAug:
    """``utils.ParamDiffAug``: DSA magnitudes, aug_mode 'S' (one op per call), and the seed state."""

    aug_mode: str = "S"
    prob_flip: float = 0.5
    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    latestseed: int = -1
    batchmode: bool = False


def _reseed(param: ParamDiffAug) -> None:
    """``set_seed_DiffAug``: re-seed the global RNG with ``latestseed`` (then increment it), unless -1."""
    if param.latestseed != -1:
        torch.random.manual_seed(param.latestseed)
        param.latestseed += 1


def _share(t: Tensor, param: ParamDiffAug) -> Tensor:
    """The reference's ``theta[:] = theta[0]`` in batch mode: every image uses the first image's draw."""
    if param.batchmode:
        t[:] = t[0].clone()
    return t


def _rand_scale(x: Tensor, param: ParamDiffAug) -> Tensor:
    r = param.ratio_scale
    _reseed(param)
    sx = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
    _reseed(param)
    sy = torch.rand(x.shape[0]) * (r - 1.0 / r) + 1.0 / r
    theta = torch.tensor([[[float(sx[i]), 0.0, 0.0], [0.0, float(sy[i]), 0.0]] for i in range(x.shape[0])])
    theta = _share(theta, param)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True).to(x.device)
    return F.grid_sample(x, grid, align_corners=True)


def _rand_rotate(x: Tensor, param: ParamDiffAug) -> Tensor:
    _reseed(param)
    t = (torch.rand(x.shape[0]) - 0.5) * 2 * param.ratio_rotate / 180 * float(torch.pi)
    theta = torch.tensor(
        [
            [
                [float(torch.cos(t[i])), float(torch.sin(-t[i])), 0.0],
                [float(torch.sin(t[i])), float(torch.cos(t[i])), 0.0],
            ]
            for i in range(x.shape[0])
        ]
    )
    theta = _share(theta, param)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True).to(x.device)
    return F.grid_sample(x, grid, align_corners=True)


def _rand_flip(x: Tensor, param: ParamDiffAug) -> Tensor:
    _reseed(param)
    randf = _share(torch.rand(x.size(0), 1, 1, 1, device=x.device), param)
    return torch.where(randf < param.prob_flip, x.flip(3), x)


def _rand_brightness(x: Tensor, param: ParamDiffAug) -> Tensor:
    _reseed(param)
    randb = _share(torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device), param)
    return x + (randb - 0.5) * param.brightness


def _rand_saturation(x: Tensor, param: ParamDiffAug) -> Tensor:
    x_mean = x.mean(dim=1, keepdim=True)
    _reseed(param)
    rands = _share(torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device), param)
    return (x - x_mean) * (rands * param.saturation) + x_mean


def _rand_contrast(x: Tensor, param: ParamDiffAug) -> Tensor:
    x_mean = x.mean(dim=[1, 2, 3], keepdim=True)
    _reseed(param)
    randc = _share(torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device), param)
    return (x - x_mean) * (randc + param.contrast) + x_mean


def _rand_crop(x: Tensor, param: ParamDiffAug) -> Tensor:
    shift_x, shift_y = int(x.size(2) * param.ratio_crop_pad + 0.5), int(x.size(3) * param.ratio_crop_pad + 0.5)
    _reseed(param)
    tx = torch.randint(-shift_x, shift_x + 1, size=[x.size(0), 1, 1], device=x.device)
    _reseed(param)
    ty = torch.randint(-shift_y, shift_y + 1, size=[x.size(0), 1, 1], device=x.device)
    tx, ty = _share(tx, param), _share(ty, param)
    gb, gx, gy = torch.meshgrid(
        torch.arange(x.size(0), device=x.device),
        torch.arange(x.size(2), device=x.device),
        torch.arange(x.size(3), device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + tx + 1, 0, x.size(2) + 1)
    gy = torch.clamp(gy + ty + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)


def _rand_cutout(x: Tensor, param: ParamDiffAug) -> Tensor:
    cs = int(x.size(2) * param.ratio_cutout + 0.5), int(x.size(3) * param.ratio_cutout + 0.5)
    _reseed(param)
    ox = torch.randint(0, x.size(2) + (1 - cs[0] % 2), size=[x.size(0), 1, 1], device=x.device)
    _reseed(param)
    oy = torch.randint(0, x.size(3) + (1 - cs[1] % 2), size=[x.size(0), 1, 1], device=x.device)
    ox, oy = _share(ox, param), _share(oy, param)
    gb, gx, gy = torch.meshgrid(
        torch.arange(x.size(0), device=x.device),
        torch.arange(cs[0], device=x.device),
        torch.arange(cs[1], device=x.device),
        indexing="ij",
    )
    gx = torch.clamp(gx + ox - cs[0] // 2, min=0, max=x.size(2) - 1)
    gy = torch.clamp(gy + oy - cs[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(x.size(0), x.size(2), x.size(3), dtype=x.dtype, device=x.device)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


AUGMENT_FNS = {
    "color": [_rand_brightness, _rand_saturation, _rand_contrast],
    "crop": [_rand_crop],
    "cutout": [_rand_cutout],
    "flip": [_rand_flip],
    "scale": [_rand_scale],
    "rotate": [_rand_rotate],
}


def diff_augment(x: Tensor, strategy: str, seed: int = -1, param: ParamDiffAug | None = None) -> Tensor:
    """``utils.DiffAugment``: ``seed=-1`` gives every image its own draw (evaluation); another seed makes the
    call deterministic and shares the first image's draw with the whole batch (the siamese per-class call)."""
    param = param if param is not None else ParamDiffAug()
    param.batchmode = seed != -1
    param.latestseed = seed
    if strategy in ("None", "none", ""):
        return x
    ops = strategy.split("_")
    if param.aug_mode == "M":
        for p in ops:
            for f in AUGMENT_FNS[p]:
                x = f(x, param)
    else:
        _reseed(param)
        p = ops[torch.randint(0, len(ops), size=(1,)).item()]
        for f in AUGMENT_FNS[p]:
            x = f(x, param)
    return x.contiguous()


# ------------------------------------------------------------------------------- DC distance (utils.py)


def distance_wb(gwr: Tensor, gws: Tensor) -> Tensor:
    """``utils.distance_wb``: per-output-row cosine distance of one layer's gradients (1-D params: 0)."""
    shape = gwr.shape
    if len(shape) == 4:
        gwr, gws = gwr.reshape(shape[0], -1), gws.reshape(shape[0], -1)
    elif len(shape) == 3:
        gwr, gws = gwr.reshape(shape[0], shape[1] * shape[2]), gws.reshape(shape[0], shape[1] * shape[2])
    elif len(shape) == 1:
        return torch.tensor(0, dtype=torch.float, device=gwr.device)
    return torch.sum(1 - torch.sum(gwr * gws, dim=-1) / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def match_loss(gw_syn: list[Tensor], gw_real: list[Tensor]) -> Tensor:
    """``utils.match_loss`` with ``dis_metric='ours'``: ``distance_wb`` summed over the layers."""
    dis = torch.tensor(0.0, device=gw_real[0].device)
    for gwr, gws in zip(gw_real, gw_syn, strict=True):
        dis = dis + distance_wb(gwr, gws)
    return dis


# ----------------------------------------------------------------------------------- the DD loops


class _RealPool:
    """``indices_class`` and ``get_images(c, n)`` of the reference scripts."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int) -> None:
        self.images = images
        self.indices_class = [torch.nonzero(labels == c).flatten() for c in range(num_classes)]

    def get_images(self, c: int, n: int) -> Tensor:
        idx = self.indices_class[c]
        return self.images[idx[torch.randperm(idx.numel())[:n]]]


class ReferenceDM:
    """``main_DM.py``: one :meth:`iteration` = a new random ConvNet, then for every class: DSA with one seed
    on the real batch and the class's synthetic images, embed both, add ``||mean real - mean syn||^2``;
    then one SGD step (lr_img 1.0, momentum 0.5) on the synthetic images.

    Optional CLoM guidance (Lu et al. 2023, Eq. 2) for the accuracy-equivalence experiment: ``ptm`` is a
    frozen net and ``alpha`` its weight; per class ``alpha / K * CE(ptm(syn_aug_c), c)``, which sums to
    ``alpha * CE`` over all synthetic images (equal IPC).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        ipc: int,
        batch_real: int = 256,
        dsa_strategy: str = "color_crop_cutout_flip_scale_rotate",
        lr_img: float = 1.0,
        seed: int = 0,
        ptm: nn.Module | None = None,
        alpha: float = 0.0,
    ) -> None:
        torch.manual_seed(seed)
        self.rng = random.Random(seed)
        self.real = _RealPool(images, labels, num_classes)
        self.k, self.ipc, self.batch_real, self.strategy = num_classes, ipc, batch_real, dsa_strategy
        self.channel, self.im_size = images.shape[1], (images.shape[2], images.shape[3])
        self.image_syn = torch.cat([self.real.get_images(c, ipc) for c in range(num_classes)]).detach().clone()
        self.image_syn.requires_grad_(True)
        self.label_syn = torch.arange(num_classes).repeat_interleave(ipc)
        self.optimizer_img = torch.optim.SGD([self.image_syn], lr=lr_img, momentum=0.5)
        self.param = ParamDiffAug()
        self.ptm, self.alpha = ptm, alpha

    def iteration(self) -> float:
        net = RefConvNet(self.channel, self.k, self.im_size).to(self.image_syn.device)
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        loss = torch.tensor(0.0, device=self.image_syn.device)
        for c in range(self.k):
            img_real = self.real.get_images(c, self.batch_real)
            img_syn = self.image_syn[c * self.ipc : (c + 1) * self.ipc]
            if self.strategy not in ("none", "None", ""):
                seed = self.rng.randrange(100000)
                img_real = diff_augment(img_real, self.strategy, seed=seed, param=self.param)
                img_syn = diff_augment(img_syn, self.strategy, seed=seed, param=self.param)
            output_real = net.embed(img_real).detach()
            output_syn = net.embed(img_syn)
            loss = loss + torch.sum((torch.mean(output_real, dim=0) - torch.mean(output_syn, dim=0)) ** 2)
            if self.ptm is not None and self.alpha:
                lab = torch.full((self.ipc,), c, dtype=torch.long, device=img_syn.device)
                loss = loss + self.alpha / self.k * F.cross_entropy(self.ptm(img_syn), lab)
        self.optimizer_img.zero_grad()
        loss.backward()
        self.optimizer_img.step()
        return float(loss.item())


class ReferenceDC:
    """``main.py`` (DC, or DSA with ``dsa_strategy``): one outer iteration (:meth:`outer_iteration`) = a new
    random ConvNet and its SGD (lr_net 0.01), then ``outer_loop`` times: per class, the CE gradients of the
    net on a real batch (detached) and on the class's synthetic images (``create_graph``), ``match_loss``
    summed over classes, one SGD step (lr_img 0.1, momentum 0.5) on the images; and between outer steps
    (not after the last) ``inner_loop`` epochs of training the net on the synthetic set (batch 256, DSA
    with a random draw per image when DSA is on). ConvNet has no BatchNorm, so the reference's BN-freezing
    pass does not apply.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        num_classes: int,
        ipc: int,
        batch_real: int = 256,
        dsa_strategy: str | None = None,
        lr_img: float = 0.1,
        lr_net: float = 0.01,
        batch_train: int = 256,
        outer_loop: int | None = None,
        inner_loop: int | None = None,
        seed: int = 0,
    ) -> None:
        loops = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}
        torch.manual_seed(seed)
        self.rng = random.Random(seed)
        self.real = _RealPool(images, labels, num_classes)
        self.k, self.ipc, self.batch_real = num_classes, ipc, batch_real
        self.strategy = dsa_strategy if dsa_strategy not in (None, "none", "None", "") else None
        self.channel, self.im_size = images.shape[1], (images.shape[2], images.shape[3])
        self.outer_loop = outer_loop or loops[ipc][0]
        self.inner_loop = inner_loop if inner_loop is not None else loops[ipc][1]
        self.lr_net, self.batch_train = lr_net, batch_train
        self.image_syn = torch.cat([self.real.get_images(c, ipc) for c in range(num_classes)]).detach().clone()
        self.image_syn.requires_grad_(True)
        self.label_syn = torch.arange(num_classes).repeat_interleave(ipc)
        self.optimizer_img = torch.optim.SGD([self.image_syn], lr=lr_img, momentum=0.5)
        self.param = ParamDiffAug()
        self.net: RefConvNet | None = None
        self.optimizer_net: torch.optim.Optimizer | None = None

    def new_net(self) -> None:
        """The start of an outer iteration: a freshly initialised net and its optimizer."""
        self.net = RefConvNet(self.channel, self.k, self.im_size).to(self.image_syn.device)
        self.net.train()
        self.optimizer_net = torch.optim.SGD(self.net.parameters(), lr=self.lr_net)
        self.optimizer_net.zero_grad()

    def match_step(self) -> float:
        """One outer-loop step: per-class gradient matching and one SGD step on the synthetic images."""
        net = self.net
        params = list(net.parameters())
        loss = torch.tensor(0.0, device=self.image_syn.device)
        for c in range(self.k):
            img_real = self.real.get_images(c, self.batch_real)
            lab_real = torch.ones((img_real.shape[0],), device=img_real.device, dtype=torch.long) * c
            img_syn = self.image_syn[c * self.ipc : (c + 1) * self.ipc]
            lab_syn = torch.ones((self.ipc,), device=img_syn.device, dtype=torch.long) * c
            if self.strategy is not None:
                seed = self.rng.randrange(100000)
                img_real = diff_augment(img_real, self.strategy, seed=seed, param=self.param)
                img_syn = diff_augment(img_syn, self.strategy, seed=seed, param=self.param)
            gw_real = torch.autograd.grad(F.cross_entropy(net(img_real), lab_real), params)
            gw_real = [g.detach().clone() for g in gw_real]
            gw_syn = torch.autograd.grad(F.cross_entropy(net(img_syn), lab_syn), params, create_graph=True)
            loss = loss + match_loss(gw_syn, gw_real)
        self.optimizer_img.zero_grad()
        loss.backward()
        self.optimizer_img.step()
        return float(loss.item())

    def inner_train(self, epochs: int | None = None) -> None:
        """``inner_loop`` epochs of ``epoch('train', ...)`` on a copy of the synthetic set."""
        images = self.image_syn.detach().clone()
        labels = self.label_syn.clone()
        for _ in range(self.inner_loop if epochs is None else epochs):
            train_epoch(self.net, self.optimizer_net, images, labels, self.batch_train, self.strategy, self.param)

    def outer_iteration(self) -> None:
        self.new_net()
        for ol in range(self.outer_loop):
            self.match_step()
            if ol == self.outer_loop - 1:
                break
            self.inner_train()


# ------------------------------------------------------------------------------------ evaluation


def train_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    batch_size: int,
    dsa_strategy: str | None,
    param: ParamDiffAug | None = None,
) -> None:
    """``utils.epoch('train', ...)``: shuffled batches, DSA (a random draw per image), CE, SGD step."""
    net.train()
    perm = torch.randperm(images.shape[0])
    for start in range(0, images.shape[0], batch_size):
        idx = perm[start : start + batch_size].to(images.device)
        img, lab = images[idx], labels[idx]
        if dsa_strategy is not None:
            img = diff_augment(img, dsa_strategy, seed=-1, param=param if param is not None else ParamDiffAug())
        loss = F.cross_entropy(net(img), lab)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@torch.no_grad()
def test_accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 256) -> float:
    """``utils.epoch('test', ...)``: top-1 accuracy in eval mode, batches of 256."""
    net.eval()
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        out = net(images[start : start + batch_size])
        correct += int((out.argmax(-1) == labels[start : start + batch_size]).sum())
    return correct / images.shape[0]


def evaluate_synset(
    images: Tensor,
    labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_classes: int,
    epochs: int = 1000,
    dsa_strategy: str | None = "color_crop_cutout_flip_scale_rotate",
    lr: float = 0.01,
    batch_train: int = 256,
    seed: int = 0,
) -> float:
    """``utils.evaluate_synset`` for one fresh ConvNet: SGD (momentum 0.9, weight decay 5e-4), lr x 0.1 (and
    a new optimizer) at ``epochs // 2``, DSA on every batch; returns the test accuracy after the last epoch."""
    torch.manual_seed(seed)
    net = RefConvNet(images.shape[1], num_classes, (images.shape[2], images.shape[3])).to(images.device)
    images, labels = images.detach().clone(), labels.clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
    for ep in range(epochs):
        if ep == epochs // 2:
            lr *= 0.1
            optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=0.0005)
        train_epoch(net, optimizer, images, labels, batch_train, dsa_strategy)
    return test_accuracy(net, test_images, test_labels)
