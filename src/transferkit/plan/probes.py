"""Measured augmentation decisions: whether the classes survive a mirror image, how much of an
image a crop may drop, each from a linear probe on the data's own features.

A linear probe (standardised logistic regression, C by cross-validation) is trained on the
training images' features and scored on the validation images as they are, on their mirror
images and on random crops of each scale.  A class whose accuracy collapses under mirroring (or
whose mirror images are taken for another class: "keep left" for "keep right") means the run
must not mirror: mirroring would teach it that one class looks like the other.  The smallest
crop scale whose accuracy stays within a tolerance of the whole image's is the least share of
the image a random crop may keep.  The evidence tables go into the run's report.

Which features: a network pretrained with mirroring (every ImageNet model) gives nearly
mirror-invariant pooled penultimate features, and a probe on them cannot see what mirroring
does. Measured on generated arrows pointing left or right at random positions, sizes and colours,
with EfficientNet-Lite0 at 64 px: penultimate 67% (mirrored 40%), stage3 98% (mirrored 4%).
So ``layer="best"`` probes the penultimate layer and every stage, and tests mirroring on the
one that tells the classes apart best.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode, v2

from transferkit.core.errors import TransferkitError

C_GRID = (0.01, 0.1, 1.0)
CROP_SCALES = (0.35, 0.5, 0.75)  # 0.35: the lower end of `--augment light`'s random crops
MIN_DROP = 0.2  # a class breaks under mirroring when its accuracy falls by this much or more ...
ALPHA = 0.05  # ... and a one-sided sign test on its paired images says the fall is no accident
PAIR_MIN_IMAGES = 5  # validation images of each class, at least, to decide that mirroring is harmless
CROP_TOLERANCE = 0.05


def linear_probe(X: np.ndarray, y: np.ndarray, *, seed: int = 0, c_grid: Sequence[float] = C_GRID):
    """A standardised logistic regression fitted on ``X, y``, its C the best of ``c_grid`` by
    stratified cross-validation (3 folds, fewer for small classes); returns (pipeline, CV accuracy)."""
    from sklearn.linear_model import LogisticRegression

    return _cross_validated(X, y, lambda c: LogisticRegression(C=c, max_iter=1000), c_grid, seed)


def rbf_probe(X: np.ndarray, y: np.ndarray, *, seed: int = 0, c_grid: Sequence[float] = (1.0, 10.0)):
    """:func:`linear_probe` with a standardised RBF SVM (``gamma="scale"``): raw pixels of small,
    centred images (digits) are separated by it where a linear model falls short."""
    from sklearn.svm import SVC

    return _cross_validated(X, y, lambda c: SVC(C=c), c_grid, seed)


def _cross_validated(X: np.ndarray, y: np.ndarray, model, c_grid: Sequence[float], seed: int):
    """``StandardScaler`` + ``model(C)`` for the best C of ``c_grid`` (the heads' C search,
    :func:`~transferkit.core.heads.pick_c`), fitted on all of ``X, y``: (pipeline, CV accuracy)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from transferkit.core.heads import pick_c

    y = np.asarray(y)
    counts = np.bincount(y)
    if int(min(3, counts[counts > 0].min())) < 2 or len(np.flatnonzero(counts)) < 2:
        raise TransferkitError("a probe needs at least 2 classes with at least 2 images each: give more images per class")
    with one_blas_thread():
        pipeline = make_pipeline(StandardScaler(), model(c_grid[0]))
        scaled = pipeline[0].fit_transform(X)
        # (one C in the grid still gets its cross-validated accuracy: a learning curve's smaller shares)
        best, score = pick_c(pipeline[-1], scaled, np.unique(y, return_inverse=True)[1], list(c_grid), len(y), seed)
        pipeline[-1].set_params(C=best).fit(scaled, y)
        return pipeline, float(score)


def one_blas_thread():
    """BLAS on one thread for these small fits: with two threads on two cores a probe's logistic
    regression took 5-10x longer (1.05 s against 0.20 s on 1,000 x 1,280 features), as the heads found."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def learning_curve(X: np.ndarray, y: np.ndarray, *, shares: Sequence[float] = (0.25, 0.5, 1.0), seed: int = 0, probe=linear_probe):
    """Cross-validated probe accuracy (``probe``: :func:`linear_probe` or :func:`rbf_probe`) on
    growing stratified shares of ``X, y``: the (sizes, accuracies) that
    :func:`transferkit.plan.planner.extrapolate_accuracy` extends to the full training set, and the
    probe fitted on the largest share.  C is chosen by cross-validation once, on the largest
    share, and kept for the smaller ones (a third of the fits: a small time budget cannot spare
    them).  Every share keeps at least two images of each class."""
    rng = np.random.default_rng(seed)
    order = {c: rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)}
    rows_of = {}
    for share in sorted(shares):
        rows = np.sort(np.concatenate([members[: max(2, round(share * len(members)))] for members in order.values()]))
        rows_of.setdefault(len(rows), rows)  # a share that adds no image: the same point again
    *smaller, largest = rows_of.values()
    fitted, accuracy = probe(X[largest], y[largest], seed=seed)
    best_c = (fitted[-1].C,)
    accuracies = [probe(X[rows], y[rows], seed=seed, c_grid=best_c)[1] for rows in smaller]
    return list(rows_of), accuracies + [accuracy], fitted


@dataclass
class MirrorProbe:
    """Whether training may mirror images, the decision behind it and the per-class evidence."""

    mirror: bool
    accuracy: float  # the probe on the validation images
    mirrored_accuracy: float  # the same probe on their mirror images
    classes: list[dict] = field(default_factory=list)  # class, images, accuracy, mirrored_accuracy, mirrored_as, p_value, pair_p_value, breaks
    reasons: list[str] = field(default_factory=list)
    layer: str | None = None
    decision: str = "keep"  # "keep" (no class breaks, and the probe could have seen it), "off" (a class breaks), "undecided" (too little evidence)

    @property
    def broken(self) -> list[str]:
        return [row["class"] for row in self.classes if row["breaks"]]

    def table(self) -> str:
        """The per-class evidence as a Markdown table, the classes that break first."""
        lines = ["| class | images | accuracy | mirrored | mirror images taken for | breaks |", "|---|---:|---:|---:|---|---|"]
        for row in sorted(self.classes, key=lambda r: (not r["breaks"], r["mirrored_accuracy"] - r["accuracy"])):
            taken = f"{row['mirrored_as']} ({row['mirrored_as_share']:.0%})" if row["mirrored_as"] is not None else ""
            lines.append(f"| {row['class']} | {row['images']} | {row['accuracy']:.1%} | {row['mirrored_accuracy']:.1%} | {taken} | {'yes' if row['breaks'] else ''} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def mirror_invariance(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, X_val_mirrored: np.ndarray, y_val: np.ndarray,
                      classes: Sequence[str] | None = None, *, min_drop: float = MIN_DROP, alpha: float = ALPHA, seed: int = 0,
                      probe=None) -> MirrorProbe:  # fmt: skip
    """Train a linear probe on ``X_train`` (features of the original training images; or pass a
    fitted ``probe``), score it on the validation images' features ``X_val`` and on their mirror
    images' ``X_val_mirrored`` (row ``i`` is image ``i`` mirrored), class by class.

    Two tests, and a class breaks when either says so:

    - its accuracy: the mirrored accuracy is at least ``min_drop`` below the original's and a
      one-sided sign test on its images (right as they are and wrong mirrored, against the
      reverse) gives p < ``alpha``;
    - its partner (far stronger where classes are each other's mirror image, "keep left" and
      "keep right"): mirror images of a class taken for one other class, pooled over the pair in
      both directions, against the original images taken for it; a one-sided sign test at
      ``alpha`` divided by the number of classes (one partner tested per class), and at least
      ``min_drop`` of the pair's images moving to the partner.  Mirroring that merely blurs a
      class spreads its errors over many classes and does not pass.

    Mirroring stays on only when no class breaks and the probe could have seen one break: where
    it tells the classes apart only weakly, or has fewer than PAIR_MIN_IMAGES validation images
    of a class, the decision is "undecided" and mirroring is off, the safer side (a mirrored
    mirror-pair class is a wrong label; an unmirrored symmetric class only loses an augmentation).
    """
    from scipy.stats import binomtest

    y_val = np.asarray(y_val)
    if len(X_val) != len(X_val_mirrored) or len(X_val) != len(y_val):
        raise ValueError(f"X_val, X_val_mirrored and y_val must have one row per validation image, got {len(X_val)}, {len(X_val_mirrored)}, {len(y_val)}")
    if probe is None:
        probe, _ = linear_probe(np.asarray(X_train), np.asarray(y_train), seed=seed)
    predicted, predicted_mirrored = probe.predict(X_val), probe.predict(X_val_mirrored)
    names = list(classes) if classes is not None else [str(c) for c in range(int(max(y_val.max(), predicted.max(), predicted_mirrored.max())) + 1)]
    right, right_mirrored = predicted == y_val, predicted_mirrored == y_val
    present = np.unique(y_val)

    def moves(c: int, d: int) -> tuple[int, int]:
        """Images of class c that mirroring sends to d (and not there before), and the reverse."""
        mine = y_val == c
        return int(np.sum(mine & (predicted != d) & (predicted_mirrored == d))), int(np.sum(mine & (predicted == d) & (predicted_mirrored != d)))

    rows = []
    for c in present:
        mine = y_val == c
        lost, gained = int(np.sum(right[mine] & ~right_mirrored[mine])), int(np.sum(~right[mine] & right_mirrored[mine]))
        drop = (lost - gained) / int(mine.sum())
        p_value = float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue) if lost + gained else 1.0
        wrong = predicted_mirrored[mine & ~right_mirrored]
        taken_as, share, pair_p = None, 0.0, 1.0
        if len(wrong):
            values, counts = np.unique(wrong, return_counts=True)
            partner = int(values[np.argmax(counts)])
            taken_as, share = names[partner], float(counts.max() / mine.sum())
            there, back = moves(int(c), partner)
            if partner in present:  # the pair in both directions: a mirror pair sends each to the other
                there, back = there + moves(partner, int(c))[0], back + moves(partner, int(c))[1]
            pair_images = int(mine.sum() + np.sum(y_val == partner))
            if there + back and there >= min_drop * pair_images:
                pair_p = float(binomtest(there, there + back, 0.5, alternative="greater").pvalue)
        breaks = (drop >= min_drop and p_value < alpha) or pair_p < alpha / len(present)
        rows.append({"class": names[int(c)], "images": int(mine.sum()), "accuracy": float(right[mine].mean()), "mirrored_accuracy": float(right_mirrored[mine].mean()),
                     "mirrored_as": taken_as, "mirrored_as_share": share, "p_value": p_value, "pair_p_value": pair_p, "breaks": bool(breaks)})  # fmt: skip
    accuracy, mirrored = float(right.mean()), float(right_mirrored.mean())
    broken = [row for row in rows if row["breaks"]]
    reasons = [f"a linear probe trained on the original images: {accuracy:.1%} on {len(y_val)} validation images, {mirrored:.1%} on their mirror images"]
    chance = 1.0 / max(len(rows), 1)
    fewest = min(row["images"] for row in rows)
    if broken:
        decision = "off"
        named = ", ".join(f"{row['class']} ({row['accuracy']:.0%} -> {row['mirrored_accuracy']:.0%}" + (f", taken for {row['mirrored_as']})" if row["mirrored_as"] else ")") for row in broken)
        reasons.append(f"{len(broken)} of {len(rows)} classes do not survive a mirror image: {named}; no mirroring (and no --flip-tta)")
    elif accuracy < chance + 0.5 * (1 - chance) or fewest < PAIR_MIN_IMAGES:
        decision = "undecided"
        weak = f"the probe tells the classes apart only weakly ({accuracy:.1%}, chance {chance:.1%})" if accuracy < chance + 0.5 * (1 - chance) else \
            f"a class has only {fewest} validation images"  # fmt: skip
        reasons.append(f"undecided: {weak}, too little to see a class turn into another under mirroring; no mirroring, the safer side")
    else:
        decision = "keep"
        reasons.append(f"every class keeps its accuracy under mirroring and none is taken for another (p < {alpha}): mirroring kept")
    return MirrorProbe(decision == "keep", accuracy, mirrored, rows, reasons, decision=decision)


@dataclass
class CropProbe:
    """The least share of an image's area a random crop may keep, and the evidence."""

    min_scale: float  # 1.0: no crop keeps the accuracy
    accuracy: float  # the probe on the whole validation images
    by_scale: dict[float, float] = field(default_factory=dict)  # crop scale (share of the area) -> accuracy
    tolerance: float = CROP_TOLERANCE
    reasons: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = ["| crop (share of area) | accuracy | within tolerance |", "|---:|---:|---|"]
        lines.append(f"| whole image | {self.accuracy:.1%} | |")
        for scale, accuracy in sorted(self.by_scale.items()):
            lines.append(f"| {scale:.2f} | {accuracy:.1%} | {'yes' if accuracy >= self.accuracy - self.tolerance else 'no'} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def crop_tolerance(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, crops: Mapping[float, np.ndarray], *,
                   tolerance: float = CROP_TOLERANCE, seed: int = 0, probe=None) -> CropProbe:  # fmt: skip
    """The probe trained on the whole training images, scored on the whole validation images and
    on ``crops[scale]``, the features of a random crop of each validation image (row ``i`` is a
    crop of image ``i``) keeping ``scale`` of its area.  The answer is the smallest scale at and
    above which every scale's accuracy stays within ``tolerance`` of the whole images' (so one
    noisy small scale cannot jump over a larger one that failed).

    The probe never saw crops, so a crop that keeps the class's evidence but zooms in can still
    cost it accuracy: the answer errs towards larger crops, the safe side for augmentation.
    """
    y_val = np.asarray(y_val)
    if probe is None:
        probe, _ = linear_probe(np.asarray(X_train), np.asarray(y_train), seed=seed)
    accuracy = float(probe.score(X_val, y_val))
    by_scale = {float(scale): float(probe.score(features, y_val)) for scale, features in crops.items()}
    min_scale = 1.0
    for scale in sorted(by_scale, reverse=True):
        if by_scale[scale] < accuracy - tolerance:
            break
        min_scale = scale
    if min_scale < 1.0:
        reason = f"crops keeping {min_scale:.0%} of the area or more stay within {tolerance:.0%} of the whole images' {accuracy:.1%}"
    else:
        reason = f"every crop tried loses more than {tolerance:.0%} of the whole images' {accuracy:.1%}: no cropping"
    failed = [s for s in sorted(by_scale) if s < min_scale]
    if failed:
        reason += f" ({', '.join(f'{s:.0%}: {by_scale[s]:.1%}' for s in failed)})"
    return CropProbe(min_scale, accuracy, by_scale, tolerance, [reason])


# ---------------------------------------------------------------------------------------------
# From images: the views (as they are, mirrored, cropped) through a backbone


def views(spec, size: int, scales: Sequence[float]) -> dict[str, v2.Compose]:
    """The preprocessing of each view: the evaluation pipeline, the same on the mirror image, and
    random crops of a fixed share of the area (aspect 3:4 to 4:3, as the training crops) resized
    to the input size."""
    whole = spec.transform(size)
    out = {"original": whole, "mirrored": v2.Compose([v2.RandomHorizontalFlip(p=1.0), whole])}
    mode = InterpolationMode(spec.interpolation)
    for scale in scales:
        crop = v2.RandomResizedCrop(size, scale=(scale, scale), ratio=(3 / 4, 4 / 3), interpolation=mode, antialias=True)
        out[f"crop{scale}"] = v2.Compose([v2.ToImage(), crop, *spec.scaling()])
    return out


def layer_features(backbone, samples: Sequence, transform, layers: Sequence[str], *, batch_size: int = 32, num_workers: int | None = None,
                   seed: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """Features of ``samples`` through ``transform`` at each of ``layers`` ("penultimate" and
    "stageN", pooled as :meth:`Backbone.features` pools them), all from one forward pass.  Random
    transforms draw from ``seed``.  Every image must decode: probes run on a checked sample."""
    from transferkit.core.loader import iterate_batches
    from transferkit.core.spec import parse_layer

    stages = {layer: parse_layer(layer, backbone.spec)[1] for layer in layers if layer != "penultimate"}
    # Channels-last spares oneDNN its layout conversions: Lite0 at 224 px ran 42 images/s against 24 (2 cores).
    layout = torch.channels_last if backbone.spec.channels_last else torch.contiguous_format
    backbone = backbone.eval().to(memory_format=layout)
    captured: dict[str, torch.Tensor] = {}
    handles = [backbone.stage_module(n).register_forward_hook(lambda _m, _i, out, layer=layer: captured.__setitem__(layer, out)) for layer, n in stages.items()]
    out: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}
    torch.manual_seed(seed)  # the loader's workers draw their seeds from it: the same crops every time
    try:
        with torch.inference_mode():
            for batch in iterate_batches(samples, transform, batch_size=batch_size, num_workers=num_workers):
                if batch.failures:
                    raise TransferkitError(f"probe image {batch.failures[0][0]} could not be read ({batch.failures[0][1]}): probe a sample of readable images")
                penultimate = backbone.forward_features(batch.images.contiguous(memory_format=layout))
                for layer in layers:
                    pooled = penultimate if layer == "penultimate" else F.adaptive_avg_pool2d(captured[layer], 1).flatten(1)
                    out[layer].append(pooled.float().numpy())
    finally:
        for handle in handles:
            handle.remove()
    return {layer: np.concatenate(parts) if parts else np.zeros((0, 0), np.float32) for layer, parts in out.items()}


@dataclass
class AugmentationProbe:
    """What the probes decided for the run's augmentation, and their evidence."""

    mirror: MirrorProbe
    crops: CropProbe | None
    layer: str  # the layer the probes ran on
    layer_accuracy: dict[str, float]  # validation accuracy of a probe on each layer tried
    image_size: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def report(self) -> str:
        """Markdown for the run's report."""
        parts = [f"Probes on {self.layer} at {self.image_size} px ({self.seconds:.1f} s): " + "; ".join(self.mirror.reasons), "", self.mirror.table()]
        if self.crops is not None:
            parts += ["", "; ".join(self.crops.reasons), "", self.crops.table()]
        return "\n".join(parts)


def measure_augmentation(backbone, train, val, *, image_size: int | None = None, layer: str = "best", scales: Sequence[float] = CROP_SCALES,
                         tolerance: float = CROP_TOLERANCE, min_drop: float = MIN_DROP, alpha: float = ALPHA, batch_size: int = 32,
                         num_workers: int | None = None, seed: int = 0) -> AugmentationProbe:  # fmt: skip
    """Probe ``backbone`` (a :class:`~transferkit.core.backbones.Backbone`, pretrained) on ``train`` and
    ``val`` (:class:`~transferkit.core.data.LabelledImages`, a sample of each: a few dozen images a
    class): the mirror test (:func:`mirror_invariance`) and, with ``scales``, the crop test
    (:func:`crop_tolerance`).  ``layer="best"``: the penultimate layer and every stage are
    probed, and the tests use the one with the best validation accuracy (see the module's note).
    """
    started = time.perf_counter()
    spec = backbone.spec
    size = spec.check_image_size(image_size)
    layers = ["penultimate", *(f"stage{i}" for i in range(1, len(spec.stages) + 1))] if layer == "best" else [layer]
    pipelines = views(spec, size, scales)
    options = {"batch_size": batch_size, "num_workers": num_workers, "seed": seed}
    train_features = layer_features(backbone, train.samples, pipelines["original"], layers, **options)
    val_features = layer_features(backbone, val.samples, pipelines["original"], layers, **options)
    probes, layer_accuracy = {}, {}
    for name in layers:
        probes[name], _ = linear_probe(train_features[name], train.labels, seed=seed)
        layer_accuracy[name] = float(probes[name].score(val_features[name], val.labels))
    chosen = max(layers, key=lambda name: (layer_accuracy[name], name == "penultimate"))
    probe = probes[chosen]
    mirrored = layer_features(backbone, val.samples, pipelines["mirrored"], [chosen], **options)[chosen]
    mirror = mirror_invariance(None, None, val_features[chosen], mirrored, val.labels, val.classes, min_drop=min_drop, alpha=alpha, probe=probe)
    mirror.layer = chosen
    crops = None
    if scales:
        cropped = {scale: layer_features(backbone, val.samples, pipelines[f"crop{scale}"], [chosen], **options)[chosen] for scale in scales}
        crops = crop_tolerance(None, None, val_features[chosen], val.labels, cropped, tolerance=tolerance, probe=probe)
    return AugmentationProbe(mirror, crops, chosen, layer_accuracy, size, time.perf_counter() - started)


__all__ = [
    "AugmentationProbe", "CropProbe", "MirrorProbe", "crop_tolerance", "layer_features", "learning_curve", "linear_probe", "measure_augmentation",
    "mirror_invariance", "rbf_probe",
]  # fmt: skip
