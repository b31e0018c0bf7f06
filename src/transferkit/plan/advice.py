"""Which strategy fits the data, decided from measurements on the user's own images.

The teaching guide has four cases: small and similar to ImageNet -> a head on the last
layer's features; large and similar -> fine-tune; small and different -> features from an
earlier layer; large and different -> fine-tune throughout (or train from scratch).
transferkit measures both axes on a bounded sample: its size per class, and how similar it is
to ImageNet, by how confidently the pretrained classifier recognises the images and by
cross-validated linear probes on features of each stage, the last layer and raw pixels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from transferkit.core.backbones import DEFAULT_MODEL, build_backbone
from transferkit.core.errors import TransferkitError
from transferkit.plan.probes import linear_probe

LARGE_PER_CLASS = 1000  # images per class from which fine-tuning pays off
SIMILARITY_MARGIN = 0.01  # an earlier stage must beat the last layer by this much to count


@dataclass
class Advice:
    data: str
    model: str
    case: str  # "small-similar" | "large-similar" | "small-different" | "large-different"
    strategy: str
    layer: str
    image_size: int
    regularisation: dict
    evidence: dict
    reasons: list[str]
    command: str
    train_options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _probe(X: np.ndarray, y: np.ndarray, seed: int) -> float:
    """Cross-validated accuracy of the planner's linear probe (:func:`transferkit.plan.probes.linear_probe`)."""
    if int(np.bincount(y).min()) < 2:
        raise TransferkitError("advice needs at least 2 images of every class in the sample")
    return linear_probe(X, y, seed=seed)[1]


def _image_sizes(samples, limit: int = 50) -> tuple[int, int]:
    """Median width and height of up to ``limit`` images, read from headers only."""
    from PIL import Image

    sizes = []
    for sample in samples[:limit]:
        if isinstance(sample, np.ndarray):
            sizes.append((sample.shape[1], sample.shape[0]))
            continue
        try:
            with Image.open(sample) as image:
                sizes.append(image.size)
        except OSError:
            continue
    if not sizes:
        return 0, 0
    return int(np.median([w for w, _ in sizes])), int(np.median([h for _, h in sizes]))


def four_cases(median_per_class: int, probes: dict[str, float]) -> tuple[str, str]:
    """The teaching guide's case from the measurements, and the best earlier stage: large from
    LARGE_PER_CLASS images a class (median); different from ImageNet where an earlier stage's
    linear probe beats the last layer's (``probes["penultimate"]``) by SIMILARITY_MARGIN."""
    best_stage = max((k for k in probes if k != "penultimate"), key=probes.get, default="penultimate")
    similar = not (best_stage != "penultimate" and probes[best_stage] > probes["penultimate"] + SIMILARITY_MARGIN)
    large = median_per_class >= LARGE_PER_CLASS
    return f"{'large' if large else 'small'}-{'similar' if similar else 'different'}", best_stage


def decide(median_per_class: int, probes: dict[str, float], pixels: float, confidence: float, n_train: int, n_sample: int):
    """The four-case guide applied to the measurements: (case, strategy, layer, reasons)."""
    case, best_stage = four_cases(median_per_class, probes)
    large, similar = case.startswith("large"), case.endswith("similar")
    reasons = [
        f"{n_train} training images, median {median_per_class} per class: {'large' if large else 'small'} (threshold {LARGE_PER_CLASS} per class)",
        f"linear probe on {n_sample} sampled images: last layer {probes['penultimate']:.1%}, best earlier stage {best_stage} {probes.get(best_stage, float('nan')):.1%}, raw pixels {pixels:.1%}",
        f"the pretrained network's mean top ImageNet probability on the sample: {confidence:.2f}",
        "the last layer's features fit this data as well as any earlier stage: similar to ImageNet" if similar
        else f"{best_stage} separates the classes better than the last layer: unlike ImageNet",
    ]
    if case == "small-similar":
        strategy, layer = "linear", "penultimate"
        reasons.append("small and similar: train a head on the last layer's cached features")
    elif case == "small-different":
        strategy, layer = "linear", best_stage
        reasons.append(f"small and different: a head on the earlier, more generic features of {best_stage}")
    elif case == "large-similar":
        strategy, layer = "finetune", "penultimate"
        reasons.append("large and similar: fine-tune the last layer groups at a lower learning rate")
    else:
        strategy, layer = "finetune", "penultimate"
        reasons.append("large and different: fine-tune the whole network (or compare with --strategy scratch)")
    return case, strategy, layer, reasons


def advise(
    data,
    *,
    model: str = DEFAULT_MODEL,
    pretrained: bool = True,
    weights: str | None = None,
    sample_per_class: int = 50,
    max_sample: int = 1000,
    image_sizes: Sequence[int] | None = None,
    cache_dir=None,
    seed: int = 0,
    progress: bool = True,
    trust_pickle: bool = False,
    allow_outside_root: bool = False,
) -> Advice:
    """Measure ``data`` (a DATA string or ImageDataset) and recommend a strategy, layer and size.

    ``weights`` is a weights file for ``model``, as in `train`; ``image_sizes`` are the input
    sizes tried (default 64, 128 and the backbone's own);
    ``trust_pickle`` and ``allow_outside_root`` are as in :func:`transferkit.core.data.load_data`.
    (With a time budget, the planner's dry run is :func:`transferkit.plan.auto.dry_run`.)
    """
    from transferkit.core.data import ImageDataset, load_data
    from transferkit.core.features import extract_features

    dataset = data if isinstance(data, ImageDataset) else load_data(str(data), seed=seed, trust_pickle=trust_pickle, allow_outside_root=allow_outside_root)
    if not isinstance(dataset, ImageDataset):
        raise TransferkitError(f"{data} holds precomputed features: advice needs images")
    train = dataset.train
    counts = np.bincount(train.labels, minlength=len(dataset.classes))
    per_class = max(2, min(sample_per_class, max_sample // len(dataset.classes)))
    sample = train.per_class(per_class, seed=seed)
    backbone = build_backbone(model, pretrained=pretrained, weights=weights, trust_pickle=trust_pickle)
    spec = backbone.spec
    width, height = _image_sizes(sample.samples)

    def features(layer: str, size: int | None, net=backbone):
        label = f"advise {net.spec.name} {layer} @{size or net.spec.input_size}" if progress else False
        return extract_features(sample.samples, sample.labels, net, data_fingerprint=sample.fingerprint(), layer=layer,
                                image_size=size, cache_dir=cache_dir, progress=label).usable()  # fmt: skip

    # Image size: the smallest that is within a point of the best, on the last layer's probe.
    tried = image_sizes or (64, 128, spec.input_size)
    candidates = [spec.input_size] if spec.fixed_input_size else sorted({s for s in tried if s >= spec.min_input_size})
    by_size = {}
    for size in candidates:
        X, y = features("penultimate", size)
        by_size[size] = _probe(X, y, seed)
    best_size_acc = max(by_size.values())
    image_size = min(s for s, acc in by_size.items() if acc >= best_size_acc - 0.01)

    X, y = features("penultimate", image_size)
    probes = {"penultimate": by_size[image_size]}
    for i in range(1, len(spec.stages) + 1):
        Xs, ys = features(f"stage{i}", image_size)
        probes[f"stage{i}"] = _probe(Xs, ys, seed)
    Xp, yp = features("penultimate", None, build_backbone("pixels", pretrained=False))
    pixels = _probe(Xp, yp, seed)
    import torch

    with torch.inference_mode():
        imagenet = backbone.classifier(torch.as_tensor(np.asarray(X))).softmax(1)
    confidence = float(imagenet.max(1).values.mean())

    median_per_class = int(np.median(counts))
    case, strategy, layer, reasons = decide(median_per_class, probes, pixels, confidence, len(train), len(y))
    large = case.startswith("large")
    regularisation = (
        {"dropout": 0.5, "weight_decay": 1e-3, "augment": "strong", "patience": 3} if not large
        else {"dropout": 0.2, "weight_decay": 1e-4, "augment": "light", "patience": 3}
    )
    options = {"model": model, "strategy": strategy, "image_size": image_size}
    if strategy == "finetune":
        options.update(regularisation, unfreeze="all" if case == "large-different" else "2", epochs=10)
    else:
        options["layer"] = layer
    flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
    evidence = {
        "train_images": len(train),
        "classes": len(dataset.classes),
        "median_per_class": median_per_class,
        "imbalance": float(counts.max() / max(counts.min(), 1)),
        "median_image_size": [width, height],
        "sample_images": int(len(y)),
        "imagenet_confidence": confidence,
        "probe_accuracy": {**probes, "pixels": pixels},
        "probe_accuracy_by_image_size": by_size,
    }
    if evidence["imbalance"] > 3:
        reasons.append(f"classes are imbalanced ({evidence['imbalance']:.0f}:1): add --balance weights")
        options["balance"] = "weights"
        flags += " --balance weights"
    if weights is not None:
        flags += f" --weights {weights}"
    return Advice(dataset.name, model, case, strategy, layer, image_size, regularisation, evidence, reasons,
                  f"transferkit train {data if isinstance(data, str) else dataset.name} {flags}", options)  # fmt: skip
