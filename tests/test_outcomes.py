"""Outcomes, not only mechanics: every strategy and head, on real images with the embedded
pretrained EfficientNet-Lite0, on two classes and on several, learns; the saved run reproduces
the accuracy it recorded; and `classify` agrees with `evaluate`.

A green suite once hid that `train --strategy linear` on two classes gave every image the first
class (a binary logistic regression folded into one output). Here each (data, strategy) cell
must reach a floor measured once and written beside it (docs/outcomes.md has the table): a
safe margin below the measurement and well above what a model that answers one class scores.

Data: scikit-learn's digits (DATA "digits", 10 classes, cut to a few images per class), two of
its digits written as PNG files, and two and three classes of random crops of scikit-image's
sample photos (conftest.random_crops), as ROOT/{train,val,test}/<class>/*.png. One feature cache
per dataset serves all its heads.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import transferkit
from transferkit.core.data import ImageDataset, load_data

# Every run: 64 px inputs, images decoded in the training process (forking loader workers for a
# few dozen images costs more than it saves), scored with PyTorch.  End to end: batches of 8, so
# a few dozen images still make enough steps, and no augmentation (a mirrored 3 is no 3; the
# photo crops are augmented already).  Full fine-tuning trains the head alone for 2 of its 4
# epochs: after one, unfreezing everything at 1e-3 threw the digits' features away (val
# accuracy 0.52 -> 0.30), and the best checkpoint was the head's.
COMMON = {"image_size": 64, "num_workers": 0, "engine": "torch"}
END_TO_END = {"lr": 1e-2, "batch_size": 8, "augment": "none"}
STRATEGIES = {
    "linear": {"strategy": "linear"},
    "svm-linear": {"strategy": "svm", "kernel": "linear"},
    "svm-rbf": {"strategy": "svm", "kernel": "rbf"},
    "mlp": {"strategy": "mlp"},
    "knn": {"strategy": "knn"},
    "frozen": {"strategy": "frozen", "epochs": 5, **END_TO_END},
    "finetune": {"strategy": "finetune", "epochs": 4, "head_epochs": 2, **END_TO_END},
    "finetune-cached": {"strategy": "finetune", "unfreeze": "2", "cache_frozen": True, "epochs": 4, **END_TO_END},
    "scratch": {"strategy": "scratch", "epochs": 10, **END_TO_END},
    # A budget no machine runs out of on these few dozen images: the plan's choice (and so the
    # accuracy asserted) must not depend on how fast the machine is.
    "auto": {"strategy": "auto", "time_budget": "1h"},
}
# The seed of every run's initialisation and shuffles: the floors hold for each of
# benchmarks/outcome_floors.py's seeds; `TRANSFERKIT_TEST_SEED=3 pytest -m slow tests/test_outcomes.py` tries another.
SEED = int(os.environ.get("TRANSFERKIT_TEST_SEED", "0"))
SPLITS = {"train": 24, "val": 12, "test": 24}  # images per class
# Crops of 1-5% of a photo's surface: larger ones made the photos too easy (every pretrained
# strategy at 100%), textures alone (grass against gravel) too hard for a scratch network.
PHOTO_CROP_AREA = (0.01, 0.05)
DIGITS10_SPLITS = {"train": 10, "val": 5, "test": 8}  # the MLP head's 500 steps cost in proportion to the training images

# (data, strategy) -> (floor, worst and best of min(val, test) over seeds 0-4): the run must reach
# the floor on both splits.  Measured 2026-12-04 by benchmarks/outcome_floors.py (torch 2.14.1, a
# 2-core AMD EPYC; each seed repeats exactly there), the seeds' values in the comment.  Each floor
# is 0.10 under the worst seed for a head on features (a convex fit), 0.15 under it end to end
# (a few epochs grow the last bits in which CPUs differ), and never under 1/classes + 0.15, the
# most a model that answers one class scores on these balanced splits plus a margin.  Scratch
# sits at that bound: from random weights, another CPU gave digits10 0.2875 where this one gives
# 0.48 with the same seed; on digits10 (10 images a class) its seeds reach 0.31-0.56, so its floor
# is twice chance (0.20; 80 test images make that p < 0.001), the one cell 0.10 above 1/classes.  Val / test images per class: digits10 5 / 8, the others 12 / 24.
FLOORS = {
    "digits10": {
        "linear": (0.70, 0.8375, 0.8625),  # 5 seeds: 0.863 0.863 0.863 0.863 0.838
        "svm-linear": (0.70, 0.8125, 0.8250),  # 5 seeds: 0.825 0.825 0.825 0.825 0.812
        "svm-rbf": (0.50, 0.6125, 0.6125),  # 5 seeds: 0.613 0.613 0.613 0.613 0.613
        "mlp": (0.70, 0.8250, 0.8500),  # 5 seeds: 0.850 0.838 0.825 0.838 0.838
        "knn": (0.55, 0.6875, 0.6875),  # 5 seeds: 0.688 0.688 0.688 0.688 0.688
        "frozen": (0.60, 0.7625, 0.8375),  # 5 seeds: 0.800 0.838 0.800 0.762 0.762
        "finetune": (0.45, 0.6375, 0.8250),  # 5 seeds: 0.825 0.680 0.637 0.650 0.738
        "finetune-cached": (0.55, 0.7200, 0.8250),  # 5 seeds: 0.760 0.720 0.787 0.740 0.825
        "scratch": (0.20, 0.3125, 0.5625),  # 5 seeds: 0.480 0.487 0.420 0.562 0.312
        "auto": (0.70, 0.8625, 0.9600),  # 5 seeds: 0.863 0.950 0.950 0.950 0.960
    },
    "digits2": {
        "linear": (0.65, 0.7917, 0.8750),  # 5 seeds: 0.875 0.875 0.792 0.792 0.875
        "svm-linear": (0.65, 0.7917, 0.7917),  # 5 seeds: 0.792 0.792 0.792 0.792 0.792
        "svm-rbf": (0.65, 0.7500, 0.7917),  # 5 seeds: 0.750 0.750 0.750 0.792 0.750
        "mlp": (0.80, 0.9167, 0.9167),  # 5 seeds: 0.917 0.917 0.917 0.917 0.917
        "knn": (0.80, 0.9167, 0.9167),  # 5 seeds: 0.917 0.917 0.917 0.917 0.917
        "frozen": (0.65, 0.8333, 0.8750),  # 5 seeds: 0.875 0.833 0.875 0.854 0.833
        "finetune": (0.65, 0.7917, 0.9167),  # 5 seeds: 0.917 0.833 0.792 0.854 0.792
        "finetune-cached": (0.65, 0.7917, 0.9167),  # 5 seeds: 0.917 0.833 0.792 0.854 0.896
        "scratch": (0.65, 0.8333, 0.9375),  # 5 seeds: 0.938 0.917 0.875 0.833 0.917
        "auto": (0.65, 0.7917, 0.9583),  # 5 seeds: 0.875 0.875 0.792 0.792 0.958
    },
    "photos2": {
        "linear": (0.85, 0.9583, 0.9583),  # 5 seeds: 0.958 0.958 0.958 0.958 0.958
        "svm-linear": (0.85, 0.9583, 0.9583),  # 5 seeds: 0.958 0.958 0.958 0.958 0.958
        "svm-rbf": (0.80, 0.9167, 1.0000),  # 5 seeds: 1.000 0.917 0.958 0.958 1.000
        "mlp": (0.85, 0.9583, 0.9583),  # 5 seeds: 0.958 0.958 0.958 0.958 0.958
        "knn": (0.90, 1.0000, 1.0000),  # 5 seeds: 1.000 1.000 1.000 1.000 1.000
        "frozen": (0.80, 0.9583, 0.9583),  # 5 seeds: 0.958 0.958 0.958 0.958 0.958
        "finetune": (0.75, 0.9167, 0.9583),  # 5 seeds: 0.958 0.958 0.958 0.958 0.917
        "finetune-cached": (0.80, 0.9583, 1.0000),  # 5 seeds: 0.958 0.958 0.958 1.000 1.000
        "scratch": (0.65, 0.7708, 0.8750),  # 5 seeds: 0.833 0.833 0.771 0.875 0.875
        "auto": (0.80, 0.9583, 1.0000),  # 5 seeds: 0.958 0.958 1.000 0.958 0.958
    },
    "photos3": {
        "linear": (0.80, 0.9167, 0.9306),  # 5 seeds: 0.917 0.917 0.917 0.931 0.931
        "svm-linear": (0.80, 0.9444, 0.9444),  # 5 seeds: 0.944 0.944 0.944 0.944 0.944
        "svm-rbf": (0.80, 0.9028, 0.9028),  # 5 seeds: 0.903 0.903 0.903 0.903 0.903
        "mlp": (0.80, 0.9167, 0.9444),  # 5 seeds: 0.917 0.931 0.917 0.944 0.917
        "knn": (0.80, 0.9444, 0.9722),  # 5 seeds: 0.972 0.972 0.944 0.972 0.944
        "frozen": (0.75, 0.9028, 0.9583),  # 5 seeds: 0.931 0.958 0.903 0.917 0.944
        "finetune": (0.75, 0.9028, 0.9583),  # 5 seeds: 0.931 0.958 0.903 0.903 0.944
        "finetune-cached": (0.75, 0.9028, 0.9861),  # 5 seeds: 0.986 0.917 0.931 0.903 0.931
        "scratch": (0.50, 0.6944, 0.7639),  # 5 seeds: 0.694 0.764 0.722 0.736 0.764
        "auto": (0.75, 0.9167, 0.9722),  # 5 seeds: 0.944 0.972 0.917 0.931 0.931
    },
}
CLASSES = {"digits10": 10, "digits2": 2, "photos2": 2, "photos3": 3}


@pytest.fixture(scope="module")
def digits10():
    """DATA "digits", cut to DIGITS10_SPLITS images of each digit (its test split alone is 450 images)."""
    full = load_data("digits")
    return ImageDataset("digits", {split: full.splits[split].per_class(n, seed=0) for split, n in DIGITS10_SPLITS.items()}, full.classes)


@pytest.fixture(scope="module")
def digits2(tmp_path_factory):
    """Two of scikit-learn's digits, 3 and 8, as an image folder of 8 x 8 PNG files."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits2")
    rng = np.random.default_rng(0)
    for digit in (3, 8):
        rows = iter(rng.permutation(np.flatnonzero(digits.target == digit)))
        for split, n in SPLITS.items():
            (root / split / str(digit)).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.round(digits.images[next(rows)] * (255 / 16)).astype(np.uint8)).save(root / split / str(digit) / f"{i}.png")
    return str(root)


@pytest.fixture(scope="module")
def photos2(tmp_path_factory, photo_crops):
    """Small crops (1-5% of the photo) of a cat's fur, face and background against a coffee cup,
    its saucer and the table."""
    return str(photo_crops(tmp_path_factory.mktemp("photos2"), {"cat": "chelsea", "coffee": "coffee"}, SPLITS, seed=0, area=PHOTO_CROP_AREA))


@pytest.fixture(scope="module")
def photos3(tmp_path_factory, photo_crops):
    """Small crops of three photos: the astronaut (and the flag behind him), the rocket on its pad,
    the coffee cup."""
    classes = {"astronaut": "astronaut", "rocket": "rocket", "coffee": "coffee"}
    return str(photo_crops(tmp_path_factory.mktemp("photos3"), classes, SPLITS, seed=1, area=PHOTO_CROP_AREA))


@pytest.fixture(scope="module")
def feature_caches(tmp_path_factory):
    """One feature cache per dataset, shared by its heads: features are extracted once."""
    return {name: str(tmp_path_factory.mktemp(f"cache-{name}")) for name in FLOORS}


def _test_split(data) -> tuple[list, list[str]]:
    """The test split's images (paths or arrays) and their class names."""
    dataset = data if isinstance(data, ImageDataset) else load_data(data)
    test = dataset.splits["test"]
    return list(test.samples), [dataset.classes[i] for i in test.labels]


@pytest.mark.slow  # 36 trainings: about 3 minutes on 2 cores
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("data_name", list(FLOORS))
def test_strategy_learns_and_its_run_reproduces(data_name, strategy, request, feature_caches, tmp_path):
    data = request.getfixturevalue(data_name)
    run_dir = tmp_path / "run"
    result = transferkit.train(data, run_dir, progress=False, cache_dir=feature_caches[data_name], seed=SEED, **COMMON, **STRATEGIES[strategy])
    summary = result.metrics["summary"]
    if os.environ.get("TRANSFERKIT_OUTCOMES_LOG"):  # benchmarks/outcome_floors.py collects the measurements
        with open(os.environ["TRANSFERKIT_OUTCOMES_LOG"], "a") as log:
            log.write(json.dumps({"data": data_name, "strategy": strategy, "seed": SEED, "val": summary["val_acc"], "test": summary["test_acc"]}) + "\n")
    floor, worst, best = FLOORS[data_name][strategy]
    assert summary["val_acc"] >= floor and summary["test_acc"] >= floor, (
        f"{data_name} / {strategy}: val {summary['val_acc']:.4f}, test {summary['test_acc']:.4f}, under the floor {floor} "
        f"(seeds 0-4 measured {worst:.4f} to {best:.4f})"
    )

    # The saved run, loaded and scored on the images, gives the accuracy the run recorded.
    for split in ("val", "test"):
        evaluated = transferkit.evaluate(run_dir, data, split=split, engine="torch")
        assert evaluated["accuracy"] == summary[f"{split}_acc"], (split, evaluated["accuracy"], summary)

    # classify, image by image, makes the predictions evaluate counted.
    images, truth = _test_split(data)
    answers = transferkit.classify(run_dir, images, engine="torch")
    predicted = [answer["top"][0]["label"] for answer in answers]
    assert len(set(predicted)) > 1, f"{data_name} / {strategy} gives every test image the class {predicted[0]}"
    classes = result.run.classes
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for true, guess in zip(truth, predicted):
        confusion[classes.index(true), classes.index(guess)] += 1
    np.testing.assert_array_equal(confusion, evaluated["confusion_matrix"])
    assert np.mean(np.array(predicted) == np.array(truth)) == summary["test_acc"]


def test_floors_sit_below_their_measurements_and_above_one_class_answers():
    for data_name, cells in FLOORS.items():
        assert set(cells) == set(STRATEGIES), data_name
        for strategy, (floor, worst, best) in cells.items():
            assert floor <= worst - 0.1 + 1e-9 and worst <= best, (data_name, strategy)
            above_chance = 0.10 if (data_name, strategy) == ("digits10", "scratch") else 0.15  # see FLOORS
            assert floor >= 1 / CLASSES[data_name] + above_chance - 1e-9, (data_name, strategy)
