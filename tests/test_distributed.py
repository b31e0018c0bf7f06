"""The same commands on 2 processes (Lightning DDP on the gloo backend, this CPU)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (50, 60, 210)}


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 6)):
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def _run(*args, cwd):
    env = {**os.environ, "TRANSFERKIT_ENGINE": "torch"}
    done = subprocess.run([sys.executable, "-m", "transferkit", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_two_process_extract_equals_one_process(colours, tmp_path):
    common = ["extract", colours, "--model", "resnet18", "--no-pretrained", "--image-size", "32", "--batch-size", "4", "--chunk-batches", "1", "--json"]
    one = json.loads(_run(*common, "--cache-dir", tmp_path / "one", cwd=tmp_path))
    two = json.loads(_run(*common, "--cache-dir", tmp_path / "two", "--devices", "2", cwd=tmp_path))
    assert [s["key"] for s in one["splits"]] == [s["key"] for s in two["splits"]]
    for split in two["splits"]:
        assert split["cache"] == "computed"
        a = np.load(tmp_path / "one" / "features" / split["key"] / "features.npy")
        b = np.load(tmp_path / "two" / "features" / split["key"] / "features.npy")
        assert np.array_equal(a, b), split["split"]  # same rows, same order, same bits


def test_two_process_training_matches_one_process(colours, tmp_path):
    common = ["train", colours, "--model", "lenet", "--strategy", "scratch", "--image-size", "32", "--epochs", "4", "--lr", "0.01",
              "--batch-size", "8", "--augment", "none", "--json"]  # fmt: skip
    one = json.loads(_run(*common, "--out", tmp_path / "one", cwd=tmp_path))
    two = json.loads(_run(*common, "--out", tmp_path / "two", "--devices", "2", "--distributed", "ddp", cwd=tmp_path))
    assert two["epochs_completed"] == one["epochs_completed"] == 4
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert one["test_acc"] > 0.9 and abs(two["test_acc"] - one["test_acc"]) <= 0.1
