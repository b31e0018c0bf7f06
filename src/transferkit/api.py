"""The Python API: one function per command of the `transferkit` CLI, with the same names and options.

Each CLI command parses its arguments, calls the function here of the same name, and prints the
result; a notebook calls the same function.  tests/test_api.py checks that each command's options
and its function's parameters stay the same set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from transferkit.core.backbones import build_backbone
from transferkit.core.data import ImageDataset, load_data
from transferkit.core.errors import TransferkitError
from transferkit.core.runs import Run, load_run
from transferkit.plan import advice, auto
from transferkit.training.options import DEFAULT_MODEL
from transferkit.training.trainer import TrainResult

__all__ = ["TrainResult", "advise", "check", "classify", "compare", "evaluate", "export", "extract", "load_run", "train"]


def train(data, out: str | os.PathLike | None = None, *, resume: bool = False, progress: bool = True, **options) -> TrainResult:
    """Train a classifier on ``data`` (a DATA string or a loaded ImageDataset) and save the run in ``out``.

    ``options`` are those of `transferkit train`, by the names of :class:`~transferkit.training.options.TrainOptions`.
    Without ``strategy`` (``auto``) the recipe is planned on the data within ``time_budget``
    (:mod:`transferkit.plan.auto`), then trained with the options it chose and its training time
    as a limit; with one, that strategy exactly (an option it does not use is refused).  ``resume``
    continues an interrupted end-to-end run from its last checkpoint, with the options it recorded.
    """
    return auto.train(data, out, resume=resume, progress=progress, **options)


def advise(data, *, model: str = DEFAULT_MODEL, pretrained: bool = True, weights: str | None = None, sample_per_class: int = 50,
           max_sample: int = 1000, image_sizes: Sequence[int] | None = None, cache_dir=None, seed: int = 0, progress: bool = True,
           trust_pickle: bool = False, allow_outside_root: bool = False, time_budget: str | None = None) -> advice.Advice:  # fmt: skip
    """Measure ``data`` and recommend a strategy, layer and input size, with the evidence
    (:func:`transferkit.plan.advice.advise`).  With ``time_budget`` ("20m"): the planner's dry run
    instead, the measurements `train --time-budget` makes and the recipe it would train."""
    if time_budget is None:
        return advice.advise(data, model=model, pretrained=pretrained, weights=weights, sample_per_class=sample_per_class, max_sample=max_sample,
                             image_sizes=image_sizes, cache_dir=cache_dir, seed=seed, progress=progress, trust_pickle=trust_pickle,
                             allow_outside_root=allow_outside_root)  # fmt: skip
    dataset = data if isinstance(data, ImageDataset) else load_data(str(data), seed=seed, trust_pickle=trust_pickle, allow_outside_root=allow_outside_root)
    if not isinstance(dataset, ImageDataset):
        raise TransferkitError(f"{data} holds precomputed features: advice needs images")
    given = {"model": model if model != DEFAULT_MODEL else None, "weights": weights, "pretrained": None if pretrained else False,
             "cache_dir": None if cache_dir is None else str(cache_dir), "seed": seed or None, "time_budget": time_budget}  # fmt: skip
    return auto.dry_run(data if isinstance(data, str) else dataset.name, dataset, {k: v for k, v in given.items() if v is not None}, progress)


def check(data, *, model: str = DEFAULT_MODEL, image_size: int | None = None, cache_dir: str | os.PathLike | None = None, embeddings: bool = True,
          near_threshold: float | None = None, val_fraction: float = 0.2, seed: int = 0, trust_pickle: bool = False, allow_outside_root: bool = False,
          progress: bool = True) -> dict:  # fmt: skip
    """What is wrong with ``data``'s files and labels (:func:`transferkit.core.check.check_dataset`):
    unreadable and non-image files, exact and near duplicates within a class, across classes and
    across splits, likely label errors, class balance.  A JSON-serialisable report; nothing in
    the user's folder is changed.  ``embeddings``: near duplicates and label errors from
    ``model``'s cached features (extracted once); without, only the files and their bytes.
    ``near_threshold``: the cosine from which two images are near copies (default
    :data:`~transferkit.core.check.NEAR_DUPLICATE_COSINE`; higher where the images all look alike)."""
    from transferkit.core.check import check_dataset

    dataset = data if isinstance(data, ImageDataset) else load_data(str(data), trust_pickle=trust_pickle, val_fraction=val_fraction, seed=seed,
                                                                    allow_outside_root=allow_outside_root)  # fmt: skip
    if not isinstance(dataset, ImageDataset):
        raise TransferkitError(f"{data} holds precomputed features, not images: there are no files to check")
    backbone = build_backbone(model, pretrained=True) if embeddings else None
    threshold = {} if near_threshold is None else {"near_threshold": near_threshold}
    return check_dataset(dataset, backbone, image_size=image_size, cache_dir=cache_dir, val_fraction=val_fraction, seed=seed, progress=progress, **threshold)


def evaluate(run: str | os.PathLike | Run, data, *, split: str | None = None, batch_size: int = 32, engine: str = "auto",
             trust_pickle: bool = False, allow_outside_root: bool = False) -> dict:  # fmt: skip
    """Accuracy, per-class precision/recall and confusion matrix of a trained run on labelled ``data``
    (the ``test`` split if it has one, else all of it, unless ``split`` says)."""
    from transferkit.core.evaluation import evaluate_run

    return evaluate_run(run, data, split=split, trust_pickle=trust_pickle, batch_size=batch_size, allow_outside_root=allow_outside_root, engine=engine)


def classify(run: str | os.PathLike | Run, images: Sequence, *, top_k: int = 1, batch_size: int = 32, engine: str = "auto",
             progress: bool | str = False) -> list[dict]:  # fmt: skip
    """The top-k classes of each image (files, folders, PIL images or arrays), in input order; an
    image that cannot be read gets an ``error`` instead."""
    loaded = run if isinstance(run, Run) else load_run(run)
    return loaded.predict([str(i) if isinstance(i, Path) else i for i in images], top_k=top_k, batch_size=batch_size, progress=progress, engine=engine)


def extract(data, *, model: str = DEFAULT_MODEL, layer: str = "penultimate", image_size: int | None = None, batch_size: int = 32,
            num_workers: int | None = None, cache_dir: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
            pretrained: bool = True, trust_pickle: bool = False, allow_outside_root: bool = False, flip_tta: bool = False,
            quantize: str | None = None, seed: int = 0, engine: str = "auto", devices: int | str = 1, num_nodes: int = 1,
            chunk_batches: int = 16, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Compute (or reuse) the cached bottleneck features of each split of ``data``: {split: CachedFeatures}."""
    from transferkit.core.distributed import launch
    from transferkit.core.features import extract_features

    dataset = data if isinstance(data, ImageDataset) else load_data(str(data), trust_pickle=trust_pickle, seed=seed, allow_outside_root=allow_outside_root)
    if not isinstance(dataset, ImageDataset):
        raise TransferkitError(f"{data} already holds bottleneck features; train a head on it with `transferkit train`")
    weights = str(weights) if weights else None
    backbone = build_backbone(model, pretrained=pretrained, weights=weights, trust_pickle=trust_pickle)
    fabric = launch(devices, num_nodes)
    rank = fabric.global_rank if fabric is not None else 0
    return {
        split: extract_features(
            images.samples, images.labels, backbone, data_fingerprint=images.fingerprint(), layer=layer,
            image_size=image_size, batch_size=batch_size, num_workers=num_workers, cache_dir=cache_dir,
            chunk_batches=chunk_batches, engine=engine, progress=f"extract {split}" if progress and rank == 0 else False,
            description={"dataset": dataset.name, "split": split}, fabric=fabric, flip_tta=flip_tta,
            quantize=quantize, calibration=dataset.train,
        )  # fmt: skip
        for split, images in dataset.splits.items()
    }


def compare(data, *, models: Sequence[str] | str = (DEFAULT_MODEL,), strategies: Sequence[str] | str = ("linear",),
            layers: Sequence[str] | str = ("penultimate",), out: str | os.PathLike = "runs/compare", progress: bool = True,
            echo=print, **options) -> list[dict]:  # fmt: skip
    """Every model x strategy (x layer for the heads) on ``data``, as a leaderboard in ``out``;
    ``options`` are `train`'s, each given to the cells whose strategy uses it."""
    from transferkit.plan.comparison import compare as run_cells
    from transferkit.plan.comparison import grid

    def names(value):
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)

    return run_cells(data, grid(names(models), names(strategies), names(layers)), out, progress=progress, echo=echo, **options)


def export(run: str | os.PathLike, *, format: str = "onnx", out: str | os.PathLike | None = None) -> dict:
    """The run's network as ONNX or TorchScript, checked against PyTorch's outputs: {path, max_abs_difference, ...}."""
    from transferkit.core.exporter import export_run

    return export_run(run, format, out)

