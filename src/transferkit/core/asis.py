"""The pretrained network used as is: images in, ImageNet classes with probabilities out."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from transferkit.core.backbones import DEFAULT_MODEL, Backbone, build_backbone
from transferkit.core.engines import scoring_engine
from transferkit.core.errors import TransferkitError
from transferkit.core.loader import ImageSource, expand_paths, iterate_batches


def classify_batches(
    engine: Callable[[torch.Tensor], np.ndarray],
    sources: Sequence[ImageSource],
    transform,
    categories: Sequence[str],
    *,
    top_k: int = 5,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool | str = False,
) -> list[dict]:
    """Top-k classes per image, in input order; a bad image gets ``{"error": reason}``.

    ``engine`` maps a batch of images to class scores (see :mod:`transferkit.core.engines`).
    """
    sources = expand_paths(sources)
    k = min(top_k, len(categories))
    if k < 1:
        raise TransferkitError(f"--top-k must be at least 1, got {top_k}")
    results: list[dict] = [{} for _ in sources]
    with torch.inference_mode():
        for batch in iterate_batches(sources, transform, batch_size=batch_size, num_workers=num_workers, progress=progress):
            for index, error in batch.failures:
                results[index] = {"image": _name(sources[index]), "error": error}
            if batch.images is None:
                continue
            probs, classes = torch.from_numpy(engine(batch.images)).softmax(dim=1).topk(k, dim=1)
            for row, index in enumerate(batch.indices):
                results[index] = {
                    "image": _name(sources[index]),
                    "top": [
                        {"class": int(c), "label": categories[int(c)], "probability": float(p)}
                        for p, c in zip(probs[row], classes[row])
                    ],
                }
    return results


def _name(source: ImageSource) -> str:
    return str(source) if not hasattr(source, "size") else f"<{type(source).__name__}>"


def predict(
    images: Sequence[ImageSource],
    model: str | Backbone = DEFAULT_MODEL,
    *,
    top_k: int = 5,
    weights: str | None = None,
    trust_pickle: bool = False,
    image_size: int | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool | str = False,
    engine: str = "auto",
) -> list[dict]:
    """Classify ``images`` (paths, folders or PIL images) into the backbone's ImageNet classes.

    ``engine``: torch, onnxruntime, or auto (ONNX Runtime on a CPU for 1,000 images or more).
    """
    backbone = model if isinstance(model, Backbone) else build_backbone(model, weights=weights, trust_pickle=trust_pickle)
    categories = backbone.spec.categories
    if categories is None or backbone.num_classes != len(categories):
        raise TransferkitError(
            f"{backbone.spec.name} has no ImageNet classifier to predict with; train a head with `transferkit train`"
        )
    sources = expand_paths(images)
    size = backbone.spec.check_image_size(image_size)
    key = f"{backbone.spec.name}-{backbone.weights_digest}-imagenet"
    return classify_batches(
        scoring_engine(engine, backbone, backbone, size, len(sources), key), sources, backbone.transform(image_size), categories,
        top_k=top_k, batch_size=batch_size, num_workers=num_workers, progress=progress,
    )  # fmt: skip
