"""`transferkit train` and the run folder: heads on features, evaluate, classify, export."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from transferkit import TransferkitError, build_backbone
from transferkit.cli import app
from transferkit.core.evaluation import evaluate_run
from transferkit.core.features import list_entries
from transferkit.core.runs import load_run
from transferkit.api import train

runner = CliRunner()
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (50, 60, 210)}


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Three easy classes of 24 px images, with train and test splits."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


FAST = {"model": "resnet18", "pretrained": False, "image_size": 32, "batch_size": 8}


@pytest.mark.parametrize("strategy, extra", [("linear", {}), ("svm", {}), ("svm", {"kernel": "rbf"}), ("mlp", {})])
def test_heads_on_features_end_to_end(tmp_path, colours, strategy, extra):
    result = train(colours, tmp_path / "run", progress=False, strategy=strategy, **FAST, **extra)
    summary = result.metrics["summary"]
    assert summary["test_acc"] >= 0.75, summary
    for name in ("config.json", "model.safetensors", "model.json", "metrics.json", "report.md", "confusion.png", "curves.png"):
        assert (tmp_path / "run" / name).is_file(), name
    loaded = load_run(tmp_path / "run")
    probs, ok, _ = loaded.scores(sorted((colours / "test" / "red").glob("*.png")))
    assert ok.all() and loaded.classes == sorted(COLOURS)


@pytest.mark.parametrize("given, recorded", [({}, 0.5), ({"dropout": 0.3}, 0.3)], ids=["mlp-default", "given"])
def test_config_records_the_dropout_the_head_used(tmp_path, colours, given, recorded):
    train(colours, tmp_path / "run", progress=False, strategy="mlp", **FAST, **given)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dropout"] == recorded


@pytest.mark.parametrize("extra", [{}, {"flip_tta": True}, {"quantize": "int8"}], ids=["plain", "flip-tta", "int8"])
def test_loaded_run_reproduces_its_test_accuracy(tmp_path, colours, extra):
    train(colours, tmp_path / "run", progress=False, strategy="linear", cache_dir=str(tmp_path / "cache"), **FAST, **extra)
    if extra.get("quantize"):  # the head learns on int8 features; the saved float32 network is what gets scored
        entries = {e["split"]: e for e in list_entries(tmp_path / "cache")}
        assert entries["train"]["quantize"] and not entries["test"]["quantize"], entries
    assert json.loads((tmp_path / "run" / "model.json").read_text())["flip_tta"] == extra.get("flip_tta", False)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "run"), str(colours), "--json"])
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["summary"]["test_acc"]
    assert json.loads(result.stdout)["accuracy"] == recorded


def test_classify_and_evaluate_on_onnxruntime_match_pytorch(tmp_path, colours, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    train(colours, tmp_path / "run", progress=False, strategy="linear", **FAST)
    run = load_run(tmp_path / "run")
    images = sorted((colours / "test" / "red").glob("*.png"))
    torch_probs, _, _ = run.scores(images, engine="torch")
    ort_probs, ok, _ = run.scores(images, engine="onnxruntime")
    assert ok.all()
    np.testing.assert_allclose(ort_probs, torch_probs, atol=1e-3)
    assert list((tmp_path / "cache" / "engines").glob("run-*.onnx"))
    result = runner.invoke(app, ["classify", str(tmp_path / "run"), str(images[0]), "--engine", "onnxruntime", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["top"][0]["label"] == "red"


def test_an_end_to_end_run_is_scored_on_onnxruntime_after_its_weights_are_saved(tmp_path, colours):
    """train scores val and test through the saved weights' ONNX export (on a CPU, from 1,000 images
    on, with --engine auto), and its figures are the PyTorch network's."""
    train(colours, tmp_path / "run", progress=False, strategy="finetune", epochs=1, head_epochs=0, engine="onnxruntime",
          cache_dir=str(tmp_path / "cache"), **FAST)  # fmt: skip
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert (tmp_path / "cache" / "engines" / f"run-{meta['model_sha256'][:16]}-32.onnx").is_file()
    recorded = json.loads((tmp_path / "run" / "metrics.json").read_text())["summary"]
    assert meta["summary"] == recorded
    assert evaluate_run(tmp_path / "run", str(colours), engine="torch")["accuracy"] == recorded["test_acc"]


def test_auto_scoring_falls_back_to_pytorch_where_onnxruntime_fails(tmp_path, colours, monkeypatch):
    from transferkit.core import engines
    train(colours, tmp_path / "run", progress=False, strategy="linear", cache_dir=str(tmp_path / "cache"), **FAST)
    run = load_run(tmp_path / "run")
    images = sorted((colours / "test" / "red").glob("*.png"))
    expected, _, _ = run.scores(images, engine="torch")
    monkeypatch.setattr(engines, "PARITY_ATOL", -1.0)  # nothing agrees now
    monkeypatch.setenv("TRANSFERKIT_ENGINE", "auto")  # the tests' default is torch
    monkeypatch.setattr(engines, "AUTO_ONNX_MIN_IMAGES", 1)  # auto picks ONNX Runtime for these few images
    with pytest.warns(UserWarning, match="ONNX Runtime cannot run this network.*scoring with PyTorch"):
        probs, ok, _ = run.scores(images, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(probs, expected)
    with pytest.raises(TransferkitError, match="differ from PyTorch's"):  # asked for by name: no fallback
        run.scores(images, engine="onnxruntime", cache_dir=tmp_path / "cache")


def test_flip_tta_averages_each_image_with_its_mirror():
    backbone = build_backbone("resnet18", pretrained=False, seed=0).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = (backbone.features(x, "stage2") + backbone.features(x.flip(-1), "stage2")) / 2
        torch.testing.assert_close(backbone.features(x, "stage2", flip_tta=True), expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(TransferkitError, match="--strategy finetune does not use --flip-tta: drop it; it is an option of --strategy linear | mlp | svm"):
        train("digits", None, strategy="finetune", flip_tta=True)


def test_head_on_int8_features(tmp_path, colours, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    result = train(colours, tmp_path / "run", progress=False, strategy="linear", quantize="int8", **FAST)
    assert result.metrics["summary"]["test_acc"] >= 0.75
    assert json.loads((tmp_path / "run" / "config.json").read_text())["quantize"] == "int8"
    # train, val and test features all come from one int8 network, calibrated on the training split
    assert len(list((tmp_path / "cache" / "engines").glob("*-int8-*.onnx"))) == 1
    assert len(list((tmp_path / "cache" / "features").glob("*/meta.json"))) == 3


def test_second_head_reuses_cached_features(tmp_path, colours):
    train(colours, tmp_path / "a", progress=False, strategy="linear", **FAST)
    second = train(colours, tmp_path / "b", progress=False, strategy="svm", **FAST)
    assert second.metrics["summary"]["features_cached"] is True


def test_earlier_stage_and_per_class(tmp_path, colours):
    result = train(colours, tmp_path / "run", progress=False, strategy="linear", layer="stage2", per_class=4, **FAST)
    assert result.metrics["summary"]["train_images"] == 12
    assert load_run(tmp_path / "run").model.layer == "stage2"


def test_classify_cli_names_the_classes(tmp_path, colours):
    train(colours, tmp_path / "run", progress=False, strategy="linear", **FAST)
    images = [str(colours / "test" / c / "0.png") for c in ("red", "blue")]
    result = runner.invoke(app, ["classify", str(tmp_path / "run"), *images, "--json"])
    assert result.exit_code == 0, result.output
    assert [r["top"][0]["label"] for r in json.loads(result.stdout)] == ["red", "blue"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(tmp_path, colours, fmt):
    train(colours, tmp_path / "run", progress=False, strategy="linear", layer="stage3", **FAST)
    result = runner.invoke(app, ["export", str(tmp_path / "run"), "--format", fmt, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["max_abs_difference"] < 1e-3
    assert str(tmp_path) not in (tmp_path / "run" / "model.json").read_text()  # no absolute paths


def test_train_json_prints_final_metrics(tmp_path, colours):
    args = ["train", str(colours), "--strategy", "linear", "--model", "resnet18", "--no-pretrained", "--image-size", "32", "--out", str(tmp_path / "r"), "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"val_acc", "test_acc", "extract_seconds", "train_seconds", "params"} <= set(summary)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"strategy": "boost"}, "unknown strategy"),
        ({"strategy": "frozen", "epochs": 0}, "--epochs must be at least 1"),
        ({"layer": "stage9"}, "unknown layer"),
        ({"strategy": "finetune", "layer": "stage2"}, "--strategy finetune does not use --layer"),
        ({"per_class": 0}, "--per-class"),
        ({"strategy": "frozen", "quantize": "int8"}, "--strategy frozen does not use --quantize"),
        ({"strategy": "finetune", "cache_frozen": True}, "--cache-frozen needs frozen layers: give --unfreeze N"),
        ({"strategy": "frozen", "cache_frozen": True}, "--strategy frozen does not use --cache-frozen: drop it; it is an option of --strategy finetune$"),
        ({"strategy": "linear", "epochs": 3}, "--strategy linear does not use --epochs: drop it; it is an option of --strategy finetune | frozen | mlp | scratch"),
        ({"strategy": "scratch", "weights": "w.safetensors"}, "--strategy scratch does not use --weights"),
        ({"strategy": "linear", "balance": "sampler"}, "use --balance weights"),
        ({"weights": "w.safetensors", "pretrained": False}, "contradict"),
        ({"strategy": "finetune", "unfreeze": "1", "cache_frozen": True, "augment": "strong"}, "--augment light or none"),
        ({"strategy": "finetune", "unfreeze": "5", "cache_frozen": True}, "--unfreeze at most 4"),
    ],
)
def test_bad_options_are_clear(tmp_path, colours, options, message):
    with pytest.raises(TransferkitError, match=message):
        train(colours, tmp_path / "run", progress=False, **{**FAST, **options})


def test_finished_run_is_not_overwritten(tmp_path, colours):
    train(colours, tmp_path / "run", progress=False, strategy="linear", **FAST)
    with pytest.raises(TransferkitError, match="already holds a finished run"):
        train(colours, tmp_path / "run", progress=False, strategy="linear", **FAST)


def test_real_linear_head_on_digits_beats_chance_by_far(tmp_path):
    """The embedded EfficientNet-Lite0's features on the embedded digits."""
    result = train("digits", tmp_path / "run", progress=False, strategy="linear", image_size=64)
    assert result.metrics["summary"]["test_acc"] > 0.8  # chance is 0.1
    digits = result.run.predict([np.full((8, 8), 0, np.uint8)])
    assert digits[0]["top"][0]["label"] in [str(d) for d in range(10)]


def test_real_finetune_of_the_last_groups_on_cached_outputs(tmp_path):
    """The embedded EfficientNet-Lite0 on the embedded digits: its last two layer groups fine-tuned
    on the cached output of the first five (the recipe of BENCHMARKS.md's CIFAR-10 run)."""
    options = {"strategy": "finetune", "unfreeze": "2", "cache_frozen": True, "image_size": 64, "epochs": 3, "head_epochs": 0,
               "lr": 3e-3, "backbone_lr_mult": 0.33, "batch_size": 64}  # fmt: skip
    summary = train("digits", tmp_path / "run", progress=False, **options).metrics["summary"]
    assert summary["test_acc"] > 0.9, summary  # chance is 0.1
    last_two = [m for group in build_backbone("efficientnet_lite0", pretrained=False).layer_groups()[-2:] for m in group]
    assert summary["trainable_params"] == sum(p.numel() for m in last_two for p in m.parameters()) + 1280 * 10 + 10


def test_a_head_on_a_bottleneck_pickle_is_scored_but_cannot_classify_images(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (2, 16))

    def dump(name, n):
        labels = np.arange(n) % 2
        features = (centres[labels] + rng.normal(0, 1, (n, 16))).reshape(n, 1, 1, 16)
        (tmp_path / name).write_bytes(pickle.dumps({"features": features, "labels": labels.reshape(-1, 1)}))
        return tmp_path / name

    train_p = dump("lab_bottleneck_features_train.p", 60)
    dump("lab_bottleneck_features_validation.p", 20)
    result = train(str(train_p), tmp_path / "run", progress=False, strategy="mlp", dropout=0.3, trust_pickle=True)
    summary = result.metrics["summary"]
    assert summary["train_images"] == 60 and summary["val_acc"] >= 0.9 and result.run is None
    with pytest.raises(TransferkitError, match="precomputed features, with no backbone"):
        load_run(tmp_path / "run")
    outcome = runner.invoke(app, ["classify", str(tmp_path / "run"), str(tmp_path)])
    assert outcome.exit_code != 0 and "precomputed features" in outcome.output
    with pytest.raises(TransferkitError, match="with no network or images: --model, --image-size do not apply"):
        train(str(train_p), tmp_path / "run2", progress=False, strategy="linear", model="resnet18", image_size=64, trust_pickle=True)


def test_cache_frozen_runs_the_frozen_groups_once(tmp_path, colours):
    """--cache-frozen: the frozen groups' output is cached; a rerun reuses it and trains the same."""
    options = {**FAST, "strategy": "finetune", "unfreeze": "1", "cache_frozen": True, "epochs": 2, "cache_dir": str(tmp_path / "cache")}
    first = train(colours, tmp_path / "a", progress=False, **options).metrics["summary"]
    assert first["features_cached"] is False and first["extract_seconds"] > 0
    entries = list_entries(tmp_path / "cache")
    assert {(e["layer"], e["split"]) for e in entries} == {("group4", "train"), ("group4", "val")}  # resnet18: layer4 trains
    assert first["trainable_params"] == sum(p.numel() for p in build_backbone("resnet18", pretrained=False).body.layer4.parameters()) + 512 * 3 + 3
    second = train(colours, tmp_path / "b", progress=False, **options).metrics["summary"]
    assert second["features_cached"] is True
    history = [json.loads((tmp_path / run / "metrics.json").read_text())["history"] for run in ("a", "b")]
    assert history[0] == history[1]
    # The saved network, scored on the test images, gives the accuracy the run recorded.
    result = runner.invoke(app, ["evaluate", str(tmp_path / "a"), str(colours), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] == first["test_acc"]


def network_state(backbone) -> dict:
    """The state dict of the library's whole network, as a weights file holds it."""
    state = {**backbone.body.state_dict(), **{f"{backbone.spec.classifier}.{k}": v for k, v in backbone.classifier.state_dict().items()}}
    return {k: v.contiguous() for k, v in state.items()}


def test_a_weights_file_is_used_or_refused_for_a_backbone_without_pretrained_weights(tmp_path, colours):
    """`--weights` once reached build_backbone only for backbones with pretrained weights: alexnet_bvlc
    trained on random weights with a file of zeros, and lenet ignored a real file."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(64))
    with pytest.raises(TransferkitError) as info:
        train(colours, tmp_path / "alexnet", progress=False, strategy="linear", model="alexnet_bvlc", weights=str(bad), batch_size=8)
    assert "\n" not in str(info.value) and "bad.safetensors" in str(info.value)
    from safetensors.torch import save_file

    trained = build_backbone("lenet", pretrained=False, seed=7)
    save_file(network_state(trained), tmp_path / "lenet.safetensors")
    result = train(colours, tmp_path / "lenet", progress=False, strategy="linear", model="lenet", weights=str(tmp_path / "lenet.safetensors"), image_size=32, batch_size=8)
    meta = json.loads((result.run_dir / "model.json").read_text())
    assert meta["weights_source"] == "file:lenet.safetensors"
    assert torch.equal(result.run.model.backbone.body.state_dict()["features.0.weight"], trained.body.state_dict()["features.0.weight"])


def test_auto_keeps_what_the_user_set_and_searches_the_rest(tmp_path, colours):
    """The planner lays the user's options over every recipe: --epochs rules out the heads that
    take no epochs, the user's weights are the network probed and trained, and config.json
    records the chosen strategy's options only."""
    weights = tmp_path / "r18.safetensors"
    from safetensors.torch import save_file

    save_file(network_state(build_backbone("resnet18", pretrained=False, seed=3)), weights)
    result = train(colours, tmp_path / "run", progress=False, model="resnet18", weights=str(weights), image_size=32, batch_size=8, epochs=3,
                   time_budget="60s", cache_dir=str(tmp_path / "cache"))  # fmt: skip
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["strategy"] in ("mlp", "frozen", "finetune", "scratch")  # the strategies that take --epochs
    assert (config["model"], config["weights"], config["image_size"], config["batch_size"], config["epochs"]) == ("resnet18", str(weights), 32, 8, 3)
    assert "time_budget" not in config  # the planner's own option: the run's recipe does not use it
    plan = json.loads((tmp_path / "run" / "metrics.json").read_text())["plan"]
    assert all("--epochs 3" in row["recipe"] and "--weights" in row["recipe"] for row in plan["candidates"])
    assert result.metrics["summary"]["planned_by"] == "auto"


def test_resume_refuses_options_that_differ_from_the_run(tmp_path, colours):
    train(colours, tmp_path / "run", progress=False, strategy="frozen", epochs=1, **FAST)
    with pytest.raises(TransferkitError, match=r"--resume continues .* --epochs 3 \(the run has 1\)"):
        train(colours, tmp_path / "run", resume=True, progress=False, strategy="frozen", epochs=3, **FAST)
