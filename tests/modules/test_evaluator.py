"""SyntheticSetEvaluator: standalone evaluation of an exported synthetic set (``ptmdd test``/``validate``)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from ptmdd_lightning.core.evaluate import EvalProtocol, random_real_subset, train_and_test
from ptmdd_lightning.core.guidance import member_path
from ptmdd_lightning.core.synthetic import SyntheticSet
from ptmdd_lightning.data import RealDataModule
from ptmdd_lightning.errors import PtmddError
from ptmdd_lightning.fileio import atomic_save
from ptmdd_lightning.main import main
from ptmdd_lightning.modules import evaluator as evaluator_module
from ptmdd_lightning.modules.evaluator import SyntheticSetEvaluator, check_export
from tests.helpers import fmnist_info
from tests.test_resume import write_ptm

REPO = Path(__file__).resolve().parents[2]
EVALUATE = str(REPO / "configs" / "evaluate.yaml")
FMNIST = fmnist_info()


def _export(
    images: torch.Tensor,
    ipc: int,
    classes=None,
    dataset: str = "fashion_mnist",
    mean=(0.2861,),
    std=(0.3530,),
) -> dict:
    k = images.shape[0] // ipc
    s = SyntheticSet(k, ipc, images.shape[1], tuple(images.shape[-2:]))
    with torch.no_grad():
        s.images.copy_(images)
    blob = s.export(mean, std, dataset, None, config={"dataset_info": {"classes": classes}, "ipc": ipc})
    blob["global_step"] = 7
    return blob


def _noise_export(tmp_path: Path, ipc: int = 2, **kwargs) -> Path:
    images = torch.randn(10 * ipc, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return atomic_save(_export(images, ipc, **kwargs), tmp_path / "synthetic_set.pt")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(dataset="mnist"), "--data.init_args.dataset mnist"),
        (dict(classes=[5, 6, 7, 8, 9]), "--data.init_args.classes"),
        (dict(mean=(0.5,)), "normalised with mean"),
    ],
)
def test_check_export_names_the_fix(change, message):
    blob = _export(torch.zeros(10, 1, 28, 28), 1, **change)
    with pytest.raises(PtmddError, match=message.replace("(", r"\(")):
        check_export(blob, "syn.pt", FMNIST)


def test_check_export_rejects_other_shapes_and_class_counts():
    with pytest.raises(PtmddError, match="1x32x32"):
        check_export(_export(torch.zeros(10, 1, 32, 32), 1), "syn.pt", FMNIST)
    with pytest.raises(PtmddError, match="has 5 classes"):
        check_export(_export(torch.zeros(5, 1, 28, 28), 1), "syn.pt", FMNIST)
    with pytest.raises(PtmddError, match="class subset"):  # a subset export on the full DataModule
        check_export(
            _export(torch.zeros(5, 1, 28, 28), 1, classes=[0, 1, 2, 3, 4]),
            "syn.pt",
            dataclasses.replace(FMNIST, num_classes=5, class_names=FMNIST.class_names[:5]),
        )
    check_export(
        _export(torch.zeros(5, 1, 28, 28), 1, classes=[0, 1, 2, 3, 4]), "syn.pt", fmnist_info([0, 1, 2, 3, 4])
    )  # the matching subset passes


def test_check_export_reads_the_class_subset_of_an_export_of_an_earlier_version():
    """Exports written before DatasetInfo carry the subset as config["classes"]."""
    blob = _export(torch.zeros(5, 1, 28, 28), 1)
    blob["config"] = {"classes": [5, 6, 7, 8, 9], "ipc": 1}
    check_export(blob, "syn.pt", fmnist_info([5, 6, 7, 8, 9]))
    with pytest.raises(PtmddError, match="class subset"):
        check_export(blob, "syn.pt", fmnist_info([0, 1, 2, 3, 4]))


def test_constructor_validates_settings():
    with pytest.raises(PtmddError, match="num_models >= 1"):
        SyntheticSetEvaluator(path="x.pt", num_models=0)
    with pytest.raises(PtmddError):
        SyntheticSetEvaluator(path="x.pt", archs=["NoSuchNet"])
    with pytest.raises(PtmddError, match="baseline_draw must be one of evaluation, run"):
        SyntheticSetEvaluator(path="x.pt", baseline_draw="seed")


@pytest.mark.parametrize("draw", ["evaluation", "run"])
def test_test_command_reproduces_the_random_real_baseline(tmp_path, monkeypatch, fake_fashion_root, draw):
    """An export that IS the baseline's random real subset must score exactly what the baseline scores; the subset
    is drawn from the evaluation seed (``eval_seed + 1``), or with ``baseline_draw: run`` from the run's seed too."""
    from ptmdd_lightning.seeding import baseline_draw_seed

    monkeypatch.chdir(tmp_path)
    dm = RealDataModule(dataset="fashion_mnist", root=str(fake_fashion_root))
    dm.setup("test")
    ipc, seed, run_seed = 2, 3, 5
    draw_seed = seed + 1 if draw == "evaluation" else baseline_draw_seed("run", seed, run_seed)
    real_x, real_y = random_real_subset(
        dm.train_images, dm.train_labels, ipc, 10, torch.Generator().manual_seed(draw_seed)
    )
    path = atomic_save(_export(real_x, ipc), tmp_path / "subset.pt")
    states: list[torch.Tensor] = []

    def spy(images, labels, ipc, num_classes, generator):
        states.append(generator.get_state())
        return random_real_subset(images, labels, ipc, num_classes, generator)

    monkeypatch.setattr(evaluator_module, "random_real_subset", spy)
    cli = main(
        [
            "test",
            "--config",
            EVALUATE,
            "--model.init_args.path",
            str(path),
            "--data.init_args.root",
            str(fake_fashion_root),
            "--model.init_args.archs",
            "[ConvNetW32]",
            "--model.init_args.protocol.epochs",
            "2",
            "--model.init_args.num_models",
            "2",
            "--model.init_args.eval_seed",
            str(seed),
            "--model.init_args.output_dir",
            str(tmp_path / "out"),
            "--model.init_args.baseline_draw",
            draw,
            "--seed_everything",
            str(run_seed),
        ]
    )
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["arch"], r["set"], r["n"], r["step"]) for r in rows] == [
        ("ConvNetW32", "synthetic", 2, 7),
        ("ConvNetW32", "random_real", 2, 7),
    ]
    assert len(states) == 1 and torch.equal(states[0], torch.Generator().manual_seed(draw_seed).get_state())
    assert rows[0]["accs"] == rows[1]["accs"]  # same images, same seed -> the same models
    expected = train_and_test(
        "ConvNetW32",
        real_x,
        real_y,
        dm.test_images,
        dm.test_labels,
        10,
        2,
        EvalProtocol(epochs=2, precision="bf16"),
        seed=seed,
    )
    assert rows[0]["accs"] == pytest.approx(expected.tolist())
    metrics = cli.trainer.callback_metrics
    assert float(metrics["test/ConvNetW32/acc"]) == pytest.approx(rows[0]["mean"])
    assert float(metrics["test/ConvNetW32/gain"]) == pytest.approx(0.0)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| ConvNetW32 | synthetic |" in md and "random_real" in md


def test_validate_command_writes_the_cross_architecture_table(tmp_path, monkeypatch, fake_fashion_root):
    monkeypatch.chdir(tmp_path)
    path = _noise_export(tmp_path)
    main(
        [
            "validate",
            "--config",
            EVALUATE,
            "--model.init_args.path",
            str(path),
            "--data.init_args.root",
            str(fake_fashion_root),
            "--model.init_args.archs",
            "[ConvNetW32, MLP]",
            "--model.init_args.protocol.epochs",
            "1",
            "--model.init_args.num_models",
            "1",
            "--model.init_args.baseline",
            "false",
        ]
    )
    results = sorted(Path("lightning_logs/evaluate").glob("version_*/results.json"))
    assert len(results) == 1
    rows = json.loads(results[0].read_text())
    assert [(r["arch"], r["set"]) for r in rows] == [("ConvNetW32", "synthetic"), ("MLP", "synthetic")]
    assert all(0.0 <= r["mean"] <= 1.0 for r in rows)


def test_mismatched_export_is_a_one_line_user_error(tmp_path, monkeypatch, capsys, fake_fashion_root):
    monkeypatch.chdir(tmp_path)
    subset = _noise_export(tmp_path, ipc=1)
    blob = torch.load(subset, weights_only=False)
    blob["images"], blob["labels"] = blob["images"][:5], blob["labels"][:5]
    blob["num_classes"], blob["config"] = 5, {"classes": [5, 6, 7, 8, 9]}
    atomic_save(blob, subset)
    for file, needle in (
        (subset, "--data.init_args.classes '[5, 6, 7, 8, 9]'"),
        (tmp_path / "missing.pt", "does not exist"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(
                [
                    "test",
                    "--config",
                    EVALUATE,
                    "--model.init_args.path",
                    str(file),
                    "--data.init_args.root",
                    str(fake_fashion_root),
                ]
            )
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err


def test_missing_path_names_the_argument(tmp_path, monkeypatch, capsys, fake_fashion_root):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--config", EVALUATE, "--data.init_args.root", str(fake_fashion_root)])
    assert exit_info.value.code == 2
    assert "--model.init_args.path" in capsys.readouterr().err


def test_an_export_with_labels_outside_the_class_range_says_so():
    blob = _export(torch.zeros(10, 1, 28, 28), 1)
    blob["labels"] = blob["labels"] + 5  # 5..14, ten classes
    with pytest.raises(PtmddError, match=r"holds labels 5\.\.14, outside 0\.\.9"):
        check_export(blob, "syn.pt", FMNIST)


def test_an_export_holding_nan_is_refused(tmp_path, monkeypatch, capsys, fake_fashion_root):
    images = torch.zeros(10, 1, 28, 28)
    images[3, 0, 4, 4] = float("nan")
    path = atomic_save(_export(images, 1), tmp_path / "synthetic_set.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "test",
                "--config",
                EVALUATE,
                "--model.init_args.path",
                str(path),
                "--data.init_args.root",
                str(fake_fashion_root),
            ]
        )
    assert exit_info.value.code == 2
    assert "1 non-finite pixel values" in capsys.readouterr().err
    assert not list(tmp_path.glob("lightning_logs/evaluate/*/results.json"))


def test_test_command_with_a_teacher_evaluates_hard_soft_and_without_augmentation_and_scores_them(
    tmp_path, monkeypatch, fake_fashion_root
):
    """Issue "PTMs as teachers too": a pool member's soft labels, the random set with the same teacher, DD-Ranking."""
    monkeypatch.chdir(tmp_path)
    calls = []

    def spy(*args, **kwargs):
        calls.append((args[7], kwargs["teacher"]))  # (protocol, teacher) of every evaluation
        return evaluator_module.train_and_test.__wrapped__(*args, **kwargs)

    spy.__wrapped__ = evaluator_module.train_and_test
    monkeypatch.setattr(evaluator_module, "train_and_test", spy)
    for seed in (0, 1):
        write_ptm(member_path(tmp_path / "pool", "fashion_mnist", "ConvNetW32", seed, 1), seed=seed)
    path = _noise_export(tmp_path)
    # one PTM, and an ensemble of two
    teachers = (
        '[{"ptms": [{"arch": "ConvNetW32", "epoch": 1}], "temperature": 2.0},'
        ' {"ptms": [{"arch": "ConvNetW32", "epoch": 1, "num_seeds": 2}], "temperature": 2.0}]'
    )
    main(
        [
            "test",
            "--config",
            EVALUATE,
            "--model.init_args.path",
            str(path),
            "--data.init_args.root",
            str(fake_fashion_root),
            "--model.init_args.archs",
            "[ConvNetW32]",
            "--model.init_args.protocol.epochs",
            "1",
            "--model.init_args.num_models",
            "2",
            "--model.init_args.teachers",
            teachers,
            "--model.init_args.pool_root",
            str(tmp_path / "pool"),
            "--model.init_args.real_hard_acc",
            "0.9",
            "--model.init_args.real_hard_source",
            "a test value",
            "--model.init_args.no_aug",
            "true",
            "--model.init_args.output_dir",
            str(tmp_path / "out"),
        ]
    )
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    one, two = "ConvNetW32 e1 s[0] T=2", "ConvNetW32 e1 s[0, 1] T=2"
    kinds = [(r["set"], r["labels"], r["augment"], r.get("teacher")) for r in rows]
    assert kinds == [
        (s, labels, aug, teacher)
        for labels, aug, teacher in (
            ("hard", True, None),
            ("soft", True, one),
            ("soft", True, two),
            ("hard", False, None),
        )
        for s in ("synthetic", "random_real")
    ]
    syn, rnd, syn_s, rnd_s, syn_e, rnd_e, syn_n, rnd_n = (torch.tensor(r["accs"], dtype=torch.float64) for r in rows)
    # both sets got the same teacher, at T = 2: one member, then the ensemble of two; no-aug: a protocol without DSA
    assert [None if c[1] is None else len(c[1].members) for c in calls] == [None, None, 1, 1, 2, 2, None, None]
    assert all(c[1].temperature == 2.0 for c in calls[2:6])
    assert [c[0].augments for c in calls] == [True] * 6 + [False, False]

    def score(x: torch.Tensor) -> float:  # DD-Ranking's (e^x - e^-1) / (e - e^-1), per round, then the mean
        return float(((x.exp() - math.exp(-1)) / (math.e - math.exp(-1))).mean())

    hard = rows[0]
    assert hard["hlr"] == pytest.approx(float((0.9 - syn).mean()))
    assert hard["ior"] == pytest.approx(float((syn - rnd).mean()))
    assert hard["lrs"] == pytest.approx(score(0.5 * (syn - rnd) - 0.5 * (0.9 - syn)))
    assert hard["ars"] == pytest.approx(score(0.5 * (syn - rnd) + 0.5 * (syn_n - rnd_n)))
    assert rows[2]["lrs"] == pytest.approx(score(0.5 * (syn_s - rnd_s) - 0.5 * (0.9 - syn)))
    assert rows[4]["ior"] == pytest.approx(float((syn_e - rnd_e).mean()))  # each teacher paired with its own
    assert hard["real_hard_source"] == "a test value" and "lrs" not in rows[1]  # scores on the synthetic rows
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| labels |" in md and "LRS (%)" in md and f"soft ({two})" in md and ", no aug" in md
    csv_head = (tmp_path / "out" / "results.csv").read_text().splitlines()[0]
    assert "labels" in csv_head and "lrs_std" in csv_head and "real_hard_source" in csv_head


def test_teacher_settings_are_checked_at_construction():
    with pytest.raises(PtmddError, match="fraction"):
        SyntheticSetEvaluator(real_hard_acc=91.0)
    with pytest.raises(PtmddError, match="loss: clom"):
        SyntheticSetEvaluator(teachers=[{"ptms": [{"arch": "ConvNet", "loss": "cclom"}]}])
    with pytest.raises(PtmddError, match=r"teacher\.ptms is empty"):
        SyntheticSetEvaluator(teachers=[{"ptms": []}])
    with pytest.raises(PtmddError, match="listed twice"):
        SyntheticSetEvaluator(teachers=[{"ptms": [{"arch": "ConvNet"}]}] * 2)
