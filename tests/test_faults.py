"""Faults: SIGKILL at several points, a full disk, altered files, two processes at once."""

import errno
import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from transferkit import TransferkitError, build_backbone
from transferkit.core.features import extract_features, list_entries, read_entry

EXTRACT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from transferkit import build_backbone
    from transferkit.core.features import extract_features
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) for _ in range(160)]
    result = extract_features(samples, np.arange(160) % 4, build_backbone("efficientnet_lite0"), data_fingerprint="kill",
                              batch_size=8, chunk_batches=1, num_workers=0, image_size=96, engine="torch", cache_dir=sys.argv[1])
    print(result.path.name)
    """
)


def _spawn(script, *args):
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(process, ready, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not ready():
        time.sleep(0.01)
    assert process.poll() is None, "finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    script = folder / "extract.py"
    script.write_text(EXTRACT)
    out, err = _spawn(script, folder / "cache").communicate(timeout=300)
    assert out.strip(), err
    return script, read_entry(folder / "cache" / "features" / out.strip())


@pytest.mark.slow
@pytest.mark.parametrize("kills_after_chunks", [[2, 7], [12, 17]])  # (tests/test_features.py kills once)
def test_extraction_killed_repeatedly_resumes_bit_identical(tmp_path, reference, kills_after_chunks):
    script, expected = reference
    cache = tmp_path / "cache"
    for after in kills_after_chunks:
        process = _spawn(script, cache)
        _kill_when(process, lambda: len(list(cache.glob("features/*/partial/chunk-*.npz"))) >= after)
        assert not list(cache.glob("features/*/meta.json")), "a killed run left an entry marked complete"
    out, err = _spawn(script, cache).communicate(timeout=300)
    resumed = read_entry(cache / "features" / out.strip())
    assert np.array_equal(resumed.features, expected.features) and np.array_equal(resumed.ok, expected.ok)


TRAIN = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from pathlib import Path
    from transferkit import build_backbone
    from transferkit.training.finetune import FitConfig, fit
    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 190, 60], [50, 60, 210]])
    labels = np.arange(60) % 3
    images = [np.clip(colours[y] + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8) for y in labels]
    config = FitConfig(strategy="finetune", epochs=4, head_epochs=1, unfreeze=1, lr=1e-2, batch_size=4, image_size=32, num_workers=0, augment="light")
    result = fit(build_backbone("resnet18", pretrained=False), (images[:48], labels[:48]), (images[48:], labels[48:]), 3, config,
                 Path(sys.argv[1]), resume=sys.argv[2] == "resume", progress=False)
    print(json.dumps({"epochs": result.epochs_completed, "history": result.history}))
    """
)


def _epoch_of(last):
    import torch

    try:
        return int(torch.load(last, map_location="cpu", weights_only=True)["epoch"]) + 1
    except Exception:
        return 0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train")
    script = folder / "train.py"
    script.write_text(TRAIN)
    return script, json.loads(_spawn(script, folder / "reference", "new").communicate(timeout=300)[0])


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_epochs", [[2], [1, 3]])
def test_training_killed_resumes_to_the_same_metrics(tmp_path, uninterrupted, kill_after_epochs):
    script, uninterrupted = uninterrupted
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    mode = "new"
    for after in kill_after_epochs:
        process = _spawn(script, run, mode)
        _kill_when(process, lambda: last.is_file() and _epoch_of(last) >= after)
        mode = "resume"
    out, err = _spawn(script, run, "resume").communicate(timeout=300)
    resumed = json.loads(out)
    assert resumed["epochs"] == uninterrupted["epochs"] == 4
    for a, b in zip(resumed["history"], uninterrupted["history"]):
        assert a["epoch"] == b["epoch"] and a["phase"] == b["phase"]
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-5) and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


@pytest.fixture
def tiny():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(24)], np.arange(24) % 2


def test_full_disk_stops_with_one_line_and_leaves_no_complete_entry(tmp_path, tiny, monkeypatch):
    from transferkit.core.feature_store import FeatureStore

    calls = {"n": 0}
    real = FeatureStore.write_chunk

    def fill_up(*args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(*args)

    monkeypatch.setattr(FeatureStore, "write_chunk", fill_up)
    backbone = build_backbone("lenet", pretrained=False)
    kwargs = {"data_fingerprint": "disk", "batch_size": 4, "chunk_batches": 1, "cache_dir": tmp_path}
    with pytest.raises(TransferkitError, match="no space left.*resumes") as info:
        extract_features(*tiny, backbone, **kwargs)
    assert "\n" not in str(info.value)
    assert [e["complete"] for e in list_entries(tmp_path)] == [False]
    monkeypatch.setattr(FeatureStore, "write_chunk", real)
    resumed = extract_features(*tiny, backbone, **kwargs)
    assert np.array_equal(resumed.features, extract_features(*tiny, backbone, **{**kwargs, "cache_dir": tmp_path / "clean"}).features)


def test_altered_chunk_or_planted_pickle_is_recomputed_not_loaded(tmp_path, tiny):
    import pickle

    backbone = build_backbone("lenet", pretrained=False)
    kwargs = {"data_fingerprint": "planted", "batch_size": 4, "chunk_batches": 1, "cache_dir": tmp_path}
    expected = extract_features(*tiny, backbone, **{**kwargs, "cache_dir": tmp_path / "clean"})
    entry = tmp_path / "features" / expected.path.name
    (entry / "partial").mkdir(parents=True)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (marker.touch, ())

    (entry / "partial" / "chunk-000000.npz").write_bytes(pickle.dumps(Exploit()))
    (entry / "partial" / "chunk-000001.npz").write_bytes(b"PK\x03\x04truncated")
    result = extract_features(*tiny, backbone, **kwargs)
    assert not marker.exists()
    assert np.array_equal(result.features, expected.features)


def test_two_processes_extracting_at_once_agree(tmp_path, reference):
    script, expected = reference
    first, second = _spawn(script, tmp_path / "cache"), _spawn(script, tmp_path / "cache")
    names = [p.communicate(timeout=300)[0].strip() for p in (first, second)]
    assert names[0] == names[1] and first.returncode == second.returncode == 0
    entry = read_entry(tmp_path / "cache" / "features" / names[0])  # checksums verified
    assert np.array_equal(entry.features, expected.features)


TRAIN_CACHED = textwrap.dedent(
    """
    import json, sys
    from transferkit.api import train
    data, run, mode, cache = sys.argv[1:5]
    train(data, run, resume=mode == "resume", progress=False, model="resnet18", pretrained=False, image_size=32, batch_size=4,
          strategy="finetune", unfreeze="1", cache_frozen=True, epochs=12, head_epochs=1, lr=1e-2, cache_dir=cache)
    print(json.dumps(json.load(open(run + "/metrics.json"))["history"]))
    """
)


@pytest.mark.slow
def test_cache_frozen_run_killed_in_training_resumes_to_the_same_metrics(tmp_path):
    """--cache-frozen: killed after its extraction and its first epoch, `--resume` finds the cached
    outputs and the checkpoint, and ends with the history of an uninterrupted run.  Epochs on cached
    outputs take a fraction of a second here: 12 of them leave time to kill after the first."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, rgb in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        (tmp_path / "data" / f"class{c}").mkdir(parents=True)
        for i in range(16):
            Image.fromarray(np.clip(np.array(rgb) + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)).save(tmp_path / "data" / f"class{c}" / f"{i}.png")
    script = tmp_path / "train.py"
    script.write_text(TRAIN_CACHED)
    reference = json.loads(_spawn(script, tmp_path / "data", tmp_path / "reference", "new", tmp_path / "cache-a").communicate(timeout=300)[0])
    run, cache = tmp_path / "run", tmp_path / "cache-b"
    last = run / "checkpoints" / "last.ckpt"
    _kill_when(_spawn(script, tmp_path / "data", run, "new", cache), lambda: last.is_file() and _epoch_of(last) >= 1)
    assert {e["complete"] for e in list_entries(cache)} == {True}  # the outputs were cached before training began
    out, err = _spawn(script, tmp_path / "data", run, "resume", cache).communicate(timeout=300)
    resumed = json.loads(out)
    assert len(resumed) == len(reference) == 12, err
    for a, b in zip(resumed, reference):
        assert a["epoch"] == b["epoch"] and a["phase"] == b["phase"]
        assert a["val_acc"] == pytest.approx(b["val_acc"], abs=1e-5) and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["features_cached"] is True and summary["cached_layer"] == "group4"
