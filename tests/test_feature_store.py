"""FeatureStore on its own: chunked writes and resume, finalising, reading, listing, removing, the engines folder."""

import numpy as np
import pytest

from transferkit import TransferkitError
from transferkit.core.feature_store import FeatureStore

KEY_DESCRIPTION = {"version": 2, "backbone": "toy", "layer": "penultimate"}


def _write(store, key, chunks):
    for index, (features, ok, failures) in chunks.items():
        store.write_chunk(key, index, features, ok, failures)


CHUNKS = {
    0: (np.ones((3, 2), np.float32), np.array([True, False, True]), [{"index": 1, "sample": "a.png", "reason": "truncated"}]),
    1: (np.full((2, 2), 2, np.float32), np.array([True, True]), []),
}


def test_folders_follow_the_cache_dir_and_the_environment(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path / "here")
    assert (store.root, store.engines_folder) == (tmp_path / "here" / "features", tmp_path / "here" / "engines")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "env"))
    assert FeatureStore().root == tmp_path / "env" / "features"


def test_chunks_resume_then_finalise_into_one_verified_entry(tmp_path):
    store = FeatureStore(tmp_path)
    assert store.resume("k") == set() and store.read("k") is None
    _write(store, "k", {1: CHUNKS[1]})  # chunks may come in any order (DDP ranks)
    (store.entry_path("k") / "partial" / "chunk-000000.npz").write_bytes(b"PK\x03\x04truncated")  # killed mid-write
    assert store.resume("k") == {1}  # the unreadable chunk is dropped, to be computed again
    assert [e["complete"] for e in store.entries()] == [False]
    _write(store, "k", {0: CHUNKS[0]})
    failures = store.finalise("k", 2, np.array([0, 1, 0, 1, 1]), KEY_DESCRIPTION, {"dataset": "toy", "split": "val"})
    assert failures == CHUNKS[0][2]
    entry = store.read("k")
    assert entry.features.shape == (5, 2) and entry.features[:, 0].tolist() == [1, 1, 1, 2, 2]
    assert entry.ok.tolist() == [True, False, True, True, True] and entry.failures == failures
    assert not (store.entry_path("k") / "partial").exists()
    (listed,) = store.entries()
    assert listed["complete"] and (listed["backbone"], listed["split"], listed["count"], listed["dim"]) == ("toy", "val", 5, 2)


def test_a_damaged_entry_is_an_error_naming_the_fix(tmp_path):
    store = FeatureStore(tmp_path)
    store.resume("k")
    _write(store, "k", CHUNKS)
    store.finalise("k", 2, np.zeros(5, np.int64), KEY_DESCRIPTION, {})
    np.save(store.entry_path("k") / "labels.npy", np.ones(5, np.int64))
    with pytest.raises(TransferkitError, match="labels.npy does not match.*cache remove k"):
        store.read("k")
    assert store.read("k", verify=False).labels.tolist() == [1] * 5  # the DDP ranks' read, after rank 0 wrote it


def test_remove_by_unique_prefix_and_the_engine_files(tmp_path):
    store = FeatureStore(tmp_path)
    for key in ("abc1", "abc2", "xyz"):
        store.resume(key)
    with store.lock("xyz"):
        pass
    with pytest.raises(TransferkitError, match="no single cache entry starts with 'abc' \\(2 match\\)"):
        store.remove(["abc"])
    assert store.remove(["x", "abc2"]) == ["xyz", "abc2"]
    assert [e["key"] for e in store.entries()] == ["abc1"] and not list(store.root.glob("*.lock"))
    assert store.engine_files() == [] and store.remove_engine_files() == []
    store.engines_folder.mkdir()
    (store.engines_folder / "a.onnx").write_bytes(b"x")
    assert store.remove_engine_files() == [store.engines_folder / "a.onnx"] and store.engine_files() == []


def test_a_full_disk_is_one_line(tmp_path):
    import errno

    with pytest.raises(TransferkitError, match="no space left.*--cache-dir") as info:
        with FeatureStore(tmp_path).disk_errors():
            raise OSError(errno.ENOSPC, "No space left on device")
    assert "\n" not in str(info.value)
    with pytest.raises(PermissionError):
        with FeatureStore(tmp_path).disk_errors():
            raise PermissionError(errno.EACCES, "denied")
