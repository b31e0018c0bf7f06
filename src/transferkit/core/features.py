"""Bottleneck features: a frozen backbone run once over the images, its outputs kept in the feature cache.

A frozen backbone maps an image to the same features every time, so they are computed once and
reused by every head trained on them.  Where they are kept, and how (keys, chunks, checksums),
is :mod:`transferkit.core.feature_store`'s; the processes of a DDP extraction are
:mod:`transferkit.core.distributed`'s.  Their names are importable from here too, as before the split.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Sequence

import numpy as np
import torch

from transferkit.core import engines
from transferkit.core.backbones import Backbone, build_backbone, parse_layer
from transferkit.core.distributed import launch
from transferkit.core.errors import TransferkitError
from transferkit.core.feature_store import CACHE_VERSION, META, CachedFeatures, FeatureStore, Rows, cache_key, cache_root, read_entry
from transferkit.core.loader import ImageSource, iterate_batches, share_cores

__all__ = [
    "extract_features", "CALIBRATION_IMAGES",
    # moved to feature_store and distributed; imported from here by callers written before the split
    "CACHE_VERSION", "META", "CachedFeatures", "FeatureStore", "Rows", "cache_key", "cache_root", "read_entry",
    "list_entries", "engine_files", "remove_entries", "launch",
]  # fmt: skip


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
    calibrated on ``calibration`` (a :class:`~transferkit.core.data.LabelledImages`, normally the
    training split, so that every split sees the same network; default: ``samples`` themselves).
    """
    if isinstance(backbone, str):
        backbone = build_backbone(backbone)
    if batch_size < 1:
        raise TransferkitError(f"--batch-size must be at least 1, got {batch_size}")
    backbone.spec.check_image_size(image_size)
    parse_layer(layer, backbone.spec)  # an unknown layer fails before any work
    labels = np.asarray(labels, dtype=np.int64)
    if quantize not in (None, *engines.QUANTIZATIONS):
        raise TransferkitError(f"unknown --quantize {quantize!r}: use {' or '.join(engines.QUANTIZATIONS)}")
    engine = engines.resolve_engine("onnxruntime" if quantize and engine == "auto" else engine, len(samples))
    int8_fingerprint = (calibration.fingerprint() if calibration is not None else data_fingerprint) if quantize else None
    key, key_description = cache_key(backbone, layer, image_size, data_fingerprint, engine, flip_tta, int8_fingerprint)
    store = FeatureStore(cache_dir)
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    # A second process waits for the lock, then finds the entry complete; DDP ranks 1.. follow rank 0 instead.
    with store.lock(key) if rank == 0 else contextlib.nullcontext():
        found = store.read(key)
        if fabric is not None:
            fabric.barrier()  # every rank has looked before rank 0 can start writing
        if found is not None:
            found.rank = rank
            return found
        started = time.perf_counter()
        done = store.resume(key)
        chunk_size = batch_size * chunk_batches
        n_chunks = max(1, -(-len(samples) // chunk_size))
        todo = [c for c in range(n_chunks) if c not in done and c % world == rank]
        order = [i for c in todo for i in range(c * chunk_size, min((c + 1) * chunk_size, len(samples)))]
        if todo:
            input_size = backbone.spec.check_image_size(image_size)
            device = fabric.device if fabric is not None else None
            transform = backbone.transform(image_size)
            calibration_sources = calibration.samples if calibration is not None else samples
            int8 = _int8_calibration(calibration_sources, int8_fingerprint, transform) if quantize else None
            layer_engine = engines.make_engine(engine, backbone, layer, input_size, store.engines_folder, device=device, flip_tta=flip_tta, int8=int8)
            on_gpu = layer_engine.device.type == "cuda"
            if on_gpu:  # uint8 out of the workers, a quarter of float32's bytes; the engine normalises on the GPU
                transform = backbone.transform(image_size, uint8=True)
            num_workers = share_cores(len(order), batch_size, gpu=on_gpu, workers=num_workers)
            write_chunk = functools.partial(store.write_chunk, key)
            with store.disk_errors():
                _compute_chunks(layer_engine, transform, samples, order, todo, chunk_size, write_chunk, batch_size, num_workers, progress, len(done))
        if fabric is not None:
            fabric.barrier()  # every shard is on disk
        with store.disk_errors():
            failures = store.finalise(key, n_chunks, labels, key_description, description or {}) if rank == 0 else []
        if fabric is not None:
            fabric.barrier()  # the entry is complete
        entry = store.read(key, verify=False)
        entry.rank = rank
    entry.hit = False
    entry.seconds = time.perf_counter() - started
    entry.failures = failures
    return entry


CALIBRATION_IMAGES = 64


def _int8_calibration(sources: Sequence[ImageSource], fingerprint: str, transform):
    """Up to 64 images spread evenly over ``sources`` (the same ones on every run), preprocessed."""
    picked = np.unique(np.linspace(0, len(sources) - 1, min(CALIBRATION_IMAGES, len(sources))).round().astype(int))
    images = [b.images for b in iterate_batches([sources[i] for i in picked], transform, batch_size=len(picked), num_workers=0) if b.images is not None]
    if not images:
        raise TransferkitError("no calibration image for --quantize int8 could be decoded")
    return engines.Int8Calibration(torch.cat(images), fingerprint)


def _compute_chunks(engine, transform, samples, order, todo, chunk_size, write_chunk, batch_size, num_workers, progress, n_done) -> None:
    """Run the engine over the images of the ``todo`` chunks, handing each chunk to ``write_chunk(index, features, ok, failures)`` when full."""
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
                write_chunk(chunk, np.concatenate(rows), np.concatenate(ok), failures)
                rows, ok, failures = [], [], []
                chunk = next(pending, None)


def _describe(source: ImageSource) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"


def list_entries(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """:meth:`FeatureStore.entries`, for callers written before the store."""
    return FeatureStore(cache_dir).entries()


def engine_files(cache_dir: str | os.PathLike | None = None) -> list:
    """:meth:`FeatureStore.engine_files`, for callers written before the store."""
    return FeatureStore(cache_dir).engine_files()


def remove_entries(keys: Sequence[str], cache_dir: str | os.PathLike | None = None) -> list[str]:
    """:meth:`FeatureStore.remove`, for callers written before the store."""
    return FeatureStore(cache_dir).remove(keys)
