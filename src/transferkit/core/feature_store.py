"""The feature cache folder: content-addressed entries of bottleneck features, and the ONNX exports beside them.

An entry is keyed by everything that changes the numbers (backbone, weights digest, layer,
preprocessing, data fingerprint, engine).  It is written in chunks (an interrupted run resumes
at the first missing chunk), finalised atomically (meta.json is written last: no meta, not
complete), checksummed, and read memory-mapped.  Keys and files must stay as they are, or every
existing cache is orphaned (tests/test_feature_cache_format.py pins them).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
from filelock import FileLock

from transferkit.core.errors import TransferkitError
from transferkit.core.weights import sha256_file

if TYPE_CHECKING:
    from transferkit.core.backbones import Backbone

CACHE_VERSION = 2  # 2: smaller images resized without border cropping
META = "meta.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The entries' folder under ``cache_dir``, else $TRANSFERKIT_CACHE, else the platform's user cache folder."""
    if cache_dir is None:
        cache_dir = os.environ.get("TRANSFERKIT_CACHE") or None
    if cache_dir is None:
        from platformdirs import user_cache_dir

        cache_dir = user_cache_dir("transferkit")
    return Path(cache_dir) / "features"


def cache_key(backbone: Backbone, layer: str, image_size: int | None, data_fingerprint: str, engine: str = "torch",
              flip_tta: bool = False, int8_calibration: str | None = None) -> tuple[str, dict]:  # fmt: skip
    """A content address for the features, and the description it was derived from.

    ``int8_calibration``: the fingerprint of the images an int8 engine was calibrated on.
    """
    description = {
        "version": CACHE_VERSION,
        "backbone": backbone.spec.name,
        "weights": backbone.weights_digest,
        "layer": layer,
        "flip_tta": flip_tta,
        "preprocessing": backbone.spec.preprocessing(image_size),
        "data": data_fingerprint,
        "engine": engine,  # engines agree to 1e-3, not bit for bit
    }
    if int8_calibration is not None:  # only then, so that float32 entries keep their keys
        description["quantize"] = {"int8": int8_calibration}
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]
    return key, description


@dataclass
class CachedFeatures:
    """Features of one labelled image set; rows of images that failed to decode are zero."""

    features: np.ndarray  # N x D float32, memory-mapped
    labels: np.ndarray  # N int64
    ok: np.ndarray  # N bool: the image decoded
    path: Path
    hit: bool  # read from the cache rather than computed now
    seconds: float  # time spent computing (0 on a hit)
    failures: list[dict] = field(default_factory=list)  # {"index", "sample", "reason"}
    rank: int = 0  # the DDP process that returned this (only rank 0 should report)

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    def usable(self) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of the images that decoded."""
        return np.asarray(self.features[self.ok]), self.labels[self.ok]

    def usable_rows(self) -> tuple["Rows", np.ndarray]:
        """:meth:`usable` without reading the features into memory: rows are read when indexed."""
        return Rows(self.features, np.flatnonzero(self.ok)), self.labels[self.ok]


@dataclass
class Rows:
    """Rows ``index`` of an N x D (memory-mapped) array, each read when asked for: large cached
    outputs stay on disk (and in the page cache, shared between processes)."""

    array: np.ndarray
    index: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.index), self.array.shape[1]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array[self.index[i]]


def read_entry(path: Path, verify: bool = True) -> CachedFeatures | None:
    """The complete entry in folder ``path``, or None if it is incomplete; a damaged one is an error."""
    meta_path = path / META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if verify:
            for name, digest in meta["sha256"].items():
                if sha256_file(path / name) != digest:
                    raise ValueError(f"{name} does not match its checksum")
        features = np.load(path / "features.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
        ok = np.load(path / "ok.npy")
    except (OSError, ValueError, KeyError) as err:
        raise TransferkitError(
            f"feature cache entry {path} is damaged ({err}); remove it with `transferkit cache remove {path.name}` and rerun"
        ) from None
    return CachedFeatures(features, labels, ok, path, hit=True, seconds=0.0, failures=meta.get("failures", []))


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _chunk_readable(path: Path) -> bool:
    """A chunk that cannot be read back as plain arrays (truncated, altered, a planted pickle)
    is deleted, to be computed again."""
    try:
        with np.load(path, allow_pickle=False) as chunk:
            chunk["features"], chunk["ok"], json.loads(str(chunk["failures"]))
        return True
    except Exception:
        path.unlink(missing_ok=True)
        return False


class FeatureStore:
    """The cache folder (``cache_dir``, else $TRANSFERKIT_CACHE, else the user cache): entries
    under ``features/``, ONNX exports under ``engines/``.

    Writing an entry: take :meth:`lock`, :meth:`resume` (the chunks already on disk),
    :meth:`write_chunk` for the others, :meth:`finalise`.  Chunks are written by index, so DDP
    processes can fill one entry together; one process finalises.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.root = cache_root(cache_dir)
        self.engines_folder = self.root.parent / "engines"  # the feature layers' and trained runs' ONNX exports

    def entry_path(self, key: str) -> Path:
        return self.root / key

    def _partial_path(self, key: str) -> Path:
        return self.root / key / "partial"

    def _chunk_path(self, key: str, index: int, suffix: str = ".npz") -> Path:
        return self._partial_path(key) / f"chunk-{index:06d}{suffix}"

    def read(self, key: str, verify: bool = True) -> CachedFeatures | None:
        """Entry ``key`` if complete (checksums verified with ``verify``), else None; a damaged one is an error."""
        return read_entry(self.entry_path(key), verify)

    def lock(self, key: str) -> FileLock:
        """An inter-process lock on entry ``key``: a second process waits, then finds it complete."""
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / f"{key}.lock"))

    def resume(self, key: str) -> set[int]:
        """Start or resume writing entry ``key``: the indices of the chunks already written."""
        partial = self._partial_path(key)
        partial.mkdir(parents=True, exist_ok=True)
        return {int(p.name[6:12]) for p in partial.glob("chunk-??????.npz") if _chunk_readable(p)}

    def write_chunk(self, key: str, index: int, features: np.ndarray, ok: np.ndarray, failures: list[dict]) -> None:
        """Chunk ``index`` of entry ``key``, atomically: a killed write leaves no chunk, not a short one."""
        tmp = self._chunk_path(key, index, ".tmp.npz")
        with open(tmp, "wb") as f:
            np.savez(f, features=features, ok=ok, failures=np.array(json.dumps(failures)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._chunk_path(key, index))

    def finalise(self, key: str, n_chunks: int, labels: np.ndarray, key_description: dict, data_description: dict) -> list[dict]:
        """Stream the chunks into one .npy file; meta.json, written last, marks the entry complete.
        Returns the images that failed to decode, from every chunk.

        Plain file writes rather than a writable memmap: dirty mapped pages would count against
        the process, and peak memory must not grow with the dataset.
        """
        path, partial = self.entry_path(key), self._partial_path(key)
        chunks = [self._chunk_path(key, i) for i in range(n_chunks)]
        with np.load(chunks[0]) as first:
            dim = first["features"].shape[1]
        ok = np.zeros(len(labels), dtype=bool)
        failures: list[dict] = []
        digest = hashlib.sha256()
        row = 0
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.dtype(np.float32).str, "fortran_order": False, "shape": (len(labels), dim)})
        with open(path / "features.npy", "wb") as out:
            out.write(header.getvalue())
            digest.update(header.getvalue())
            for chunk_path in chunks:
                with np.load(chunk_path) as chunk:
                    block = np.ascontiguousarray(chunk["features"], dtype=np.float32).tobytes()
                    n = len(chunk["ok"])
                    ok[row : row + n] = chunk["ok"]
                    failures += json.loads(str(chunk["failures"]))
                out.write(block)
                digest.update(block)
                row += n
            out.flush()
            os.fsync(out.fileno())
        np.save(path / "labels.npy", labels)
        np.save(path / "ok.npy", ok)
        meta = {
            **key_description,
            **data_description,
            "count": int(len(labels)),
            "dim": int(dim),
            "failures": failures,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "sha256": {"features.npy": digest.hexdigest(), **{name: sha256_file(path / name) for name in ("labels.npy", "ok.npy")}},
        }
        _atomic_write_bytes(path / META, json.dumps(meta, indent=1).encode())
        shutil.rmtree(partial, ignore_errors=True)
        return failures

    @contextlib.contextmanager
    def disk_errors(self) -> Iterator[None]:
        """A full or failing disk ends in one line; what was written stays resumable, never complete."""
        try:
            yield
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise TransferkitError(
                    f"no space left on the device holding the feature cache {self.root}: free space (`transferkit cache remove`) "
                    "or pass --cache-dir on a larger disk; the chunks written so far are kept and the next run resumes"
                ) from None
            raise

    def entries(self) -> list[dict]:
        """Every entry with its description, size and whether it is complete."""
        entries = []
        for path in sorted(p for p in self.root.glob("*") if p.is_dir()) if self.root.is_dir() else []:
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            try:
                meta = json.loads((path / META).read_text())
                complete = True
            except (OSError, ValueError):
                meta, complete = {}, False
            entries.append({"key": path.name, "complete": complete, "bytes": size, **{k: meta.get(k) for k in ("backbone", "layer", "quantize", "dataset", "split", "count", "dim", "created")}})
        return entries

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Delete entries by key (or unique key prefix); returns the keys removed."""
        existing = [p.name for p in self.root.glob("*") if p.is_dir()] if self.root.is_dir() else []
        removed = []
        for key in keys:
            matches = [k for k in existing if k.startswith(key)]
            if len(matches) != 1:
                raise TransferkitError(f"no single cache entry starts with {key!r} ({len(matches)} match); see `transferkit cache list`")
            shutil.rmtree(self.root / matches[0])
            (self.root / f"{matches[0]}.lock").unlink(missing_ok=True)
            removed.append(matches[0])
        return removed

    def engine_files(self) -> list[Path]:
        """The ONNX exports kept beside the entries: feature layers (float32 and int8) and the
        trained runs' whole networks, one per run scored on 1,000 images or more."""
        folder = self.engines_folder
        return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def remove_engine_files(self) -> list[Path]:
        """Delete the ONNX exports (each is made again when next needed); returns those removed."""
        exports = self.engine_files()
        for path in exports:
            path.unlink(missing_ok=True)
        return exports
