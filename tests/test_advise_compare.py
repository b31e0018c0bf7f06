"""`advise` (the four cases from measurements) and `compare` (the leaderboard, resumable)."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from transferkit.plan.advice import LARGE_PER_CLASS, advise, decide
from transferkit.cli import app
from transferkit.plan.comparison import Cell, best, compare, grid
from transferkit.core.errors import TransferkitError
from transferkit.api import train

runner = CliRunner()


@pytest.mark.parametrize(
    "per_class, probes, case, strategy, layer",
    [
        (50, {"penultimate": 0.9, "stage1": 0.5, "stage2": 0.7}, "small-similar", "linear", "penultimate"),
        (50, {"penultimate": 0.6, "stage1": 0.5, "stage2": 0.8}, "small-different", "linear", "stage2"),
        (LARGE_PER_CLASS, {"penultimate": 0.9, "stage1": 0.5}, "large-similar", "finetune", "penultimate"),
        (5000, {"penultimate": 0.6, "stage2": 0.7}, "large-different", "finetune", "penultimate"),
        (50, {"penultimate": 0.795, "stage2": 0.80}, "small-similar", "linear", "penultimate"),  # within the margin
    ],
)
def test_four_cases(per_class, probes, case, strategy, layer):
    got = decide(per_class, probes, pixels=0.3, confidence=0.5, n_train=per_class * 10, n_sample=100)
    assert got[:3] == (case, strategy, layer)
    assert any("probe" in reason for reason in got[3])


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    """Two classes that only low-level features tell apart: horizontal vs vertical stripes."""
    root = tmp_path_factory.mktemp("stripes")
    rng = np.random.default_rng(0)
    for name, axis in (("horizontal", 0), ("vertical", 1)):
        (root / name).mkdir()
        for i in range(16):
            line = (np.arange(32) // 2 % 2 * 200 + rng.integers(0, 40)).astype(np.uint8)
            pixels = np.repeat(line[:, None] if axis == 0 else line[None, :], 32, axis=1 - axis)
            Image.fromarray(np.stack([pixels] * 3, -1)).save(root / name / f"{i}.png")
    return root


FAST = {"model": "resnet18", "pretrained": False, "image_sizes": (32,), "sample_per_class": 8, "progress": False}


def test_advice_json_shape_and_command(stripes, tmp_path):
    advice = advise(str(stripes), cache_dir=tmp_path, **FAST)
    data = advice.to_dict()
    assert data["case"] in ("small-similar", "small-different")
    assert set(data["evidence"]["probe_accuracy"]) == {"penultimate", "stage1", "stage2", "stage3", "stage4", "pixels"}
    assert data["evidence"]["median_per_class"] < LARGE_PER_CLASS and data["image_size"] == 32
    assert data["command"].startswith(f"transferkit train {stripes} --model resnet18 --strategy {data['strategy']}")
    assert 0 < data["evidence"]["imagenet_confidence"] <= 1


def test_advise_cli_json(stripes, tmp_path):
    result = runner.invoke(app, ["advise", str(stripes), "--model", "efficientnet_lite0", "--sample-per-class", "4", "--cache-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert {"case", "strategy", "layer", "image_size", "regularisation", "evidence", "reasons", "command"} <= set(json.loads(result.stdout))


def test_strategy_auto_on_random_weights_plans_heads_on_its_measurements(stripes, tmp_path):
    result = train(str(stripes), tmp_path / "run", progress=False, strategy="auto", model="resnet18", pretrained=False, time_budget="30s",
                   cache_dir=str(tmp_path / "cache"))  # fmt: skip
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["strategy"] in ("linear", "svm", "mlp") and config["pretrained"] is False  # no fine-tuning of random weights
    plan = json.loads((tmp_path / "run" / "metrics.json").read_text())["plan"]
    assert plan["chosen"].startswith(config["strategy"]) and "resnet18" in plan["chosen"]
    assert result.metrics["summary"]["strategy"] == config["strategy"]


def test_grid_applies_layers_to_heads_only():
    cells = grid(["lenet", "resnet18"], ["linear", "finetune"], ["penultimate", "stage2"])
    assert [c.name for c in cells] == [
        "lenet-linear-penultimate", "lenet-linear-stage2", "lenet-finetune-penultimate",
        "resnet18-linear-penultimate", "resnet18-linear-stage2", "resnet18-finetune-penultimate",
    ]  # fmt: skip


def test_grid_refuses_unknown_names_before_any_cell_runs():
    with pytest.raises(TransferkitError, match=r"unknown model 'resnet51' \(did you mean resnet50\?\)"):
        grid(["lenet", "resnet51"], ["linear"])
    with pytest.raises(TransferkitError, match="unknown strategy 'magic'"):
        grid(["lenet"], ["linear", "magic"])


def test_compare_resumes_and_records_failed_cells(stripes, tmp_path):
    # lenet has no pretrained weights (built at random); resnet50's are not on this machine.
    cells = grid(["lenet"], ["linear", "svm"], ["penultimate", "stage2"]) + [Cell("resnet50", "linear")]
    options = {"image_size": 32, "cache_dir": str(tmp_path / "cache")}
    rows = compare(str(stripes), cells, tmp_path / "cmp", progress=False, echo=lambda *_: None, **options)
    assert [r["status"] for r in rows] == ["done"] * 4 + ["failed"]
    assert "no pretrained weights for resnet50" in rows[-1]["reason"]
    for name in ("leaderboard.csv", "leaderboard.md", "leaderboard.png"):
        assert (tmp_path / "cmp" / name).is_file()
    # A second run reuses every finished cell and retries only the failed one.
    again = compare(str(stripes), cells, tmp_path / "cmp", progress=False, echo=lambda *_: None, **options)
    assert [r["status"] for r in again] == ["done (reused)"] * 4 + ["failed"]
    assert [r["val_acc"] for r in again[:4]] == [r["val_acc"] for r in rows[:4]]


def test_best_cell_is_chosen_on_validation_not_test():
    rows = [{"layer": "a", "val_acc": 0.9, "test_acc": 0.80}, {"layer": "b", "val_acc": 0.8, "test_acc": 0.85}, {"layer": "c", "status": "failed"}]
    assert best(rows)["layer"] == "a"
    assert best([{"layer": "a", "test_acc": 0.7}, {"layer": "b", "test_acc": 0.8}])["layer"] == "b"  # no validation scores
    assert best([{"layer": "c", "status": "failed"}]) is None


def test_compare_cli_rejects_unknown_strategy(stripes, tmp_path):
    result = runner.invoke(app, ["compare", str(stripes), "--strategies", "linear,boost", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "unknown strategy 'boost'" in result.stderr


def test_compare_cli_fails_when_every_cell_fails(stripes, tmp_path):
    # resnet50's weights are not on this machine: the only cell fails, so the command does too.
    result = runner.invoke(app, ["compare", str(stripes), "--models", "resnet50", "--out", str(tmp_path / "cmp"), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1 and "every cell failed" in result.stderr and "no pretrained weights for resnet50" in result.stderr
    assert (tmp_path / "cmp" / "leaderboard.md").is_file()


def test_real_advice_on_digits_prefers_an_earlier_stage(tmp_path):
    """Digits are unlike ImageNet: the embedded Lite0's earlier stage beats its last layer."""
    advice = advise("digits", image_sizes=(64,), sample_per_class=30, cache_dir=tmp_path, progress=False)
    probes = advice.evidence["probe_accuracy"]
    assert advice.case == "small-different", advice.reasons
    assert advice.layer.startswith("stage") and probes[advice.layer] > probes["penultimate"]


def test_compare_gives_each_cell_the_options_its_strategy_uses(stripes, tmp_path):
    """epochs reaches the end-to-end cell, not the heads; val_fraction decides the split it records;
    an option no cell uses is refused before any cell runs."""
    cells = [Cell("lenet", "linear"), Cell("lenet", "frozen")]
    options = {"image_size": 32, "cache_dir": str(tmp_path / "cache"), "epochs": 1, "val_fraction": 0.5, "batch_size": 8}
    rows = compare(str(stripes), cells, tmp_path / "cmp", progress=False, echo=lambda *_: None, **options)
    assert [r["status"] for r in rows] == ["done", "done"], rows
    linear, frozen = (json.loads((tmp_path / "cmp" / c.name / "config.json").read_text()) for c in cells)
    assert "epochs" not in linear and frozen["epochs"] == 1
    assert linear["val_fraction"] == frozen["val_fraction"] == 0.5
    history = json.loads((tmp_path / "cmp" / cells[1].name / "metrics.json").read_text())["history"]
    assert len(history) == 1
    total = sum(1 for p in stripes.rglob("*.png") if "test" not in p.parts)
    assert rows[0]["train_images"] == pytest.approx(total / 2, abs=len(set(p.parent.name for p in stripes.rglob("*.png"))))
    assert (tmp_path / "cmp" / "leaderboard.html").is_file()
    with pytest.raises(TransferkitError, match="no cell's strategy uses --kernel"):
        compare(str(stripes), cells[:1], tmp_path / "other", progress=False, echo=lambda *_: None, kernel="rbf")


def test_mlp_head_takes_the_training_options():
    from transferkit.training.options import resolve
    from transferkit.training.trainer import _head

    head = _head(resolve({"strategy": "mlp", "lr": 0.02, "epochs": 3, "weight_decay": 0.05, "dropout": 0.1, "balance": "weights", "seed": 4}))
    assert (head.lr, head.epochs, head.weight_decay, head.dropout, head.class_weight, head.random_state) == (0.02, 3, 0.05, 0.1, "balanced", 4)
    linear = _head(resolve({"strategy": "linear"}))
    assert linear.class_weight is None
