"""Bad arguments and bad files: every command ends with ONE readable `error:` line, never a traceback.

One table drives every case through the CLI (``transferkit.cli.app``): for each, the exit code
is non-zero, nothing raised out of the command (CliRunner would swallow a traceback), stderr's
last non-empty line is the only ``error:`` line, and it says something specific.  The files
are built once per module; the networks are random-init ResNet-18 at 32 px (or the embedded
EfficientNet-Lite0 for ``predict``), so the whole file stays well under a minute.

Then property-based fuzzing (hypothesis) of the two parsers that see raw user input: the DATA
argument and image decoding.  RELIABILITY.md lists the cases with the error lines they give.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from transferkit.cli import app
from transferkit.core.errors import ImageError, TransferkitError

runner = CliRunner()

SMALL = ["--model", "resnet18", "--no-pretrained", "--image-size", "32"]
NON_UTF8_OK = sys.platform.startswith("linux") and sys.getfilesystemencoding() == "utf-8"


class _Evil:
    """Unpickling this creates a marker file: proof that a pickle ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR declares width x height (1-bit gray) with one tiny IDAT: a few bytes on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def _images(folder: Path, classes: dict[str, int], size: int = 20, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, n in classes.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / name / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Every file the cases name, and one tiny trained run (with damaged copies of it)."""
    from transferkit import build_backbone
    from transferkit.api import train
    from transferkit.core.weights import save_state_dict

    t = tmp_path_factory.mktemp("bad")
    data = _images(t / "data", {"cat": 6, "dog": 6})
    _images(t / "one_class", {"cat": 6})
    _images(t / "other_classes", {"bird": 2, "fish": 2}, seed=1)
    _images(t / "with_corrupt", {"cat": 3, "dog": 3})
    (t / "with_corrupt" / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (t / "empty").mkdir()
    (t / "labels_dir.csv").mkdir()  # a folder where a CSV file is expected
    (t / "notes.txt").write_text("not an image")
    (t / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage, not chunks")
    good = data / "cat" / "0.png"
    (t / "truncated.png").write_bytes(good.read_bytes()[:60])
    Image.new("RGB", (1, 1), (200, 30, 30)).save(t / "tiny.png")
    _png_header(t / "bomb.png", 20_000, 20_000)

    # CSVs: paths relative to the CSV's folder
    (t / "csv").mkdir()
    shutil.copy(good, t / "csv" / "a.png")
    shutil.copy(data / "dog" / "0.png", t / "csv" / "b.png")
    (t / "csv" / "no_label.csv").write_text("path,kind\na.png,cat\nb.png,dog\n")
    (t / "csv" / "empty_label.csv").write_text("path,label\na.png,cat\nb.png,\n")
    (t / "csv" / "missing_file.csv").write_text("path,label\na.png,cat\nnope.png,dog\n")
    (t / "csv" / "header_only.csv").write_text("path,label\n")
    (t / "csv" / "latin1.csv").write_bytes("path,label\na.png,caf\xe9\nb.png,dog\n".encode("latin-1"))
    (t / "csv" / "bad_split.csv").write_text("path,label,split\na.png,cat,train\nb.png,dog,holdout\n")
    (t / "outside").mkdir()
    for i in range(3):
        shutil.copy(good, t / "outside" / f"cat{i}.png")
        shutil.copy(data / "dog" / f"{i}.png", t / "outside" / f"dog{i}.png")
    rows = [f"../outside/{c}{i}.png,{c}" for c in ("cat", "dog") for i in range(3)]
    (t / "csv" / "escapes.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    (t / "csv" / "absolute.csv").write_text(f"path,label\n{t / 'outside' / 'cat0.png'},cat\nb.png,dog\n")

    # pickles and weights files
    marker = t / "PWNED"
    with open(t / "evil_train.p", "wb") as f:
        pickle.dump({"features": _Evil(str(marker)), "labels": [0, 1]}, f)
    with open(t / "evil.pkl", "wb") as f:
        pickle.dump(_Evil(str(marker)), f)
    import torch

    torch.save({"conv1.weight": _Evil(str(marker))}, t / "evil.pt")
    with open(t / "list.p", "wb") as f:
        pickle.dump([1, 2, 3], f)
    (t / "weights.npy").write_bytes(b"\x93NUMPY not really")
    save_state_dict(build_backbone("lenet", pretrained=False).state_dict(), t / "lenet.safetensors")
    (t / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")

    # a trained run, and damaged copies of it
    run = t / "run"
    train(str(data), run, progress=False, strategy="linear", model="resnet18", pretrained=False, image_size=32, cache_dir=str(t / "cache"))
    for name, edit in (("run_v99", "version"), ("run_nomodel", "nomodel"), ("run_swapped", "swap"), ("run_badjson", "json"), ("run_garbage", "garbage"), ("run_truncated", "truncate")):
        copy = t / name
        copy.mkdir()
        for f in run.glob("*.json"):
            shutil.copy(f, copy / f.name)
        if edit == "version":
            meta = json.loads((copy / "model.json").read_text())
            meta["format_version"] = 99
            meta["transferkit_version"] = "9.0.0"
            (copy / "model.json").write_text(json.dumps(meta))
        if edit == "json":
            (copy / "model.json").write_text('{"format_version": 1, "backbone": ')
        if edit in ("swap", "garbage"):  # no checksum (as a hand-edited model.json): the deeper checks answer
            meta = json.loads((copy / "model.json").read_text())
            del meta["model_sha256"]
            (copy / "model.json").write_text(json.dumps(meta))
        if edit == "truncate":
            (copy / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes()[:-100])
        if edit in ("version", "json"):
            os.symlink(run / "model.safetensors", copy / "model.safetensors")
        elif edit == "swap":
            shutil.copy(t / "lenet.safetensors", copy / "model.safetensors")
        elif edit == "garbage":
            shutil.copy(t / "garbage.safetensors", copy / "model.safetensors")

    # a head trained on a lab's bottleneck pickle: scored, but with no backbone to run on images
    features = np.random.default_rng(0).normal(size=(12, 1, 1, 8)) + np.repeat([0, 3], 6)[:, None, None, None]
    with open(t / "lab_bottleneck_features_train.p", "wb") as f:
        pickle.dump({"features": features, "labels": np.repeat([0, 1], 6).reshape(-1, 1)}, f)
    train(str(t / "lab_bottleneck_features_train.p"), t / "run_features", progress=False, strategy="linear", trust_pickle=True)

    paths = {p.name.replace(".", "_"): str(p) for p in t.iterdir()}
    paths.update(
        tmp=str(t), missing=str(t / "missing.jpg"), nowhere=str(t / "nowhere") + "/", cache=str(t / "cache"), marker=str(marker),
        good=str(good), csvdir=str(t / "csv"),
    )  # fmt: skip
    if NON_UTF8_OK:  # names that are not valid UTF-8: bytes on disk, surrogate escapes in Python
        raw = os.fsencode(str(t)) + b"/nonutf8"
        os.mkdir(raw)
        with open(raw + b"/caf\xe9.png", "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n not a png")
        os.mkdir(raw + b"/ok")
        shutil.copy(good, os.fsdecode(raw + b"/ok/caf\xe9.png"))
        paths["nonutf8_bad"] = os.fsdecode(raw + b"/caf\xe9.png")
        paths["nonutf8_good"] = os.fsdecode(raw + b"/ok/caf\xe9.png")
        # an image folder whose class folder and files have non-UTF-8 names
        folder = os.fsencode(str(t)) + b"/nonutf8_data"
        for cls in (b"chat\xe9", b"dog"):
            os.makedirs(folder + b"/" + cls)
            for i in range(4):
                shutil.copy(data / "dog" / f"{i}.png", os.fsdecode(folder + b"/" + cls + b"/\xff" + str(i).encode() + b".png"))
        paths["nonutf8_data"] = os.fsdecode(folder)
    return paths


def case(id: str, args: list[str], fragment: str, *, env: dict | None = None, xfail: str | None = None, non_utf8: bool = False):
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    if non_utf8:
        marks.append(pytest.mark.skipif(not NON_UTF8_OK, reason="needs a Linux file system with UTF-8 names"))
    return pytest.param(args, fragment, env, id=id, marks=marks)


X = [*SMALL, "--cache-dir", "{cache}"]  # extract
XW = ["--model", "resnet18", "--image-size", "32", "--cache-dir", "{cache}"]  # extract with --weights (not --no-pretrained)
T = [*SMALL, "--cache-dir", "{cache}", "--out", "{tmp}/never"]  # train: every case must fail before training

CASES = [
    # predict: the pretrained network as is (the embedded EfficientNet-Lite0)
    case("predict-missing-file", ["predict", "{missing}"], "no such file"),
    case("predict-empty-folder", ["predict", "{empty}"], "no image files"),
    case("predict-text-file", ["predict", "{notes_txt}"], "not an image file"),
    case("predict-corrupt-png", ["predict", "{corrupt_png}"], "corrupt"),
    case("predict-truncated-png", ["predict", "{truncated_png}"], "corrupt or truncated"),
    case("predict-20000x20000-bomb", ["predict", "{bomb_png}"], "decompression-bomb guard"),
    case("predict-non-utf8-name", ["predict", "{nonutf8_bad}"], "caf\\xe9.png", non_utf8=True),
    case("predict-bad-max-pixels-env", ["predict", "{good}"], "TRANSFERKIT_MAX_PIXELS", env={"TRANSFERKIT_MAX_PIXELS": "lots"}),
    case("predict-top-k-0", ["predict", "{good}", "--top-k", "0"], "--top-k"),
    case("predict-image-size-0", ["predict", "{good}", "--image-size", "0"], "--image-size"),
    case("predict-image-size-negative", ["predict", "{good}", "--image-size", "-5"], "--image-size"),
    case("predict-batch-size-0", ["predict", "{good}", "--batch-size", "0"], "--batch-size"),
    case("predict-top-k-not-a-number", ["predict", "{good}", "--top-k", "three"], "--top-k"),
    case("predict-unknown-model", ["predict", "{good}", "--model", "resnet51"], "unknown model 'resnet51'"),
    case("predict-no-imagenet-head", ["predict", "{good}", "--model", "pixels"], "no ImageNet classifier"),
    case("predict-weights-missing", ["predict", "{good}", "--model", "resnet18", "--weights", "{missing}"], "does not exist"),
    case("predict-weights-wrong-arch", ["predict", "{good}", "--model", "resnet18", "--weights", "{lenet_safetensors}"], "do not fit resnet18"),
    case("predict-weights-malicious-torch", ["predict", "{good}", "--model", "resnet18", "--weights", "{evil_pt}"], "holds pickled objects (Unsupported global: GLOBAL io.open)"),
    case("predict-weights-malicious-pickle", ["predict", "{good}", "--model", "resnet18", "--weights", "{evil_pkl}"], "does not unpickle them"),
    case("predict-weights-broken-safetensors", ["predict", "{good}", "--model", "resnet18", "--weights", "{garbage_safetensors}"], "not a valid safetensors file"),
    case("predict-weights-npy-other-model", ["predict", "{good}", "--model", "resnet18", "--weights", "{weights_npy}"], "only for --model alexnet_bvlc"),
    # extract: DATA forms, layers, sizes
    case("extract-missing-folder", ["extract", "{nowhere}", *X], "does not exist"),
    case("extract-empty-folder", ["extract", "{empty}", *X], "found 0 classes"),
    case("extract-file-for-folder", ["extract", "{notes_txt}", *X], "is a file of another kind"),
    case("extract-folder-for-csv", ["extract", "{labels_dir_csv}", *X], "is a folder"),
    case("extract-unknown-form", ["extract", "mnist", *X], "not a known form"),
    case("extract-unknown-user-home", ["extract", "~nosuchuser-tk/photos", *X], "no such user"),
    case("extract-cifar10-missing", ["extract", "cifar10:{tmp}/no-cifar", *X], "CIFAR-10 is not usable"),
    case("extract-single-class", ["extract", "{one_class}", *X], "need at least 2 class folders"),
    case("extract-unknown-model", ["extract", "{data}", "--model", "resnet999", "--cache-dir", "{cache}"], "unknown model 'resnet999'"),
    case("extract-unknown-layer", ["extract", "{data}", *X, "--layer", "stage9"], "unknown layer 'stage9'"),
    case("extract-image-size-0", ["extract", "{data}", "--model", "resnet18", "--no-pretrained", "--image-size", "0"], "too small"),
    case("extract-image-size-negative", ["extract", "{data}", "--model", "resnet18", "--no-pretrained", "--image-size", "-5"], "too small"),
    case("extract-cache-dir-is-a-file", ["extract", "{data}", *SMALL, "--cache-dir", "{notes_txt}"], "--cache-dir"),
    case("extract-batch-size-0", ["extract", "{data}", *X, "--batch-size", "0"], "--batch-size"),
    case("extract-unknown-engine", ["extract", "{data}", *X, "--engine", "tpu"], "unknown engine 'tpu'"),
    case("extract-unknown-quantize", ["extract", "{data}", *X, "--quantize", "int4"], "unknown --quantize 'int4'"),
    case("extract-int8-on-torch", ["extract", "{data}", *X, "--quantize", "int8", "--engine", "torch"], "--quantize int8 runs on ONNX Runtime"),
    case("extract-strict-corrupt-image", ["extract", "{with_corrupt}", *X, "--strict"], "could not be decoded"),
    case("extract-csv-no-label-column", ["extract", "{csvdir}/no_label.csv", *X], "has no label column"),
    case("extract-csv-empty-label", ["extract", "{csvdir}/empty_label.csv", *X], "line 3: empty label"),
    case("extract-csv-missing-file", ["extract", "{csvdir}/missing_file.csv", *X], "nope.png not found"),
    case("extract-csv-header-only", ["extract", "{csvdir}/header_only.csv", *X], "has no data rows"),
    case("extract-csv-not-utf8", ["extract", "{csvdir}/latin1.csv", *X], "not a readable UTF-8 CSV"),
    case("extract-csv-bad-split", ["extract", "{csvdir}/bad_split.csv", *X], "is not train, val or test"),
    case("extract-csv-escapes-root", ["extract", "{csvdir}/escapes.csv", *X], "--allow-outside-root"),
    case("extract-csv-absolute-path", ["extract", "{csvdir}/absolute.csv", *X], "is outside"),
    case("extract-lab-pickle-untrusted", ["extract", "{evil_train_p}", *X], "pass --trust-pickle"),
    case("extract-trusted-pickle-not-lab", ["extract", "{list_p}", *X, "--trust-pickle"], "not a lab pickle"),
    case("extract-weights-wrong-arch", ["extract", "{data}", *XW, "--weights", "{lenet_safetensors}"], "do not fit resnet18"),
    case("extract-weights-and-no-pretrained", ["extract", "{data}", *X, "--weights", "{lenet_safetensors}"], "--no-pretrained (pretrained=False) asks for random weights"),
    case("train-weights-and-no-pretrained", ["train", "{data}", *T, "--weights", "{lenet_safetensors}"], "--weights FILE and --no-pretrained contradict each other"),
    case("extract-weights-malicious", ["extract", "{data}", *XW, "--weights", "{evil_pt}"], "holds pickled objects (Unsupported global: GLOBAL io.open)"),
    # train and advise
    case("train-unknown-strategy", ["train", "{data}", *T, "--strategy", "magic"], "unknown strategy 'magic'"),
    case("train-epochs-0", ["train", "{data}", *T, "--strategy", "finetune", "--epochs", "0"], "--epochs must be at least 1"),
    case("train-finetune-int8", ["train", "{data}", *T, "--strategy", "finetune", "--quantize", "int8"], "--strategy finetune does not use --quantize"),
    case("train-batch-size-0", ["train", "{data}", *T, "--batch-size", "0"], "--batch-size must be at least 1"),
    case("train-per-class-0", ["train", "{data}", *T, "--per-class", "0"], "--per-class must be at least 1"),
    case("train-image-size-negative", ["train", "{data}", "--model", "resnet18", "--no-pretrained", "--image-size", "-5", "--out", "{tmp}/never"], "too small"),
    case("train-single-class", ["train", "{one_class}", *T], "need at least 2 class folders"),
    case("train-missing-data", ["train", "{nowhere}", *T], "does not exist"),
    case("train-over-finished-run", ["train", "{data}", *SMALL, "--cache-dir", "{cache}", "--out", "{run}"], "already holds a finished run"),
    case("train-out-is-a-file", ["train", "{data}", *SMALL, "--cache-dir", "{cache}", "--out", "{notes_txt}"], "notes.txt"),
    case("train-csv-escapes-root", ["train", "{csvdir}/escapes.csv", *T], "--allow-outside-root"),
    case("evaluate-csv-escapes-root", ["evaluate", "{run}", "{csvdir}/escapes.csv"], "--allow-outside-root"),
    case("advise-csv-escapes-root", ["advise", "{csvdir}/escapes.csv", "--model", "resnet18"], "--allow-outside-root"),
    case("train-lab-pickle-untrusted", ["train", "{evil_train_p}", *T], "pass --trust-pickle"),
    case("advise-single-class", ["advise", "{one_class}", "--model", "resnet18", "--cache-dir", "{cache}"], "need at least 2 class folders"),
    case("advise-sample-per-class-1", ["advise", "{data}", "--sample-per-class", "1"], "--sample-per-class"),
    case("advise-empty-folder", ["advise", "{empty}", "--model", "resnet18"], "found 0 classes"),
    # evaluate, classify, export: run folders
    case("evaluate-not-a-run", ["evaluate", "{data}", "{data}"], "is not a finished run folder"),
    case("evaluate-run-from-other-version", ["evaluate", "{run_v99}", "{data}"], "run format 99"),
    case("evaluate-run-missing-model", ["evaluate", "{run_nomodel}", "{data}"], "is not a finished run folder"),
    case("evaluate-run-damaged-json", ["evaluate", "{run_badjson}", "{data}"], "is not valid JSON"),
    case("evaluate-run-weights-of-other-network", ["evaluate", "{run_swapped}", "{data}"], "does not fit the resnet18 model"),
    case("evaluate-run-truncated-model", ["evaluate", "{run_truncated}", "{data}"], "was altered or truncated"),
    case("classify-run-truncated-model", ["classify", "{run_truncated}", "{good}"], "was altered or truncated"),
    case("evaluate-run-broken-safetensors", ["evaluate", "{run_garbage}", "{data}"], "not a valid safetensors file"),
    case("evaluate-classes-differ", ["evaluate", "{run}", "{other_classes}"], "not trained on: bird, fish"),
    case("evaluate-unknown-split", ["evaluate", "{run}", "{data}", "--split", "holdout"], "has no 'holdout' split"),
    case("evaluate-data-is-a-file", ["evaluate", "{run}", "{notes_txt}"], "is a file of another kind"),
    case("evaluate-missing-data", ["evaluate", "{run}", "{nowhere}"], "does not exist"),
    case("classify-not-a-run", ["classify", "{data}", "{good}"], "is not a finished run folder"),
    case("classify-run-is-a-file", ["classify", "{notes_txt}", "{good}"], "is not a finished run folder"),
    case("classify-run-from-other-version", ["classify", "{run_v99}", "{good}"], "run format 99"),
    case("classify-run-on-precomputed-features", ["classify", "{run_features}", "{good}"], "no backbone to turn images into them"),
    case("classify-corrupt-image", ["classify", "{run}", "{corrupt_png}"], "corrupt"),
    case("classify-bomb", ["classify", "{run}", "{bomb_png}"], "decompression-bomb guard"),
    case("classify-top-k-0", ["classify", "{run}", "{good}", "--top-k", "0"], "--top-k"),
    case("export-unknown-format", ["export", "{run}", "--format", "tflite"], "unknown export format 'tflite'"),
    case("export-not-a-run", ["export", "{data}"], "is not a finished run folder"),
    case("export-run-missing-model", ["export", "{run_nomodel}", "--format", "torchscript"], "is not a finished run folder"),
    case("export-out-in-missing-folder", ["export", "{run}", "--format", "torchscript", "--out", "{nowhere}model.pt"], "does not exist"),
    # compare, cache, demo, the app itself
    case("compare-unknown-strategy", ["compare", "{data}", "--strategies", "linear,magic", "--out", "{tmp}/cmp"], "unknown strategy 'magic'"),
    case("compare-per-class-0", ["compare", "{data}", "--per-class", "0", "--out", "{tmp}/cmp"], "--per-class"),
    case("compare-missing-data", ["compare", "{nowhere}", "--out", "{tmp}/cmp"], "does not exist"),
    case("compare-unknown-model", ["compare", "{data}", "--models", "resnet999", "--out", "{tmp}/cmp-model"], "unknown model 'resnet999'"),
    case("compare-csv-escapes-root", ["compare", "{csvdir}/escapes.csv", "--out", "{tmp}/cmp-csv"], "--allow-outside-root"),
    case("cache-remove-unknown-key", ["cache", "remove", "feedbeef", "--cache-dir", "{cache}"], "no single cache entry starts with 'feedbeef'"),
    case("cache-remove-nothing", ["cache", "remove", "--cache-dir", "{cache}"], "name the entries to remove"),
    case("demo-missing-data", ["demo", "--data", "{nowhere}", "--out", "{tmp}/demo"], "does not exist"),
    case("demo-epochs-0", ["demo", "--epochs", "0"], "--epochs"),
    case("models-unknown-option", ["models", "--colour"], "No such option: --colour"),
    case("unknown-command", ["trian", "{data}"], "No such command 'trian'"),
]


def _args(template: list[str], world: dict[str, str]) -> list[str]:
    return [arg.format_map(world) for arg in template]


def _check_one_error_line(result, fragment: str) -> str:
    assert result.exit_code != 0, result.output
    # CliRunner catches what escapes the command: anything but SystemExit is a would-be traceback.
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == [lines[-1]], f"the last stderr line must be the only error line:\n{result.stderr}"
    assert fragment in lines[-1], lines[-1]
    return lines[-1]


@pytest.mark.parametrize("template, fragment, env", CASES)
def test_bad_input_ends_in_one_error_line(world, template, fragment, env, tmp_path):
    if "{nonutf8" in " ".join(template) and "nonutf8_bad" not in world:
        pytest.skip("needs a Linux file system with UTF-8 names")
    result = runner.invoke(app, _args(template, world), env=env)
    _check_one_error_line(result, fragment)
    assert not Path(world["marker"]).exists(), "a pickle ran code"


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


# --- what must work ------------------------------------------------------------------------


def test_predict_a_1x1_pixel_image(world):
    result = runner.invoke(app, ["predict", world["tiny_png"], "--top-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)[0]["top"]) == 2


@pytest.mark.skipif(not NON_UTF8_OK, reason="needs a Linux file system with UTF-8 names")
def test_predict_and_extract_with_non_utf8_names(world):
    result = runner.invoke(app, ["predict", world["nonutf8_good"], "--top-k", "1"])
    assert result.exit_code == 0, result.output
    assert "caf\\xe9.png" in result.stdout  # shown escaped, never a UnicodeEncodeError
    result = runner.invoke(app, ["extract", world["nonutf8_data"], *_args(X, world), "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["classify", world["run"], world["nonutf8_good"]])  # printed with the name escaped
    assert result.exit_code == 0 and "caf\\udce9.png" in result.stdout, result.output


def test_csv_outside_root_with_allow_outside_root(world):
    args = ["extract", f"{world['csvdir']}/escapes.csv", *_args(X, world)]
    assert runner.invoke(app, args).exit_code != 0
    result = runner.invoke(app, [*args, "--allow-outside-root", "--json"])
    assert result.exit_code == 0, result.output
    assert sum(s["images"] for s in json.loads(result.stdout)["splits"]) == 6

    from transferkit.core.evaluation import evaluate_run

    with pytest.raises(TransferkitError, match="is outside"):
        evaluate_run(world["run"], f"{world['csvdir']}/escapes.csv")
    assert evaluate_run(world["run"], f"{world['csvdir']}/escapes.csv", allow_outside_root=True)["count"] == 6


def test_debug_shows_the_traceback(world):
    result = runner.invoke(app, ["--debug", "extract", world["nowhere"], "--cache-dir", world["cache"]])
    assert result.exit_code != 0 and isinstance(result.exception, TransferkitError)
    # --debug lasts for one invocation only: the next one is one line again
    _check_one_error_line(runner.invoke(app, ["extract", world["nowhere"], "--cache-dir", world["cache"]]), "does not exist")


def test_bomb_is_refused_before_decoding(world, monkeypatch):
    from PIL import ImageFile

    from transferkit.core.images import load_image

    def no_decoding(self):
        raise RuntimeError("the bomb was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    with pytest.raises(ImageError, match="400,000,000 px is over the 64,000,000 px limit"):
        load_image(world["bomb_png"])
    monkeypatch.setenv("TRANSFERKIT_MAX_PIXELS", "100_000_000")
    with pytest.raises(ImageError, match="over the 100,000,000 px limit"):
        load_image(world["bomb_png"])
    # A limit above the image's size lets it through to the decoder: the limit is what decides.
    monkeypatch.setenv("TRANSFERKIT_MAX_PIXELS", "500000000")
    with pytest.raises(ImageError, match="the bomb was decoded"):
        load_image(world["bomb_png"])


# --- fuzzing -------------------------------------------------------------------------------

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A working directory (and $HOME) holding a few real DATA-looking files, nothing else."""
    (tmp_path / "home").mkdir()
    (tmp_path / "x.csv").write_text("path,label\na.png,cat\n")
    (tmp_path / "y.csv").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "z.p").write_bytes(b"\x80\x04garbage")
    _images(tmp_path / "imgs", {"a": 2, "b": 2}, size=8)
    (tmp_path / "imgs" / "c").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRANSFERKIT_DATA", str(tmp_path / "datasets"))
    return tmp_path


DATA_TEXT = st.one_of(
    st.text(max_size=40),
    st.tuples(st.sampled_from(["cifar10:", "gtsrb:", "digits", "x.csv", "y.csv", "z.p", "./", "imgs", "imgs/", "./imgs/a", "a.csv", "b_train.p",
                               "c.pickle", "~/", "~nosuchuser-tk", "cifar10:~nosuchuser-tk", "GTSRB:~/"]),
              st.text(max_size=20)).map("".join),  # fmt: skip
)


@FUZZ
@given(text=DATA_TEXT, trust=st.booleans())
@example(text="~nosuchuser-tk\x00", trust=False)  # found by this test: pwd's ValueError for a NUL byte
def test_fuzz_data_spec_raises_only_transferkit_errors(sandbox, text, trust):
    from transferkit.core.data import load_data, parse_data_spec

    # Stay inside the sandbox: no absolute paths, no way up, no other user's home (the parser
    # walks the folder DATA names); ~ is the sandbox's home, ~nosuchuser-tk... a missing user.
    name = text.strip()
    assume(not name.startswith("/") and ".." not in text and ":/" not in text)
    assume(not name.startswith("~") or name.startswith(("~/", "~nosuchuser-tk")) or name == "~")
    try:
        parse_data_spec(text)
        load_data(text, trust_pickle=trust)
    except TransferkitError:
        pass


IMAGE_PREFIXES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", b"GIF89a", b"GIF87a", b"BM", b"P6\n", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBPVP8 "]


@FUZZ
@given(prefix=st.sampled_from(IMAGE_PREFIXES), body=st.binary(max_size=512), valid=st.sampled_from(["none", "png", "gif", "jpeg"]), cut=st.integers(0, 400))
def test_fuzz_load_image_gives_rgb_or_image_error(tmp_path, prefix, body, valid, cut):
    import io

    from transferkit.core.images import load_image

    if valid != "none":  # the start of a real image, then random bytes
        buffer = io.BytesIO()
        Image.new("RGB", (3, 2), (10, 20, 30)).save(buffer, format=valid.upper())
        prefix = buffer.getvalue()[:cut]
    path = tmp_path / "fuzz.img"
    path.write_bytes(prefix + body)
    try:
        image = load_image(path)
    except ImageError:
        return
    assert isinstance(image, Image.Image) and image.mode == "RGB"
