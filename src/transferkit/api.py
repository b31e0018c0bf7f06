"""The Python API: one function per command of the `transferkit` CLI, with the same names and options.

Each CLI command parses its arguments, calls the function here of the same name, and prints the
result; a notebook calls the same function.  tests/test_api.py checks that each command's options
and its function's parameters stay the same set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from transferkit.advice import advise
from transferkit.errors import TransferkitError
from transferkit.options import DEFAULT_MODEL
from transferkit.runs import Run, load_run
from transferkit.training import TrainResult, train

__all__ = ["TrainResult", "advise", "classify", "compare", "evaluate", "export", "extract", "load_run", "train"]


def evaluate(run: str | os.PathLike | Run, data, *, split: str | None = None, batch_size: int = 32, engine: str = "auto",
             trust_pickle: bool = False, allow_outside_root: bool = False) -> dict:  # fmt: skip
    """Accuracy, per-class precision/recall and confusion matrix of a trained run on labelled ``data``
    (the ``test`` split if it has one, else all of it, unless ``split`` says)."""
    from transferkit.evaluation import evaluate_run

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
    from transferkit.backbones import build_backbone
    from transferkit.data import ImageDataset, load_data
    from transferkit.distributed import launch
    from transferkit.features import extract_features

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
    from transferkit.comparison import compare as run_cells
    from transferkit.comparison import grid

    def names(value):
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)

    return run_cells(data, grid(names(models), names(strategies), names(layers)), out, progress=progress, echo=echo, **options)


def export(run: str | os.PathLike, *, format: str = "onnx", out: str | os.PathLike | None = None) -> dict:
    """The run's network as ONNX or TorchScript, checked against PyTorch's outputs: {path, max_abs_difference, ...}."""
    from transferkit.exporter import export_run

    return export_run(run, format, out)

