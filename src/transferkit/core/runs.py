"""Run folders: a trained classifier saved so it can be rebuilt anywhere, and loaded back.

A run folder holds ``model.safetensors`` (the whole network: backbone + head), ``model.json``
(what is needed to rebuild it: backbone, layer, head shape, preprocessing, class names),
``config.json``, ``metrics.json`` (and ``metrics.csv`` per epoch for end-to-end runs), the
plots and ``report.md``.  Nothing in it is pickled and no absolute path is recorded.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from transferkit.core.backbones import Backbone, build_backbone
from transferkit.core.errors import TransferkitError

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
MODEL_META = "model.json"


class TrainedModel(nn.Module):
    """Backbone features at ``layer`` followed by a trained head: images in, class scores out.

    ``head_layout`` is the layout the head was built from (heads.head_module); model.json records it.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, head_layout: dict, layer: str = "penultimate", flip_tta: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.head_layout = head_layout
        self.layer = layer
        self.flip_tta = flip_tta  # features as the head was trained on them: averaged with the mirror image's
        backbone.classifier = nn.Identity()  # the head replaces the ImageNet classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(x, self.layer, self.flip_tta))


def build_head(layout: dict) -> nn.Module:
    """An untrained head module with the layout ``model.json`` records."""
    from transferkit.core.heads import head_module

    try:
        return head_module(layout)
    except (ValueError, TypeError, IndexError, KeyError):
        raise TransferkitError(f"unknown head layout {layout!r} in {MODEL_META}; this run needs a newer transferkit") from None


@dataclass
class Run:
    """A trained classifier and what it was trained on."""

    path: Path | None
    model: TrainedModel
    classes: list[str]
    image_size: int
    meta: dict
    # Engines built so far, by (engine asked, engine it resolved to, cache folder): an ONNX Runtime
    # session (and its parity check) is built once per loaded run, not on every predict call.
    _engines: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def transform(self):
        return self.model.backbone.transform(self.image_size)

    def engine(self, name: str = "auto", n_images: int | None = None, cache_dir: str | os.PathLike | None = None):
        """The network as an inference engine (see :mod:`transferkit.core.engines`); ONNX Runtime
        only for a run whose description records its weights' checksum (it names the export,
        kept beside the feature cache of ``cache_dir``)."""
        from transferkit.core.engines import resolve_engine, scoring_engine

        digest = self.meta.get("model_sha256")
        name = name if digest else "torch"
        key = (name, resolve_engine(name, n_images), None if cache_dir is None else str(cache_dir))
        if key not in self._engines:
            self._engines[key] = scoring_engine(name, self.model, self.model.backbone, self.image_size, n_images, f"run-{(digest or '')[:16]}", cache_dir)
        return self._engines[key]

    def predict(self, images: Sequence, *, top_k: int = 5, batch_size: int = 32, progress: bool | str = False, engine: str = "auto") -> list[dict]:
        """Top-k classes per image (paths, folders, PIL images or arrays), in input order."""
        from transferkit.core.asis import classify_batches
        from transferkit.core.loader import expand_paths

        sources = expand_paths(images)
        return classify_batches(self.engine(engine, len(sources)), sources, self.transform, self.classes, top_k=top_k, batch_size=batch_size, progress=progress)

    def scores(self, samples: Sequence, *, batch_size: int = 32, progress: bool | str = False, engine: str = "auto",
               cache_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, list[dict]]:  # fmt: skip
        """Class probabilities for ``samples``: (probabilities, ok mask, failures)."""
        from transferkit.core.loader import iterate_batches

        run = self.engine(engine, len(samples), cache_dir)
        probs = np.zeros((len(samples), len(self.classes)), dtype=np.float32)
        ok = np.zeros(len(samples), dtype=bool)
        failures = []
        for batch in iterate_batches(samples, self.transform, batch_size=batch_size, progress=progress):
            failures += [{"index": i, "reason": r} for i, r in batch.failures]
            if batch.images is not None:
                probs[batch.indices] = torch.from_numpy(run(batch.images)).softmax(1).numpy()
                ok[batch.indices] = True
        return probs, ok, failures


def save_model(run_dir: Path, model: TrainedModel, *, classes: list[str], image_size: int, head_kind: str) -> dict:
    """Write the model's weights; returns its description, with their checksum, for ``model.json``.

    The caller writes ``model.json`` (:func:`write_json`) once the run is complete: its presence
    marks a finished run.
    """
    from transferkit.core import __version__
    from transferkit.core.weights import save_state_dict, sha256_file

    run_dir.mkdir(parents=True, exist_ok=True)
    spec = model.backbone.spec
    meta = {
        "format_version": FORMAT_VERSION,
        "transferkit_version": __version__,
        "backbone": spec.name,
        "weights_source": model.backbone.weights_source,
        "weights_digest": model.backbone.weights_digest,
        "layer": model.layer,
        "flip_tta": model.flip_tta,
        "strategy": head_kind,
        "head": model.head_layout,
        "classes": list(classes),
        "image_size": image_size,
        "preprocessing": spec.preprocessing(image_size),
    }
    state = {k: v for k, v in model.state_dict().items()}
    save_state_dict(state, run_dir / (MODEL_FILE + ".tmp"))
    meta["model_sha256"] = sha256_file(run_dir / (MODEL_FILE + ".tmp"))  # load_run refuses an altered file
    os.replace(run_dir / (MODEL_FILE + ".tmp"), run_dir / MODEL_FILE)
    return meta


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict]) -> None:
    """A table of a run folder (metrics.csv per epoch, learning_curve.csv): one column per key seen, in order."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray,)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


PRECOMPUTED_FEATURES = "precomputed features"  # metrics.json's summary "input" of a head trained on a bottleneck pickle


def _trained_on_precomputed_features(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "metrics.json").read_text())["summary"].get("input") == PRECOMPUTED_FEATURES
    except (OSError, ValueError, KeyError, AttributeError):
        return False


def load_run(run_dir: str | os.PathLike) -> Run:
    """Rebuild a trained classifier from its run folder (no pickle, no network)."""
    from transferkit.core.weights import read_state_dict, sha256_file

    run_dir = Path(run_dir)
    meta_path = run_dir / MODEL_META
    if not meta_path.is_file() and _trained_on_precomputed_features(run_dir):
        raise TransferkitError(f"{run_dir} holds a head trained on precomputed features, with no backbone to turn images into them; train on the images themselves for a run that classifies them")
    if not meta_path.is_file() or not (run_dir / MODEL_FILE).is_file():
        raise TransferkitError(f"{run_dir} is not a finished run folder (no {MODEL_META} / {MODEL_FILE}); train one with `transferkit train`")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        raise TransferkitError(f"{meta_path} is not valid JSON; the run folder is damaged") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise TransferkitError(
            f"{run_dir} was written by transferkit {meta.get('transferkit_version', '?')} in run format "
            f"{meta.get('format_version')}; this version reads format {FORMAT_VERSION}"
        )
    if meta.get("model_sha256") and sha256_file(run_dir / MODEL_FILE) != meta["model_sha256"]:
        raise TransferkitError(
            f"{run_dir / MODEL_FILE} was altered or truncated after training (its sha256 differs from the one in "
            f"{MODEL_META}); restore it from a backup or train again"
        )
    backbone = build_backbone(meta["backbone"], pretrained=False, seed=None)
    model = TrainedModel(backbone, build_head(meta["head"]), meta["head"], meta["layer"], meta.get("flip_tta", False))
    state = read_state_dict(run_dir / MODEL_FILE)
    own = model.state_dict()
    problems = [
        f"{len(keys)} {what} (e.g. {keys[0]})"
        for what, keys in (
            ("missing", [k for k in own if k not in state]),
            ("unexpected", [k for k in state if k not in own]),
            ("mismatched", [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]),
        )
        if keys
    ]
    if problems:
        raise TransferkitError(f"{run_dir / MODEL_FILE} does not fit the {meta['backbone']} model {MODEL_META} describes: "
                               + "; ".join(problems) + "; the run folder is damaged or mixed up")  # fmt: skip
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise TransferkitError(f"{run_dir / MODEL_FILE} does not fit the model {MODEL_META} describes ({str(err).splitlines()[0]})") from None
    backbone.weights_source, backbone.weights_digest = meta["weights_source"], meta["weights_digest"]
    return Run(run_dir, model.eval(), meta["classes"], meta["image_size"], meta)
