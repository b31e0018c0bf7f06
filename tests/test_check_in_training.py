"""The data check where users meet it: splits that keep copies on one side, `train`'s check line,
--dedupe, the test accuracy without the copies of training images, and `transferkit check`."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import transferkit
from transferkit.cli import app
from transferkit.core.check import duplicate_groups
from transferkit.core.data import load_data


def _write(folder, classes: dict[str, int], seed: int, size: int = 16):
    """``classes``: name -> images; each image a distinct random colour field (no two alike)."""
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        base = {"red": (200, 40, 40), "blue": (40, 40, 200)}.get(name, (120, 120, 120))
        for i in range(n):
            pixels = np.clip(np.array(base) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")
    return folder


def test_a_drawn_validation_split_keeps_every_copy_on_one_side(tmp_path):
    root = _write(tmp_path / "data", {"red": 20, "blue": 20}, seed=0)
    for i in range(6):  # six images copied three times each within their class
        for k in range(2):
            shutil.copy(root / "red" / f"{i}.png", root / "red" / f"copy{i}-{k}.png")
    for seed in range(5):
        dataset = load_data(str(root), seed=seed)
        train, val = [str(s) for s in dataset.train.samples], [str(s) for s in dataset.val.samples]
        groups = duplicate_groups(train + val)
        assert not set(groups[: len(train)]) & set(groups[len(train):]), f"seed {seed}: a copy on both sides"
        assert len(val) >= 6


@pytest.fixture
def leaky(tmp_path):
    """train/test folders where two test images are byte-identical copies of training images."""
    root = tmp_path / "leaky"
    _write(root / "train", {"red": 12, "blue": 12}, seed=1)
    _write(root / "val", {"red": 4, "blue": 4}, seed=2)
    _write(root / "test", {"red": 6, "blue": 6}, seed=3)
    shutil.copy(root / "train" / "red" / "0.png", root / "test" / "red" / "copy-of-train.png")
    shutil.copy(root / "train" / "blue" / "0.png", root / "test" / "blue" / "copy-of-train.png")
    shutil.copy(root / "train" / "red" / "1.png", root / "train" / "red" / "again.png")
    return root


def test_train_reports_the_test_accuracy_without_copies_of_training_images(leaky, tmp_path, capsys):
    result = transferkit.train(str(leaky), tmp_path / "run", strategy="linear", model="pixels", engine="torch", num_workers=0)
    summary = result.metrics["summary"]
    assert summary["test_images_with_copies"] == 2
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["test_clean"]["images_with_copies"] == 2 and sum(map(sum, metrics["test_clean"]["confusion_matrix"])) == 12
    assert metrics["check"]["exact_duplicates"]["across_splits"]["files"]["test"] == 2
    err = capsys.readouterr().err
    assert "check: exact duplicates: 2 files in test with a copy in another split" in err
    assert "2 of 14 test images have a copy in train or val" in err
    assert summary["test_acc"] >= 0.9 and summary["test_acc_without_copies"] >= 0.9  # red against blue: easy


def test_dedupe_trains_on_one_copy_of_each_image(leaky, tmp_path, capsys):
    plain = transferkit.train(str(leaky), tmp_path / "plain", strategy="linear", model="pixels", engine="torch", num_workers=0, progress=False)
    deduped = transferkit.train(str(leaky), tmp_path / "deduped", strategy="linear", model="pixels", engine="torch", num_workers=0, dedupe=True)
    assert plain.metrics["summary"]["train_images"] == 25
    assert deduped.metrics["summary"]["train_images"] == 22  # the extra copy in train, and the two whose copies are in test
    assert "--dedupe: training on 22 of 25 images" in capsys.readouterr().err
    assert json.loads((tmp_path / "deduped" / "config.json").read_text())["dedupe"] is True
    with pytest.raises(transferkit.TransferkitError, match="--dedupe compares image files"):
        transferkit.train("digits", tmp_path / "digits", strategy="linear", model="pixels", dedupe=True, progress=False)


def test_the_check_command_reads_and_changes_nothing(leaky):
    (leaky / "train" / "red" / "notes.jpg").write_text("not an image")
    before = sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in leaky.rglob("*"))
    result = CliRunner().invoke(app, ["check", str(leaky), "--no-embeddings", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["files"]["not_image"]["count"] == 1
    assert report["exact_duplicates"]["across_splits"]["files"]["test"] == 2
    assert "label_errors" not in report and "near_duplicates" not in report
    text = CliRunner().invoke(app, ["check", str(leaky), "--no-embeddings"])
    assert text.exit_code == 0 and "2 files in test with a copy in another split" in text.output
    assert sorted((p, p.stat().st_mtime_ns, p.stat().st_size) for p in leaky.rglob("*")) == before
