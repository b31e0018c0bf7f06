"""Measured augmentation decisions: mirror pairs turn mirroring off, mirror-symmetric classes keep it,
crops keep the largest share of accuracy they can."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from transferkit.core.backbones import build_backbone
from transferkit.core.data import LabelledImages
from transferkit.plan.probes import crop_tolerance, layer_features, learning_curve, linear_probe, measure_augmentation, mirror_invariance


def _colours(rng, polarity: bool):
    """A light ground and a dark figure (``polarity``), or any two colours far apart."""
    if polarity:
        return tuple(int(v) for v in rng.integers(150, 256, 3)), tuple(int(v) for v in rng.integers(0, 100, 3))
    ground = rng.integers(0, 256, 3)
    return tuple(int(v) for v in ground), tuple(int(v) for v in (ground + 128) % 256)


def arrow(rng, left: bool, size: int, jitter: float, polarity: bool = True) -> Image.Image:
    """An arrow pointing right (or, mirrored, left) at a random position, length, thickness and colour."""
    ground, figure = _colours(rng, polarity)
    image = Image.new("RGB", (size, size), ground)
    draw = ImageDraw.Draw(image)
    length = rng.uniform(0.5, 0.85) * size
    shaft, head = length * rng.uniform(0.15, 0.3), length * rng.uniform(0.4, 0.6)
    cx, cy = size / 2 + rng.uniform(-jitter, jitter, 2) * size
    x0, x1 = cx - length / 2, cx + length / 2
    neck = x1 - 0.8 * head
    draw.rectangle([x0, cy - shaft / 2, neck, cy + shaft / 2], fill=figure)
    draw.polygon([(neck, cy - head / 2), (x1, cy), (neck, cy + head / 2)], fill=figure)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if left else image


def shape(rng, circle: bool, size: int, jitter: float, polarity: bool = True) -> Image.Image:
    """A circle or a square (both their own mirror images) at a random position, size and colour."""
    ground, figure = _colours(rng, polarity)
    image = Image.new("RGB", (size, size), ground)
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.15, 0.3) * size
    cx, cy = size / 2 + rng.uniform(-jitter, jitter, 2) * size
    (draw.ellipse if circle else draw.rectangle)([cx - r, cy - r, cx + r, cy + r], fill=figure)
    return image


def generated(kind: str, n: int, seed: int, *, size: int = 32, jitter: float = 0.1, polarity: bool = True) -> LabelledImages:
    draw, classes = (arrow, ["right", "left"]) if kind == "arrows" else (shape, ["square", "circle"])
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = np.stack([np.asarray(draw(rng, bool(c), size, jitter, polarity)) for c in labels])
    return LabelledImages(images, labels, classes)


# 30 classes: 22 glyphs that are their own mirror image, and 4 asymmetric ones with their mirror
# images as 4 more classes (F and a mirrored F, ...): the case of a few mirror pairs among many.
SYMMETRIC_GLYPHS = list("AHIMOTUVWXY80+=^ox#*:")
PAIRED_GLYPHS = list("FLRJ")


def glyph_image(rng, text: str, mirrored: bool, size: int) -> Image.Image:
    """``text`` drawn at a random position, size and colour (polarity kept: dark on light), mirrored on request."""
    from PIL import ImageFont

    ground, figure = _colours(rng, True)
    image = Image.new("RGB", (size, size), ground)
    font = ImageFont.load_default(size=int(size * rng.uniform(0.5, 0.75)))
    left, top, right, bottom = ImageDraw.Draw(image).textbbox((0, 0), text, font=font)
    x = (size - (right - left)) / 2 - left + rng.uniform(-0.12, 0.12) * size
    y = (size - (bottom - top)) / 2 - top + rng.uniform(-0.12, 0.12) * size
    ImageDraw.Draw(image).text((x, y), text, fill=figure, font=font)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if mirrored else image


def glyphs(per_class: int, seed: int, size: int = 64) -> LabelledImages:
    classes = [(g, False) for g in SYMMETRIC_GLYPHS + ["square"]] + [(g, m) for g in PAIRED_GLYPHS for m in (False, True)]
    names = [f"{g}{' mirrored' if m else ''}" for g, m in classes]
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes)), per_class)
    images = []
    for label in labels:
        text, mirrored = classes[label]
        images.append(np.asarray(glyph_image(rng, "\u25a0" if text == "square" else text, mirrored, size)))
    return LabelledImages(np.stack(images), labels, names)


@pytest.mark.slow  # the embedded Lite0 on 1,200 images at 64 px
def test_four_mirror_pairs_among_thirty_classes_turn_mirroring_off(lite0):
    """20 validation images a class: the pair test names the four pairs and nothing else."""
    result = measure_augmentation(lite0, glyphs(20, 0), glyphs(20, 1), image_size=64, scales=(), num_workers=0)
    mirror = result.mirror
    assert mirror.decision == "off" and not mirror.mirror
    paired = {f"{g}{suffix}" for g in PAIRED_GLYPHS for suffix in ("", " mirrored")}
    assert set(mirror.broken) <= paired and len(set(mirror.broken)) >= 6, mirror.table()
    for row in mirror.classes:
        if row["breaks"]:
            partner = row["class"].removesuffix(" mirrored") if row["class"].endswith(" mirrored") else row["class"] + " mirrored"
            assert row["mirrored_as"] == partner, row


@pytest.mark.slow
def test_thirty_symmetric_classes_keep_mirroring(lite0):
    """The same glyphs with the asymmetric ones replaced by more symmetric ones: mirroring kept."""
    train, val = glyphs(20, 0), glyphs(20, 1)
    keep = np.isin(train.labels, range(len(SYMMETRIC_GLYPHS) + 1))
    result = measure_augmentation(lite0, train.subset(np.flatnonzero(keep)), val.subset(np.flatnonzero(np.isin(val.labels, range(len(SYMMETRIC_GLYPHS) + 1)))),
                                  image_size=64, scales=(), num_workers=0)  # fmt: skip
    assert result.mirror.decision == "keep" and result.mirror.mirror and not result.mirror.broken, result.mirror.table()


@pytest.fixture(scope="module")
def pixels():
    return build_backbone("pixels", pretrained=False)


# --------------------------------------------------------------------------- from images, a cheap extractor


def test_mirror_pairs_turn_mirroring_off(pixels):
    """Arrows pointing left and right: each class's mirror image is the other class. Raw 16 px pixels
    tell them apart (90% here); random-init LeNet and ResNet-18 pooled features do not (about 50%)."""
    result = measure_augmentation(pixels, generated("arrows", 120, 0), generated("arrows", 60, 1), scales=(), num_workers=0)
    mirror = result.mirror
    assert mirror.accuracy >= 0.8 and mirror.mirrored_accuracy <= 0.3
    assert not mirror.mirror and sorted(mirror.broken) == ["left", "right"]
    partners = {row["class"]: row["mirrored_as"] for row in mirror.classes}
    assert partners == {"right": "left", "left": "right"}
    assert "no mirroring" in " ".join(mirror.reasons)
    assert "| right |" in mirror.table() and "left (" in mirror.table()
    assert result.crops is None and result.layer == "penultimate"


def test_mirror_symmetric_classes_keep_mirroring(pixels):
    result = measure_augmentation(pixels, generated("shapes", 120, 0), generated("shapes", 60, 1), scales=(), num_workers=0)
    assert result.mirror.accuracy >= 0.8
    assert result.mirror.mirror and not result.mirror.broken
    assert "mirroring kept" in " ".join(result.mirror.reasons)


def test_crop_probe_from_images_reports_every_scale(pixels):
    result = measure_augmentation(pixels, generated("shapes", 80, 0), generated("shapes", 40, 1), scales=(0.5, 0.75), num_workers=0)
    crops = result.crops
    assert set(crops.by_scale) == {0.5, 0.75} and all(0 <= a <= 1 for a in crops.by_scale.values())
    assert crops.min_scale in (0.5, 0.75, 1.0)
    # raw pixels are not translation invariant: a crop that zooms in moves every shape, and the probe says so
    assert crops.by_scale[0.5] < crops.accuracy - crops.tolerance and crops.min_scale == 1.0
    assert "no cropping" in crops.reasons[0] and "| 0.50 |" in crops.table()
    assert "Probes on penultimate" in result.report()


def test_layer_features_are_the_backbones_own():
    """One forward pass with hooks gives what Backbone.features gives layer by layer."""
    lenet = build_backbone("lenet", pretrained=False)
    images = generated("shapes", 10, 0).samples
    got = layer_features(lenet, images, lenet.transform(), ["penultimate", "stage1", "stage2"], batch_size=4, num_workers=0)
    x = torch.stack([lenet.transform()(Image.fromarray(image)) for image in images])
    with torch.inference_mode():
        for layer in ("penultimate", "stage1", "stage2"):
            np.testing.assert_allclose(got[layer], lenet.features(x, layer).numpy(), rtol=1e-5, atol=1e-6)


def test_random_crops_are_the_same_every_time(pixels):
    from transferkit.plan.probes import views

    view = views(pixels.spec, 16, (0.5,))["crop0.5"]
    images = generated("shapes", 8, 0).samples
    first = layer_features(pixels, images, view, ["penultimate"], num_workers=0, seed=1)["penultimate"]
    again = layer_features(pixels, images, view, ["penultimate"], num_workers=0, seed=1)["penultimate"]
    other = layer_features(pixels, images, view, ["penultimate"], num_workers=0, seed=2)["penultimate"]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


# --------------------------------------------------------------------------- the decisions, on synthetic features


def _blobs(centres: np.ndarray, n: int, rng, noise: float = 0.3):
    labels = np.arange(n) % len(centres)
    return centres[labels] + noise * rng.standard_normal((n, centres.shape[1])), labels


def test_mirror_invariance_names_the_classes_that_turn_into_each_other():
    """Three classes: 'circle' is its own mirror image, 'keep left' and 'keep right' are each other's."""
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 3
    X, y = _blobs(centres, 300, rng)
    X_val, y_val = _blobs(centres, 150, rng)
    swap = np.array([0, 2, 1])  # the mirror image of class c looks like class swap[c]
    X_mirrored = centres[swap[y_val]] + 0.3 * rng.standard_normal(X_val.shape)
    result = mirror_invariance(X, y, X_val, X_mirrored, y_val, ["circle", "keep left", "keep right"])
    assert not result.mirror and sorted(result.broken) == ["keep left", "keep right"]
    rows = {row["class"]: row for row in result.classes}
    assert rows["keep left"]["mirrored_as"] == "keep right" and rows["keep left"]["mirrored_as_share"] > 0.9
    assert not rows["circle"]["breaks"] and rows["circle"]["mirrored_accuracy"] > 0.9
    assert "2 of 3 classes" in result.reasons[1] and "taken for keep right" in result.reasons[1]


def test_mirror_invariance_keeps_mirroring_when_the_mirror_images_look_alike():
    rng = np.random.default_rng(1)
    centres = np.eye(4) * 3
    X, y = _blobs(centres, 200, rng)
    X_val, y_val = _blobs(centres, 100, rng)
    X_mirrored = X_val + 0.3 * rng.standard_normal(X_val.shape)
    result = mirror_invariance(X, y, X_val, X_mirrored, y_val)
    assert result.mirror and result.broken == [] and [row["class"] for row in result.classes] == ["0", "1", "2", "3"]


def test_a_small_noisy_drop_is_not_a_break():
    """A class that loses a few images under mirroring by chance keeps mirroring: a break needs a
    20-point fall that a sign test cannot put down to chance."""
    rng = np.random.default_rng(2)
    centres = np.eye(2) * 3
    X, y = _blobs(centres, 100, rng)
    X_val, y_val = _blobs(centres, 20, rng)
    X_mirrored = X_val.copy()
    X_mirrored[:2] = centres[1 - y_val[:2]]  # two of twenty mirror images misread
    assert mirror_invariance(X, y, X_val, X_mirrored, y_val).mirror


def test_mirror_invariance_refuses_rows_that_do_not_match():
    X = np.zeros((4, 2))
    with pytest.raises(ValueError, match="one row per validation image"):
        mirror_invariance(X, np.array([0, 1, 0, 1]), X, X[:3], np.array([0, 1, 0, 1]))


def test_crop_tolerance_gives_the_smallest_scale_within_tolerance():
    rng = np.random.default_rng(3)
    centres = np.eye(3) * 3
    X, y = _blobs(centres, 300, rng)
    X_val, y_val = _blobs(centres, 150, rng)
    kept = X_val + 0.1 * rng.standard_normal(X_val.shape)  # a crop that keeps what tells the classes apart
    lost = rng.standard_normal(X_val.shape) * 3  # one that cuts it off
    result = crop_tolerance(X, y, X_val, y_val, {0.35: lost, 0.5: kept, 0.75: kept})
    assert result.min_scale == 0.5 and result.by_scale[0.35] < 0.6
    assert "50%" in result.reasons[0] and "35%" in result.reasons[0]
    # a small scale that passes by luck cannot jump over a larger one that failed
    assert crop_tolerance(X, y, X_val, y_val, {0.35: kept, 0.5: lost, 0.75: kept}).min_scale == 0.75
    assert crop_tolerance(X, y, X_val, y_val, {0.35: lost, 0.5: lost, 0.75: lost}).min_scale == 1.0


def test_linear_probe_and_learning_curve():
    rng = np.random.default_rng(4)
    X, y = _blobs(np.eye(3) * 2, 240, rng, noise=1.0)
    probe, accuracy = linear_probe(X, y)
    assert 0.6 < accuracy <= 1.0 and probe.predict(X[:5]).shape == (5,)
    sizes, accuracies, _ = learning_curve(X, y, shares=(0.25, 0.5, 1.0))
    assert sizes == [60, 120, 240] and all(0 <= a <= 1 for a in accuracies)
    from transferkit.core.errors import TransferkitError

    with pytest.raises(TransferkitError, match="at least 2 classes"):
        linear_probe(X[:3], np.array([0, 0, 0]))


# --------------------------------------------------------------------------- the embedded network


@pytest.mark.slow
def test_lite0_probe_finds_the_layer_that_sees_mirroring(lite0):
    """Arrows and shapes at random positions, sizes and colours, 48 px, through the real
    EfficientNet-Lite0 at 64 px: its pooled penultimate features are nearly mirror-invariant
    (ImageNet training mirrors), so the probe must pick an earlier stage to see the arrows' direction."""
    torch.manual_seed(0)
    arrows = measure_augmentation(lite0, generated("arrows", 150, 0, size=48, jitter=0.2, polarity=False),
                                  generated("arrows", 60, 1, size=48, jitter=0.2, polarity=False), image_size=64, scales=(), num_workers=0)  # fmt: skip
    assert arrows.layer.startswith("stage") and arrows.layer_accuracy[arrows.layer] > arrows.layer_accuracy["penultimate"]
    assert arrows.mirror.accuracy >= 0.9 and not arrows.mirror.mirror
    shapes = measure_augmentation(lite0, generated("shapes", 80, 0, size=48, jitter=0.2, polarity=False),
                                  generated("shapes", 40, 1, size=48, jitter=0.2, polarity=False), image_size=64, scales=(), num_workers=0)  # fmt: skip
    assert shapes.mirror.accuracy >= 0.9 and shapes.mirror.mirror
