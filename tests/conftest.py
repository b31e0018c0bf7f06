"""Tests run offline, with empty library caches, so no result depends on this machine's state."""

import os
from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config):
    os.environ["TRANSFERKIT_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFERKIT_DEBUG", "")
    # Exporting each random-init test network to ONNX would cost seconds a test; the ONNX
    # Runtime engine has tests of its own.
    os.environ["TRANSFERKIT_ENGINE"] = "torch"
    # Seeded runs repeat exactly on one machine: deterministic kernels where torch has them (a
    # warning where it has none), and the same number of threads on a machine with more cores.
    # Across CPU models (AMD EPYC, Intel Xeon with AMX) float sums still differ in their last bits,
    # which a few epochs can grow: the accuracy floors keep a margin under their worst seed for that.
    import torch

    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.getbasetemp() / "home"
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(home / "transferkit-cache"))


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """scikit-image's sample photos written as PNG files."""
    data = pytest.importorskip("skimage.data")
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("chelsea", "coffee"):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(paths[name])
    return paths


@pytest.fixture(scope="session")
def lite0():
    """The embedded EfficientNet-Lite0 with its real ImageNet weights (built once)."""
    from transferkit import build_backbone

    return build_backbone("efficientnet_lite0")


def random_crops(photo, n: int, rng, *, size: int = 64, area: tuple[float, float] = (0.04, 0.25)):
    """``n`` distinct images cut from one real photo: a random crop (a random share ``area`` of its
    surface, aspect 3:4 to 4:3), resized to ``size`` px, mirrored half the time, with its brightness
    and contrast jittered, so no class is told apart by its mean colour or its framing alone."""
    from PIL import Image

    h, w = photo.shape[:2]
    for _ in range(n):
        share, aspect = rng.uniform(*area), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = (min(side, round(np.sqrt(share * h * w * a))) for side, a in ((h, 1 / aspect), (w, aspect)))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        image = Image.fromarray(photo[y : y + ch, x : x + cw]).convert("RGB").resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, np.float32) * rng.uniform(0.75, 1.25) + rng.uniform(-20, 20)
        yield Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def photo_crops():
    """Writes crops of scikit-image's sample photos (:func:`random_crops`) into an image folder:
    ``photo_crops(folder, {"cat": "chelsea", ...}, {"train": 20, "test": 10}, seed=0)`` makes
    ``folder/train/cat/0.png``...; a split named "" writes ``folder/cat/...``. Returns ``folder``."""
    data = pytest.importorskip("skimage.data")

    def write(folder, classes: dict, counts: dict, *, seed: int = 0, suffix: str = ".png", **crop_options):
        rng = np.random.default_rng(seed)
        for label, photo_name in classes.items():
            photo = getattr(data, photo_name)()
            for split, n in counts.items():
                (Path(folder) / split / label).mkdir(parents=True, exist_ok=True)
                for i, image in enumerate(random_crops(photo, n, rng, **crop_options)):
                    image.save(Path(folder) / split / label / f"{i}{suffix}")
        return Path(folder)

    return write
