"""Bottleneck features, computed once and cached on disk.

A frozen backbone maps an image to the same features every time, so they are computed once and
reused by every head trained on them.  A cache entry is keyed by everything that changes the
numbers (backbone, weights digest, layer, preprocessing, data fingerprint).  It is written in
chunks (an interrupted run resumes at the first missing chunk), finalised atomically (meta.json
is written last: no meta, not complete), checksummed, and read memory-mapped.
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
from typing import Sequence

import numpy as np
import torch
from filelock import FileLock

from transferkit.backbones import Backbone, build_backbone, parse_layer
from transferkit.errors import TransferkitError
from transferkit.loader import ImageSource, default_workers, iterate_batches
from transferkit.weights import sha256_file

CACHE_VERSION = 2  # 2: smaller images resized without border cropping
META = "meta.json"


def launch(devices: int | str = 1, num_nodes: int = 1, accelerator: str = "auto"):
    """A launched ``lightning.Fabric`` for DDP extraction, or None for one process.

    Fabric re-runs the command for the other local processes, or joins the processes that
    torchrun or SLURM started, as Lightning documents.
    """
    several = str(devices) not in ("1", "auto") or num_nodes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not several:
        return None
    import lightning as L

    try:
        fabric = L.Fabric(accelerator=accelerator, devices=int(devices) if str(devices).isdigit() else devices, num_nodes=num_nodes, strategy="ddp")
    except (ValueError, RuntimeError) as err:
        raise TransferkitError(f"cannot start DDP extraction with devices={devices} num_nodes={num_nodes}: {str(err).splitlines()[0]}") from None
    fabric.launch()
    return fabric


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else $TRANSFERKIT_CACHE, else the platform's user cache folder."""
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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_entry(path: Path, verify: bool = True) -> CachedFeatures | None:
    """A complete cache entry, or None if it is incomplete; a damaged one is an error."""
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


def _write_chunk(partial: Path, index: int, features: np.ndarray, ok: np.ndarray, failures: list[dict]) -> None:
    tmp = partial / f"chunk-{index:06d}.tmp.npz"
    with open(tmp, "wb") as f:
        np.savez(f, features=features, ok=ok, failures=np.array(json.dumps(failures)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, partial / f"chunk-{index:06d}.npz")


@contextlib.contextmanager
def _disk_errors(root: Path):
    """A full or failing disk ends in one line; what was written stays resumable, never complete."""
    try:
        yield
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise TransferkitError(
                f"no space left on the device holding the feature cache {root}: free space (`transferkit cache remove`) "
                "or pass --cache-dir on a larger disk; the chunks written so far are kept and the next run resumes"
            ) from None
        raise


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


def _finalise(path: Path, partial: Path, n_chunks: int, labels: np.ndarray, description: dict, extra: dict) -> list[dict]:
    """Stream the chunks into one .npy file; meta.json, written last, marks the entry complete.

    Plain file writes rather than a writable memmap: dirty mapped pages would count against
    the process, and peak memory must not grow with the dataset.
    """
    chunks = [partial / f"chunk-{i:06d}.npz" for i in range(n_chunks)]
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
        **description,
        **extra,
        "count": int(len(labels)),
        "dim": int(dim),
        "failures": failures,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "sha256": {"features.npy": digest.hexdigest(), **{name: sha256_file(path / name) for name in ("labels.npy", "ok.npy")}},
    }
    _atomic_write_bytes(path / META, json.dumps(meta, indent=1).encode())
    shutil.rmtree(partial, ignore_errors=True)
    return failures


def extract_features(
    samples: Sequence[ImageSource],
    labels: Sequence[int] | np.ndarray,
    backbone: Backbone | str,
    *,
    data_fingerprint: str,
    layer: str = "penultimate",
    image_size: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    chunk_batches: int = 16,
    engine: str = "auto",
    progress: bool | str = False,
    description: dict | None = None,
    fabric=None,
    flip_tta: bool = False,
    quantize: str | None = None,
    calibration=None,
) -> CachedFeatures:
    """Features of ``samples`` at ``layer``, from the cache or computed (and cached) now.

    The work is cut into chunks of ``chunk_batches`` batches; chunk boundaries fall on batch
    boundaries, so a resumed run batches every image exactly as an uninterrupted one would
    and gives bit-identical features.  Under DDP (a launched ``lightning.Fabric``), process
    ``r`` of ``w`` computes chunks ``r, r + w, ...`` into the same entry and rank 0 finalises.
    ``flip_tta``: each image's features averaged with its mirror image's (twice the work).
    ``quantize="int8"``: extract with ONNX Runtime's static int8 quantisation, its ranges
    calibrated on ``calibration`` (a :class:`~transferkit.data.LabelledImages`, normally the
    training split, so that every split sees the same network; default: ``samples`` themselves).
    """
    if isinstance(backbone, str):
        backbone = build_backbone(backbone)
    if batch_size < 1:
        raise TransferkitError(f"--batch-size must be at least 1, got {batch_size}")
    backbone.spec.check_image_size(image_size)
    parse_layer(layer, backbone.spec)  # an unknown layer fails before any work
    from transferkit.engines import QUANTIZATIONS, resolve_engine

    labels = np.asarray(labels, dtype=np.int64)
    if quantize not in (None, *QUANTIZATIONS):
        raise TransferkitError(f"unknown --quantize {quantize!r}: use {' or '.join(QUANTIZATIONS)}")
    engine = resolve_engine("onnxruntime" if quantize and engine == "auto" else engine, len(samples))
    int8_print = (calibration.fingerprint() if calibration is not None else data_fingerprint) if quantize else None
    key, key_description = cache_key(backbone, layer, image_size, data_fingerprint, engine, flip_tta, int8_print)
    root = cache_root(cache_dir)
    path = root / key
    root.mkdir(parents=True, exist_ok=True)
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    # A second process waits for the lock, then finds the entry complete; DDP ranks 1.. follow rank 0 instead.
    lock = FileLock(str(root / f"{key}.lock")) if rank == 0 else contextlib.nullcontext()
    with lock:
        found = read_entry(path)
        if fabric is not None:
            fabric.barrier()  # every rank has looked before rank 0 can start writing
        if found is not None:
            found.rank = rank
            return found
        started = time.perf_counter()
        partial = path / "partial"
        partial.mkdir(parents=True, exist_ok=True)
        chunk_size = batch_size * chunk_batches
        n_chunks = max(1, -(-len(samples) // chunk_size))
        done = {int(p.name[6:12]) for p in partial.glob("chunk-??????.npz") if _chunk_readable(p)}
        todo = [c for c in range(n_chunks) if c not in done and c % world == rank]
        order = [i for c in todo for i in range(c * chunk_size, min((c + 1) * chunk_size, len(samples)))]
        if todo:
            from transferkit.engines import make_engine

            size = backbone.spec.check_image_size(image_size)
            device = fabric.device if fabric is not None else None
            transform = backbone.transform(image_size)
            calibration_sources = calibration.samples if calibration is not None else samples
            int8 = _int8_calibration(calibration_sources, int8_print, transform) if quantize else None
            run = make_engine(engine, backbone, layer, size, root.parent / "engines", device=device, flip_tta=flip_tta, int8=int8)
            on_gpu = run.device.type == "cuda"
            if on_gpu:  # uint8 out of the workers, a quarter of float32's bytes; the engine normalises on the GPU
                transform = backbone.transform(image_size, uint8=True)
            if num_workers is None:
                num_workers = default_workers(len(order), batch_size, gpu=on_gpu)
            with _disk_errors(root):
                _compute_chunks(run, transform, samples, order, todo, chunk_size, partial, batch_size, num_workers, progress, len(done))
        if fabric is not None:
            fabric.barrier()  # every shard is on disk
        with _disk_errors(root):
            failures = _finalise(path, partial, n_chunks, labels, key_description, description or {}) if rank == 0 else []
        if fabric is not None:
            fabric.barrier()  # the entry is complete
        entry = read_entry(path, verify=False)
        entry.rank = rank
    entry.hit = False
    entry.seconds = time.perf_counter() - started
    entry.failures = failures
    return entry


CALIBRATION_IMAGES = 64


def _int8_calibration(sources: Sequence[ImageSource], fingerprint: str, transform):
    """Up to 64 images spread evenly over ``sources`` (the same ones on every run), preprocessed."""
    from transferkit.engines import Int8Calibration

    picked = np.unique(np.linspace(0, len(sources) - 1, min(CALIBRATION_IMAGES, len(sources))).round().astype(int))
    images = [b.images for b in iterate_batches([sources[i] for i in picked], transform, batch_size=len(picked), num_workers=0) if b.images is not None]
    if not images:
        raise TransferkitError("no calibration image for --quantize int8 could be decoded")
    return Int8Calibration(torch.cat(images), fingerprint)


def _compute_chunks(engine, transform, samples, order, todo, chunk_size, partial, batch_size, num_workers, progress, n_done) -> None:
    """Run the engine over the images of the ``todo`` chunks, writing each chunk when full."""
    dim = None
    sources = [samples[i] for i in order]
    label = progress if isinstance(progress, str) else "extract"
    if n_done:
        label = f"{label} (resuming after {n_done} cached chunks)"
    pending = iter(todo)
    chunk = next(pending)
    rows, ok, failures = [], [], []
    seen = 0  # images of ``sources`` consumed so far
    with torch.inference_mode():
        batches = iterate_batches(sources, transform, batch_size=batch_size, num_workers=num_workers, progress=label if progress else False)
        for batch in batches:
            n = len(batch.indices) + len(batch.failures)
            batch_ok = np.zeros(n, dtype=bool)
            if batch.images is not None:
                out = engine(batch.images)
                dim = out.shape[1]
                batch_rows = np.zeros((n, dim), dtype=np.float32)
                local = np.asarray(batch.indices) - seen
                batch_rows[local] = out
                batch_ok[local] = True
            else:
                batch_rows = None  # all failed: filled with zeros once the width is known
            failures += [{"index": order[i], "sample": _describe(sources[i]), "reason": reason} for i, reason in batch.failures]
            rows.append(batch_rows)
            ok.append(batch_ok)
            seen += n
            if sum(len(o) for o in ok) == min(chunk_size, len(samples) - chunk * chunk_size):
                if dim is None:
                    dim = engine(transform(np.zeros((8, 8, 3), np.uint8)).unsqueeze(0)).shape[1]
                rows = [r if r is not None else np.zeros((len(o), dim), np.float32) for r, o in zip(rows, ok)]
                _write_chunk(partial, chunk, np.concatenate(rows), np.concatenate(ok), failures)
                rows, ok, failures = [], [], []
                chunk = next(pending, None)


def _describe(source: ImageSource) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"


def list_entries(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every cache entry with its description, size and whether it is complete."""
    root = cache_root(cache_dir)
    entries = []
    for path in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        try:
            meta = json.loads((path / META).read_text())
            complete = True
        except (OSError, ValueError):
            meta, complete = {}, False
        entries.append({"key": path.name, "complete": complete, "bytes": size, **{k: meta.get(k) for k in ("backbone", "layer", "quantize", "dataset", "split", "count", "dim", "created")}})
    return entries


def engine_files(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """The ONNX exports kept beside the feature cache: feature layers (float32 and int8) and the
    trained runs' whole networks, one per run scored on 1,000 images or more."""
    folder = cache_root(cache_dir).parent / "engines"
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def remove_entries(keys: Sequence[str], cache_dir: str | os.PathLike | None = None) -> list[str]:
    """Delete entries by key (or unique key prefix); returns the keys removed."""
    root = cache_root(cache_dir)
    existing = [p.name for p in root.glob("*") if p.is_dir()] if root.is_dir() else []
    removed = []
    for key in keys:
        matches = [k for k in existing if k.startswith(key)]
        if len(matches) != 1:
            raise TransferkitError(f"no single cache entry starts with {key!r} ({len(matches)} match); see `transferkit cache list`")
        shutil.rmtree(root / matches[0])
        (root / f"{matches[0]}.lock").unlink(missing_ok=True)
        removed.append(matches[0])
    return removed
