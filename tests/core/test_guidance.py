"""CLoM / CCLoM against hand computations; the PTM pool's loading rules and errors."""

import math
import random

import pytest
import torch

from ptmdd_lightning.core.guidance import (
    PTMGroup,
    PTMPool,
    PTMRecipe,
    cclom,
    clom,
    load_ptm,
    member_path,
    pool_key,
    ptm_feature_table,
)
from ptmdd_lightning.errors import PtmddError


def test_clom_equals_hand_computed_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2  # 0.220095...
    assert clom(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_clom_refuses_a_ptm_of_another_label_space():
    with pytest.raises(PtmddError, match="cclom"):
        clom(torch.zeros(2, 3), torch.tensor([0, 5]))


def test_cclom_equals_hand_computed_ratio():
    feat_real = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feat_syn = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1])
    d = 1 - 1 / math.sqrt(2)
    # D = [[0, d], [1, d]], M = [[1, 0], [0, 1]] -> sum(D*M) / sum(D) = d / (1 + 2d)
    expected = d / (1 + 2 * d)
    assert cclom(feat_real, labels, feat_syn, labels).item() == pytest.approx(expected, abs=1e-6)


def test_cclom_gradient_pulls_synthetic_features_to_their_class():
    feat_real = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feat_syn = torch.tensor([[0.5, 0.5]], requires_grad=True)
    loss = cclom(feat_real, torch.tensor([0, 1]), feat_syn, torch.tensor([0]))
    loss.backward()
    # moving along -grad increases the first coordinate (towards class 0's real feature)
    assert feat_syn.grad[0, 0] < 0 < feat_syn.grad[0, 1]


def test_cclom_needs_a_real_batch():
    with pytest.raises(PtmddError, match="real batch"):
        cclom(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), torch.ones(2, 4), torch.tensor([0, 1]))


def test_group_validation():
    with pytest.raises(PtmddError, match="alpha"):
        PTMGroup(alpha=-1).validate()
    with pytest.raises(PtmddError, match="N_m"):
        PTMGroup(num_seeds=0).validate()
    assert PTMGroup(num_seeds=3).member_seeds() == [0, 1, 2]
    assert PTMGroup(seeds=[4, 7]).member_seeds() == [4, 7]


def test_pool_key_and_layout(tmp_path):
    assert pool_key("fashion_mnist") == "fashion_mnist"
    assert pool_key("fashion_mnist", [0, 1, 2]) == "fashion_mnist-c0-1-2"
    assert member_path(tmp_path, "mnist", "ConvNet", 3, 5) == tmp_path / "mnist" / "ConvNet" / "seed3" / "epoch5.pt"


def _write_member(
    root, source="toy", arch="ConvNetW32", seed=0, epoch=1, num_classes=3, channels=1, size=(8, 8), recipe=None
):
    from ptmdd_lightning.nets import build_net

    net = build_net(arch, channels, num_classes, size)
    path = member_path(root, source, arch, seed, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": net.state_dict(),
            "arch": arch,
            "channels": channels,
            "num_classes": num_classes,
            "image_size": size,
            "mean": (0.5,),
            "std": (0.25,),
            "epoch": epoch,
            "seed": seed,
            "recipe": (recipe or PTMRecipe()).record(),
        },
        path,
    )
    return path, net


def test_pool_loads_frozen_members_in_eval_mode(tmp_path):
    _write_member(tmp_path, seed=0)
    _write_member(tmp_path, seed=1)
    pool = PTMPool([PTMGroup(arch="ConvNetW32", num_seeds=2, epoch=1, alpha=0.5)], tmp_path, "toy", 3, (0.5,), (0.25,))
    assert len(pool) == 2
    pool.train()  # a parent module switching to train mode must not unfreeze BatchNorm statistics
    assert all(not m.training for m in pool.modules())
    assert all(not p.requires_grad for p in pool.parameters())
    picked = pool.pick("random", random.Random(0))
    assert len(picked) == 1 and picked[0][1] == 0.5
    assert [w for _, w in pool.pick("all", random.Random(0))] == [0.25, 0.25]


class _EveryOutcome:
    """A stand-in for ``random.Random``: ``randrange(n)`` returns the fixed ``outcome`` (mod ``n``), so that
    calling ``pick`` once per outcome enumerates every result of one uniform draw."""

    def __init__(self, outcome: int) -> None:
        self.outcome = outcome

    def randrange(self, n: int) -> int:
        return self.outcome % n


def _authors_draw_probabilities(pool_sizes: dict[str, int]) -> dict[tuple[str, int], float]:
    """DDInterpreter 19a4767 ``utils_clom/CLoM.py`` ``calculate_loss``: ``random.sample(models_pool, 1)`` (an
    architecture, uniformly), then ``random.randint(0, models_num - 1)`` (one of its members, uniformly)."""
    return {(a, j): 1 / len(pool_sizes) / n for a, n in pool_sizes.items() for j in range(n)}


@pytest.mark.parametrize("sizes", [{"ConvNetW32": 2, "LeNet": 2}, {"ConvNetW32": 2, "LeNet": 1}])
def test_the_random_draw_matches_the_authors_for_equal_groups_and_says_where_it_does_not(tmp_path, sizes):
    groups = []
    for arch, n in sizes.items():
        for seed in range(n):
            _write_member(tmp_path, arch=arch, seed=seed, size=(28, 28))
        groups.append(PTMGroup(arch=arch, num_seeds=n, epoch=1, alpha=1.0))
    pool = PTMPool(groups, tmp_path, "toy", 3, (0.5,), (0.25,))
    total = sum(sizes.values())
    ours: dict[tuple[str, int], float] = {}
    for k in range(total):  # one uniform draw over the members: each outcome has probability 1 / total
        ((member, _),) = pool.pick("random", _EveryOutcome(k))
        key = (member.meta["arch"], int(member.meta["seed"]))
        ours[key] = ours.get(key, 0.0) + 1 / total
    theirs = _authors_draw_probabilities(sizes)
    assert ours.keys() == theirs.keys()
    same = all(math.isclose(ours[k], theirs[k]) for k in theirs)
    assert same == (len(set(sizes.values())) == 1)  # equal N_m: the authors' distribution; else the deviation


def test_pool_missing_member_names_folder_and_command(tmp_path):
    with pytest.raises(PtmddError) as err:
        PTMPool([PTMGroup(arch="ConvNetW32", num_seeds=1, epoch=1)], tmp_path, "toy", 3, (0.5,), (0.25,))
    assert str(member_path(tmp_path, "toy", "ConvNetW32", 0, 1)) in str(err.value)
    assert "configs/pretrain/fashion_mnist.yaml --data.init_args.dataset toy" in str(err.value)
    assert f"--trainer.callbacks.init_args.epochs '[1]' --trainer.callbacks.init_args.pool_root {tmp_path}" in str(
        err.value
    )


def test_clom_refuses_ptms_with_another_class_count(tmp_path):
    _write_member(tmp_path, num_classes=5)
    with pytest.raises(PtmddError, match="5 classes"):
        PTMPool([PTMGroup(arch="ConvNetW32", epoch=1)], tmp_path, "toy", 3, (0.5,), (0.25,))


def test_mismatched_and_corrupted_checkpoints(tmp_path):
    path, _ = _write_member(tmp_path)
    blob = torch.load(path, weights_only=False)
    blob["num_classes"] = 7  # weights are for 3 classes
    torch.save(blob, path)
    with pytest.raises(PtmddError, match=str(path).replace("\\", "\\\\")):
        load_ptm(path)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(PtmddError, match="truncated or corrupted"):
        load_ptm(path)


def test_cross_domain_member_adapts_channels_size_and_normalisation(tmp_path):
    _write_member(tmp_path, source="rgb", channels=3, size=(16, 16))
    pool = PTMPool(
        [PTMGroup(arch="ConvNetW32", epoch=1, loss="cclom", source="rgb")], tmp_path, "toy", 3, (0.0,), (1.0,)
    )
    member = pool.members[0]
    x = torch.full((2, 1, 8, 8), 0.75)  # target-normalised with mean 0, std 1 -> pixel value 0.75
    y = member.adapt(x)
    assert y.shape == (2, 3, 16, 16)
    assert torch.allclose(y, torch.full_like(y, (0.75 - 0.5) / 0.25))


def test_ptm_feature_table_is_each_images_features_whatever_the_chunk(tmp_path):
    _write_member(tmp_path, source="rgb", channels=3, size=(16, 16))  # adapt() maps 1 -> 3 channels, 8 -> 16 px
    pool = PTMPool(
        [PTMGroup(arch="ConvNetW32", epoch=1, loss="cclom", source="rgb")], tmp_path, "toy", 3, (0.0,), (1.0,)
    )
    member = pool.members[0]
    images = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    table = ptm_feature_table(member, images, chunk=4)
    one_by_one = torch.cat([member.net.embed(member.adapt(x[None])) for x in images])
    assert table.shape == (10, 32 * 2 * 2) and table.dtype == torch.float32 and not table.requires_grad
    torch.testing.assert_close(table, one_by_one, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ptm_feature_table(member, images, chunk=100), table, rtol=1e-5, atol=1e-6)
    with pytest.raises(PtmddError, match="chunk >= 1"):
        ptm_feature_table(member, images, chunk=0)
    with pytest.raises(PtmddError, match="got 0 images"):
        ptm_feature_table(member, images[:0])
