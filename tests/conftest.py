"""Tests run offline, with empty library caches, so no result depends on this machine's state."""

import os

import pytest


def pytest_configure(config):
    os.environ["TRANSFERKIT_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFERKIT_DEBUG", "")
    # Exporting each random-init test network to ONNX would cost seconds a test; the ONNX
    # Runtime engine has tests of its own.
    os.environ["TRANSFERKIT_ENGINE"] = "torch"


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
