"""`transferkit predict`: the real embedded network on real photos, bad inputs, batches."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import transferkit.core.asis as asis
from transferkit import predict
from transferkit.cli import app

runner = CliRunner()


def test_real_photos_get_the_right_imagenet_classes(photos, lite0):
    results = predict([photos["chelsea"], photos["coffee"]], lite0, top_k=3)
    chelsea, coffee = (r["top"][0] for r in results)
    assert 281 <= chelsea["class"] <= 285, chelsea  # one of ImageNet's domestic cats
    assert coffee["class"] == 967 and coffee["label"] == "espresso"
    assert coffee["probability"] > 0.5


def test_onnxruntime_engine_predicts_as_pytorch_does(photos, lite0, tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path))  # the export lands beside this cache
    images = [photos["chelsea"], photos["coffee"]]
    torch_results = predict(images, lite0, top_k=3, engine="torch")
    ort_results = predict(images, lite0, top_k=3, engine="onnxruntime")
    for ours, reference in zip(ort_results, torch_results):
        assert [t["class"] for t in ours["top"]] == [t["class"] for t in reference["top"]]
        np.testing.assert_allclose([t["probability"] for t in ours["top"]], [t["probability"] for t in reference["top"]], atol=1e-3)
    assert list((tmp_path / "engines").glob("efficientnet_lite0-*-imagenet-224.onnx"))


@pytest.fixture
def bad_inputs(tmp_path):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "zero.png").write_bytes(b"")
    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:60])
    return {
        "missing": tmp_path / "missing.jpg",
        "directory": tmp_path / "empty_dir",
        "not an image": tmp_path / "notes.txt",
        "empty file": tmp_path / "zero.png",
        "truncated": truncated,
        "good": good,
    }


@pytest.mark.parametrize("case", ["missing", "directory", "not an image", "empty file", "truncated"])
def test_bad_input_is_one_line_and_the_good_image_still_classified(bad_inputs, case):
    result = runner.invoke(app, ["predict", str(bad_inputs[case]), str(bad_inputs["good"]), "--image-size", "64", "--json"])
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad_inputs[case]) in errors[0]
    assert "Traceback" not in result.output
    out = json.loads(result.stdout)
    assert "error" in out[0] and out[1]["top"][0]["label"]


def test_unknown_model_is_one_line(bad_inputs):
    result = runner.invoke(app, ["predict", str(bad_inputs["good"]), "--model", "resnet51"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: unknown model 'resnet51' (did you mean resnet50?); `transferkit models` lists the "
        + str(len(__import__("transferkit").REGISTRY)) + " available"
    )


def test_missing_weights_via_cli(bad_inputs):
    result = runner.invoke(app, ["predict", str(bad_inputs["good"]), "--model", "resnet18"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "--no-pretrained" in result.stderr


def test_folder_of_100_images_in_batches_with_progress(tmp_path, lite0, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(100):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i:03d}.png")
    batches = []
    real = asis.iterate_batches

    def counting(*args, **kwargs):
        for batch in real(*args, **kwargs):
            batches.append(len(batch.indices))
            yield batch

    monkeypatch.setattr(asis, "iterate_batches", counting)
    monkeypatch.setattr("transferkit.core.asis.build_backbone", lambda *a, **k: lite0)
    result = runner.invoke(app, ["predict", str(tmp_path), "--batch-size", "32", "--image-size", "64", "--top-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert batches == [32, 32, 32, 4]
    assert len(json.loads(result.stdout)) == 100
    assert "100/100" in result.stderr and "img/s" in result.stderr


def test_models_json_lists_every_backbone():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    for lite in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
        assert rows[lite]["weights"] == "embedded"
    assert rows["efficientnet_lite2"]["input_size"] == 260 and rows["efficientnet_lite2"]["imagenet_top1"] == 77.6
    assert rows["resnet50"]["feature_dim"] == 2048 and rows["resnet50"]["imagenet_top1"] > 80
    assert rows["lenet"]["weights"] == rows["alexnet_bvlc"]["weights"] == "none (train from scratch, or --weights FILE)"
    assert rows["pixels"]["weights"] == "none (no learned layers)"
