"""End-to-end training on Lightning: strategies, BatchNorm freezing, schedules, bad images, resume."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.core.backbones import build_backbone
from transferkit.core.errors import TransferkitError
from transferkit.training.finetune import EpochSampler, FitConfig, GroupOutputs, ImageClassifier, collate, fit

COLOURS = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])


def make_data(n: int, seed: int, classes: int = 3, counts: list[int] | None = None):
    """32 px images of ``classes`` mean colours plus noise: easy to separate."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), counts) if counts else np.arange(n) % classes
    images = [np.clip(COLOURS[c] + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8) for c in labels]
    return images, labels.tolist()


def config(**overrides) -> FitConfig:
    defaults = dict(epochs=2, batch_size=8, lr=1e-2, num_workers=0, augment="light")
    return FitConfig(**{**defaults, **overrides})


def run(tmp_path, name="lenet", n_train=24, n_val=12, **overrides):
    backbone = build_backbone(name, pretrained=False)
    before = {k: v.clone() for k, v in backbone.body.state_dict().items()}
    result = fit(backbone, make_data(n_train, 0), make_data(n_val, 1), 3, config(**overrides), tmp_path / "run", progress=False)
    return result, before


def last_checkpoint(tmp_path) -> dict:
    return torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def body_after(checkpoint: dict) -> dict:
    return {k.removeprefix("backbone.body."): v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.body.")}


def changed(before: dict, after: dict, prefix: str) -> dict[str, bool]:
    """For the float tensors (params, running stats) under ``prefix``: did they change?"""
    return {k: not torch.equal(v, after[k]) for k, v in before.items() if k.startswith(prefix) and v.is_floating_point()}


def check_result(result, epochs: int, phases: list[str]) -> None:
    assert result.epochs_completed == epochs == len(result.history)
    assert [row["epoch"] for row in result.history] == list(range(1, epochs + 1))
    assert [row["phase"] for row in result.history] == phases
    for row in result.history:
        assert set(row) == {"epoch", "phase", "train_loss", "train_acc", "val_loss", "val_acc", "lr"}
        assert 0.0 <= row["train_acc"] <= 1.0 and 0.0 <= row["val_acc"] <= 1.0 and row["train_loss"] >= 0
    assert result.best_val_acc == max(row["val_acc"] for row in result.history)
    assert result.history[result.best_epoch - 1]["val_acc"] == result.best_val_acc
    assert not result.model.training and result.model.num_classes == 3
    assert 0 < result.trainable_params <= result.total_params and result.seconds > 0


def test_train_transform_ends_with_normalise():
    spec = build_backbone("lenet", pretrained=False).spec
    image = np.full((40, 50, 3), 128, np.uint8)
    from PIL import Image

    for augment in ("none", "light", "strong"):
        transform = spec.transform(32, is_training=True, augment=augment)
        assert [type(t).__name__ for t in transform.transforms[-2:]] == ["ToDtype", "Normalize"]
        out = transform(Image.fromarray(image))
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    with pytest.raises(TransferkitError, match="augment"):
        spec.transform(32, is_training=True, augment="wild")


def test_frozen_keeps_backbone_and_batchnorm_statistics(tmp_path):
    result, before = run(tmp_path, "resnet18", n_train=12, n_val=6, batch_size=6, strategy="frozen")
    check_result(result, 2, ["frozen", "frozen"])
    after = body_after(last_checkpoint(tmp_path))
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, running stats, num_batches_tracked
    head = sum(p.numel() for p in result.model.classifier.parameters())
    assert result.trainable_params == head == 512 * 3 + 3
    run_dir = tmp_path / "run"
    for artifact in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "logs/metrics.csv", "metrics.csv"):
        assert (run_dir / artifact).is_file(), artifact
    with open(run_dir / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    assert not (Path.cwd() / "lightning_logs").exists()


def test_frozen_layers_stay_in_eval_mode_when_the_module_trains():
    backbone = build_backbone("resnet18", pretrained=False)
    backbone.reset_classifier(3, 0.5)
    module = ImageClassifier(backbone, config(strategy="finetune"))
    backbone.body.requires_grad_(False)
    backbone.body.layer4.requires_grad_(True)
    module.train()
    bns = {name: m.training for name, m in backbone.body.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert all(mode == name.startswith("layer4") for name, mode in bns.items())
    assert backbone.classifier.training
    backbone.body.layer4.requires_grad_(False)
    assert not module.train().backbone.body.training  # all frozen: the whole body is a fixed extractor


def test_finetune_last_group_only(tmp_path):
    result, before = run(tmp_path, "resnet18", n_train=12, n_val=6, batch_size=6, unfreeze=1, head_epochs=1)
    check_result(result, 2, ["head", "finetune"])
    checkpoint = last_checkpoint(tmp_path)
    after = body_after(checkpoint)
    assert all(changed(before, after, "layer4.").values())  # weights and BatchNorm statistics
    for frozen in ("conv1.", "bn1.", "layer1.", "layer2.", "layer3."):
        assert not any(changed(before, after, frozen).values()), frozen
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert [g["peak_lr"] for g in groups] == [pytest.approx(1e-2), pytest.approx(1e-3)]
    assert len(groups[1]["params"]) == len(list(result.model.body.layer4.parameters()))
    assert result.trainable_params == sum(p.numel() for p in result.model.body.layer4.parameters()) + 512 * 3 + 3


def test_gradual_unfreezing_schedule():
    schedule = config(head_epochs=1, gradual=True, unfreeze=2).schedule(5)
    assert [schedule.groups_at(epoch) for epoch in range(5)] == [0, 1, 2, 2, 2]
    assert [schedule.phase(epoch) for epoch in range(3)] == ["head", "finetune", "finetune"]
    assert (schedule.trained_groups, schedule.first_trained_group, schedule.group_lr) == (2, 4, pytest.approx(1e-3))
    schedule = config(head_epochs=2, gradual=False, unfreeze="all").schedule(5)
    assert [schedule.groups_at(epoch) for epoch in range(4)] == [0, 0, 5, 5] and schedule.first_trained_group == 1
    frozen = config(strategy="frozen").schedule(5)
    assert (frozen.groups_at(3), frozen.first_trained_group, frozen.whole_body) == (0, 6, False)
    scratch = config(strategy="scratch").schedule(5)
    assert (scratch.groups_at(0), scratch.whole_body, scratch.group_lr) == (5, True, pytest.approx(1e-2))
    assert config(unfreeze=7).schedule(5).check("lenet") == "lenet has 5 layer groups: unfreeze must be 1..5 or 'all', got 7"


def test_learning_rate_is_a_cosine_over_all_steps():
    schedule = config(epochs=4).schedule(5)
    assert schedule.lr_factor(0, 0, 10) == 1.0
    assert schedule.lr_factor(2, 0, 10) == pytest.approx(0.5)
    assert schedule.lr_factor(3, 9, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))


def test_gradual_unfreezing_adds_groups_over_epochs(tmp_path):
    result, before = run(tmp_path, strategy="finetune", epochs=3, head_epochs=1, gradual=True, unfreeze="all")
    check_result(result, 3, ["head", "finetune", "finetune"])
    checkpoint = last_checkpoint(tmp_path)
    after = body_after(checkpoint)  # lenet groups: features.0 | features.3 | classifier.0, classifier.2
    assert not any(changed(before, after, "features.0.").values())
    assert all(changed(before, after, "features.3.").values()) and all(changed(before, after, "classifier.").values())
    assert [g["peak_lr"] for g in checkpoint["optimizer_states"][0]["param_groups"]] == pytest.approx([1e-2, 1e-3, 1e-3])
    assert next(v for k, v in checkpoint["callbacks"].items() if k == "Freezer")["unfrozen"] == 2


def test_scratch_trains_everything(tmp_path):
    result, before = run(tmp_path, strategy="scratch", lr=5e-3)
    check_result(result, 2, ["scratch", "scratch"])
    assert all(changed(before, body_after(last_checkpoint(tmp_path)), "").values())
    assert result.trainable_params == result.total_params
    groups = last_checkpoint(tmp_path)["optimizer_states"][0]["param_groups"]
    assert [g["peak_lr"] for g in groups] == pytest.approx([5e-3, 5e-3])


def test_learning_rates_follow_a_cosine_over_the_steps(tmp_path):
    result, _ = run(tmp_path, strategy="finetune", epochs=4, head_epochs=1, lr=1e-2, backbone_lr_mult=0.1)
    steps = 3  # 24 images in batches of 8; the history and the checkpoint hold each epoch's last step's rate
    factors = [0.5 * (1 + math.cos(math.pi * (epoch + (steps - 1) / steps) / 4)) for epoch in range(4)]
    assert [row["lr"] for row in result.history] == pytest.approx([1e-2 * f for f in factors])
    groups = last_checkpoint(tmp_path)["optimizer_states"][0]["param_groups"]
    assert [g["peak_lr"] for g in groups] == pytest.approx([1e-2, 1e-3, 1e-3, 1e-3])  # head, then lenet's 3 groups
    assert [g["lr"] for g in groups] == pytest.approx([g["peak_lr"] * factors[-1] for g in groups])  # the backbone too


@pytest.mark.parametrize("balance", ["weights", "sampler"])
def test_class_balance(tmp_path, balance):
    backbone = build_backbone("lenet", pretrained=False)
    train = make_data(0, 0, counts=[16, 4, 4])
    result = fit(backbone, train, make_data(9, 1), 3, config(balance=balance, strategy="scratch"), tmp_path / "run", progress=False)
    check_result(result, 2, ["scratch", "scratch"])


def test_epoch_sampler_is_seeded_by_epoch_and_balances():
    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10)) and list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = (1.0 / torch.bincount(labels).float())[labels]
    drawn = labels[list(EpochSampler(100, 0, weights)) + list(EpochSampler(100, 1, weights))]
    assert 60 < int((drawn == 1).sum()) < 140  # about half, against 10% in the data


def test_early_stopping_when_val_accuracy_cannot_improve(tmp_path):
    result, _ = run(tmp_path, strategy="frozen", lr=0.0, patience=1, epochs=6)
    assert result.epochs_completed == 2 and result.best_epoch == 1
    assert result.history[0]["val_acc"] == result.history[1]["val_acc"]


def test_bad_images_are_skipped_even_a_whole_batch(tmp_path):
    images, labels = make_data(9, 0)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png at all")
    sources = images[:4] + [corrupt] + images[4:] + [tmp_path / "missing.jpg"]
    backbone = build_backbone("lenet", pretrained=False)
    result = fit(backbone, (sources, labels[:4] + [0] + labels[4:] + [1]), make_data(6, 1), 3,
                 config(batch_size=1, strategy="scratch"), tmp_path / "run", progress=False)  # fmt: skip
    check_result(result, 2, ["scratch", "scratch"])
    assert [index for index, _ in result.failures["train"]] == [4, 10]
    assert "corrupt" in result.failures["train"][0][1] and "no such file" in result.failures["train"][1][1]
    assert result.failures["val"] == []
    images, labels, failures = collate([(None, 0, 3, "bad"), (None, 1, 5, "worse")])
    assert images is None and labels is None and failures == [(3, "bad"), (5, "worse")]


def test_same_seed_same_history(tmp_path):
    # loader workers, strong augmentation, dropout: all seeded
    kwargs = dict(n_train=30, strategy="finetune", augment="strong", num_workers=2, seed=7)
    first, _ = run(tmp_path / "a", **kwargs)
    second, _ = run(tmp_path / "b", **kwargs)
    assert first.history == second.history


def test_resume_needs_a_checkpoint(tmp_path):
    backbone = build_backbone("lenet", pretrained=False)
    with pytest.raises(TransferkitError, match="nothing to resume"):
        fit(backbone, make_data(6, 0), make_data(3, 1), 3, config(), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize(
    "overrides, message",
    [({"strategy": "linear"}, "strategy"), ({"unfreeze": 0}, "unfreeze"), ({"unfreeze": 4}, "3 layer groups"),
     ({"balance": "oversample"}, "balance"), ({"accelerator": "gpu"}, "cannot train")],
)  # fmt: skip
def test_config_errors(tmp_path, overrides, message):
    if overrides.get("accelerator") == "gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    backbone = build_backbone("lenet", pretrained=False)
    with pytest.raises(TransferkitError, match=message):
        fit(backbone, make_data(6, 0), make_data(3, 1), 3, config(**overrides), tmp_path, progress=False)


def test_label_errors(tmp_path):
    backbone = build_backbone("lenet", pretrained=False)
    images, labels = make_data(6, 0)
    with pytest.raises(TransferkitError, match="labels must be 0..2"):
        fit(backbone, (images, [5] * 6), make_data(3, 1), 3, config(), tmp_path, progress=False)
    with pytest.raises(TransferkitError, match="6 images and 5 labels"):
        fit(backbone, (images, labels[:5]), make_data(3, 1), 3, config(), tmp_path, progress=False)


RESUME_CONFIG = dict(strategy="finetune", epochs=3, head_epochs=1, gradual=True, augment="strong", batch_size=8)

SCRIPT = """
import json, sys, time
sys.path.insert(0, {tests!r})
from pathlib import Path
from test_finetune import RESUME_CONFIG, config, make_data
from transferkit.core.backbones import build_backbone
from transferkit.training.finetune import fit

class Slow(list):  # slow enough for the parent to kill the first run in its third epoch
    def __getitem__(self, index):
        time.sleep(0.02)
        return list.__getitem__(self, index)

resume = sys.argv[1] == "resume"
images, labels = make_data(24, 0)
result = fit(build_backbone("lenet", pretrained=False), (images if resume else Slow(images), labels), make_data(12, 1), 3,
             config(**RESUME_CONFIG), Path({run_dir!r}), resume=resume, progress=False)
Path({out!r}).write_text(json.dumps({{"history": result.history, "epochs": result.epochs_completed}}))
"""


def checkpoint_epoch(path: Path) -> int | None:
    try:  # our own file; it may be half written when we look
        return torch.load(path, map_location="cpu", weights_only=True)["epoch"]
    except Exception:
        return None


def test_resume_after_sigkill_continues_the_same_run(tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "result.json"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT.format(tests=str(Path(__file__).parent), run_dir=str(run_dir), out=str(out))))
    last = run_dir / "checkpoints" / "last.ckpt"

    proc = subprocess.Popen([sys.executable, str(script), "fresh"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline, seen = time.monotonic() + 120, None
    while time.monotonic() < deadline and proc.poll() is None:
        seen = checkpoint_epoch(last) if last.is_file() else None
        if seen is not None and seen >= 1:
            break
        time.sleep(0.05)
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    stderr = proc.communicate()[1].decode(errors="replace")
    assert still_running and seen == 1, f"killed too late (epoch {seen}): {stderr[-2000:]}"
    assert not out.exists()

    resumed = subprocess.run([sys.executable, str(script), "resume"], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["epochs"] == 3 and [row["epoch"] for row in result["history"]] == [1, 2, 3]

    images, labels = make_data(24, 0)
    reference = fit(build_backbone("lenet", pretrained=False), (images, labels), make_data(12, 1), 3,
                    config(**RESUME_CONFIG), tmp_path / "uninterrupted", progress=False)  # fmt: skip
    assert [row["phase"] for row in result["history"]] == ["head", "finetune", "finetune"]
    assert reference.epochs_completed == 3
    for got, want in zip(result["history"], reference.history):  # the same run, not merely a similar one
        assert got.pop("phase") == want["phase"]
        assert got == pytest.approx({k: v for k, v in want.items() if k != "phase"}, rel=1e-5)

    with open(run_dir / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(row["epoch"]) for row in rows if row["val_acc"]) == [0, 1, 2]
    assert sorted(int(row["epoch"]) for row in rows if row["train_acc"]) == [0, 1, 2]


def test_threads_and_workers_never_exceed_the_cores(monkeypatch):
    """torch's threads + loader workers stay within the cores this process may use, so that a
    competing process slows a run in proportion (oversubscribed, `make demo` took 6x as long)."""
    from transferkit.core.loader import share_cores

    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    for cores, given, expected in ((2, None, (0, 2)), (2, 1, (1, 1)), (16, None, (2, 14)), (4, 0, (0, 4))):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert (share_cores(640, 32, gpu=False, workers=given), threads[-1]) == expected
        assert sum(expected) <= cores
    assert share_cores(20, 32, gpu=False) == 0  # one batch: decoded in the main process


def test_precision_auto_is_bf16_mixed_on_a_bfloat16_gpu_only(monkeypatch):
    from transferkit.training.finetune import _loader, DecodedLabelledImages, on_gpu, resolve_precision

    assert resolve_precision(FitConfig(precision="16-mixed")) == "16-mixed"  # what the user asked for stays
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)  # a 16-core machine
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)  # recorded, not applied to this process
    dataset = DecodedLabelledImages(*make_data(64, 0), transform=None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision(FitConfig()) == "32-true" and not on_gpu(FitConfig())
    cpu_loader = _loader(dataset, FitConfig(batch_size=8), None, on_gpu(FitConfig()))
    assert (cpu_loader.num_workers, cpu_loader.pin_memory, threads[-1]) == (2, False, 14)  # workers and threads share the 16 cores
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(FitConfig()) == "bf16-mixed"
    assert resolve_precision(FitConfig(accelerator="cpu")) == "32-true" and not on_gpu(FitConfig(accelerator="cpu"))
    gpu_loader = _loader(dataset, FitConfig(batch_size=8), None, on_gpu(FitConfig()))
    assert (gpu_loader.num_workers, gpu_loader.pin_memory) == (15, True)  # all cores but the trainer's
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision(FitConfig()) == "32-true"


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # the GPU's loader settings, on a CPU
@pytest.mark.parametrize("precision", ["32-true", "bf16-true"])
def test_uint8_batches_are_normalised_on_the_device_in_the_precision_s_type(tmp_path, monkeypatch, precision):
    import transferkit.training.finetune as finetune

    float_run, _ = run(tmp_path / "float", epochs=1, precision=precision)
    monkeypatch.setattr(finetune, "on_gpu", lambda config: True)  # the GPU's uint8 batches, on the CPU
    uint8_run, _ = run(tmp_path / "uint8", epochs=1, precision=precision)
    tolerance = 1e-4 if precision == "32-true" else 2e-2
    assert uint8_run.history[0]["train_loss"] == pytest.approx(float_run.history[0]["train_loss"], rel=tolerance)
    assert uint8_run.history[0]["val_acc"] == pytest.approx(float_run.history[0]["val_acc"], abs=0.1)


@pytest.mark.parametrize("strategy, from_group, trained", [("finetune", 4, "layer4."), ("frozen", 5, None)])
def test_training_on_cached_group_outputs_scores_the_same_on_images(tmp_path, strategy, from_group, trained):
    """from_group: the frozen groups never run in training; the trained network, given the images
    themselves, gives the validation accuracy measured on their cached outputs."""
    from PIL import Image

    backbone = build_backbone("resnet18", pretrained=False)
    before = {k: v.clone() for k, v in backbone.body.state_dict().items()}
    transform = backbone.transform(32)
    (train_images, train_labels), (val_images, val_labels) = make_data(12, 0), make_data(9, 1)

    def pixels(images):
        return torch.stack([transform(Image.fromarray(image)) for image in images])

    def outputs(images):
        with torch.inference_mode():
            return backbone.eval().group_output(pixels(images), from_group)

    settings = config(strategy=strategy, unfreeze=1, head_epochs=1, from_group=from_group, image_size=32, batch_size=6)
    rows = {name: outputs(images).flatten(1).numpy() for name, images in (("train", train_images), ("val", val_images))}
    result = fit(backbone, (rows["train"], train_labels), (rows["val"], val_labels), 3, settings, tmp_path / "run", progress=False)
    check_result(result, 2, ["head", "finetune"] if strategy == "finetune" else ["frozen"] * 2)
    after = body_after(last_checkpoint(tmp_path))
    if trained:
        assert all(changed(before, after, trained).values())
    for frozen in ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."):
        if frozen != trained:
            assert not any(changed(before, after, frozen).values()), frozen
    with torch.inference_mode():
        logits = result.model(pixels(val_images))
        assert torch.allclose(logits, result.model.forward_from(outputs(val_images), from_group, 32), atol=1e-5)  # the frozen groups did not change
    accuracy = (logits.argmax(1) == torch.tensor(val_labels)).float().mean().item()
    assert accuracy == pytest.approx(result.history[result.best_epoch - 1]["val_acc"])


def test_group_outputs_are_mirrored_at_random_for_training_only():
    maps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    rows, labels = maps.flatten(1).numpy(), torch.tensor([0, 1])
    train, val = GroupOutputs(rows, labels, (3, 4, 5), flip=True, name="train"), GroupOutputs(rows, labels, (3, 4, 5), flip=False, name="val")
    torch.manual_seed(0)
    drawn = [train[1][0] for _ in range(40)]
    assert all(torch.equal(d, maps[1]) or torch.equal(d, maps[1].flip(-1)) for d in drawn)
    assert 5 < sum(torch.equal(d, maps[1]) for d in drawn) < 35  # both, about half each
    assert all(torch.equal(val[1][0], maps[1]) for _ in range(10)) and val[1][1:] == (1, 1, "")
    with pytest.raises(TransferkitError, match="the layer group gives"):
        GroupOutputs(rows, labels, (3, 4, 4), flip=False, name="train")


@pytest.mark.parametrize(
    "overrides, message",
    [({"from_group": 5, "unfreeze": 1}, "needs groups 1..5 frozen: strategy frozen$"), ({"from_group": 4, "strategy": "scratch"}, "needs groups 1..4 frozen"),
     ({"from_group": 4, "unfreeze": 1, "augment": "strong"}, "augment strong needs images"),
     ({"from_group": 4, "unfreeze": 1, "image_size": 64}, "the layer group gives")],
)  # fmt: skip
def test_cached_group_output_errors(tmp_path, overrides, message):
    backbone = build_backbone("resnet18", pretrained=False)
    rows = np.zeros((6, 1024), np.float32)  # resnet18's group 4 (layer3) output at 32 px: 256 x 2 x 2
    with pytest.raises(TransferkitError, match=message):
        fit(backbone, (rows, [0, 1, 2] * 2), (rows[:3], [0, 1, 2]), 3, config(**{"image_size": 32, **overrides}), tmp_path, progress=False)
