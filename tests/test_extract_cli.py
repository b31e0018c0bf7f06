"""`transferkit extract` and `transferkit cache` from the command line."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from transferkit.cli import app

runner = CliRunner()


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "data" / name / f"{i}.png")
    return tmp_path / "data"


ARGS = ["--model", "resnet18", "--no-pretrained", "--image-size", "32"]


def test_second_extract_is_a_cache_hit(folder, tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    first = runner.invoke(app, ["extract", str(folder), *ARGS, *cache])
    assert first.exit_code == 0, first.output
    assert "computed" in first.stdout and "train:" in first.stdout and "val:" in first.stdout
    second = runner.invoke(app, ["extract", str(folder), *ARGS, *cache, "--json"])
    assert [s["cache"] for s in json.loads(second.stdout)["splits"]] == ["hit", "hit"]

    listed = json.loads(runner.invoke(app, ["cache", "list", *cache, "--json"]).stdout)
    assert len(listed) == 2 and all(e["complete"] and e["backbone"] == "resnet18" for e in listed)
    assert runner.invoke(app, ["cache", "list", *cache]).exit_code == 0
    removed = runner.invoke(app, ["cache", "remove", listed[0]["key"][:10], *cache])
    assert removed.exit_code == 0 and "removed 1 cache entry" in removed.stdout
    assert runner.invoke(app, ["cache", "remove", "--all", *cache]).exit_code == 0
    assert json.loads(runner.invoke(app, ["cache", "list", *cache, "--json"]).stdout) == []


def test_corrupt_images_are_skipped_and_reported_or_strict(folder, tmp_path):
    (folder / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "dog" / "empty.jpg").write_bytes(b"")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, ["extract", str(folder), *ARGS, *cache])
    assert result.exit_code == 0
    assert result.stderr.count("skipped:") == 2 and "2 images could not be decoded" in result.stderr
    strict = runner.invoke(app, ["extract", str(folder), *ARGS, *cache, "--strict"])
    assert strict.exit_code == 1


def test_int8_extraction_calibrates_every_split_on_the_training_split(folder, tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    float32 = json.loads(runner.invoke(app, ["extract", str(folder), *ARGS, *cache, "--json"]).stdout)
    result = runner.invoke(app, ["extract", str(folder), *ARGS, *cache, "--quantize", "int8", "--json"])
    assert result.exit_code == 0, result.output
    int8 = json.loads(result.stdout)
    assert [s["cache"] for s in int8["splits"]] == ["computed", "computed"]
    assert {s["key"] for s in int8["splits"]}.isdisjoint(s["key"] for s in float32["splits"])
    quantised = list((tmp_path / "cache" / "engines").glob("*-int8-*.onnx"))
    assert len(quantised) == 1  # one network for train and val: calibrated on the training split

    listed = runner.invoke(app, ["cache", "list", *cache])
    assert listed.exit_code == 0 and "ONNX exports: 2 files" in listed.stdout, listed.output  # float32 and int8
    removed = runner.invoke(app, ["cache", "remove", "--engines", *cache])
    assert removed.exit_code == 0 and "removed 0 cache entries and 2 ONNX exports" in removed.stdout, removed.output
    assert not list((tmp_path / "cache" / "engines").iterdir())
    assert len(json.loads(runner.invoke(app, ["cache", "list", *cache, "--json"]).stdout)) == 4  # the features stay


@pytest.mark.parametrize(
    "args, message",
    [
        (["nowhere/"], "does not exist"),
        (["mnist"], "digits"),
        (["digits", "--layer", "stage9"], "unknown layer"),
        (["digits", "--image-size", "4"], "too small"),
        (["digits", "--model", "resnet999"], "unknown model"),
    ],
)
def test_bad_arguments_are_one_line(args, message, tmp_path):
    result = runner.invoke(app, ["extract", *args, "--no-pretrained", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1 and message in result.stderr
