"""Cache keys and the on-disk format, pinned: caches written by earlier versions must still load.

The values were recorded from the code as it stood before the feature store was split out of
features.py (commit 70f2664).  A change here orphans every user's cache: bump CACHE_VERSION
on purpose instead.
"""

import hashlib
import json

import numpy as np
import pytest
import torch

from transferkit import build_backbone
from transferkit.core.features import cache_key, extract_features, read_entry

RESNET_PREPROCESSING_40 = {
    "input_size": 40,
    "resize_size": 46,
    "smaller_images": "shorter side resized to input_size, no border cropped",
    "interpolation": "bilinear",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


@pytest.fixture(scope="module")
def resnet():
    return build_backbone("resnet18", pretrained=False, seed=1)


def test_cache_keys_are_unchanged(resnet, lite0):
    key, description = cache_key(resnet, "stage2", 40, "fp", "torch", False, None)
    assert key == "1fbec6eb753fb97688a739cc"
    assert description == {"version": 2, "backbone": "resnet18", "weights": "random-seed1", "layer": "stage2", "flip_tta": False,
                           "preprocessing": RESNET_PREPROCESSING_40, "data": "fp", "engine": "torch"}  # fmt: skip
    key, description = cache_key(resnet, "penultimate", None, "data-fp", "onnxruntime", True, "calib-fp")
    assert key == "05ccd21988dac2a1c81d500e" and description["quantize"] == {"int8": "calib-fp"}
    assert lite0.weights_digest == "579344248a93e230"
    assert cache_key(lite0, "penultimate", None, "fp")[0] == "9aec3161e3b7e2872e467230"


class CountingEngine:
    """Rows numbered by call, whatever the pixels: the file bytes depend only on the chunking."""

    name = "torch"
    device = torch.device("cpu")

    def __init__(self):
        self.calls = 0

    def __call__(self, images):
        self.calls += 1
        return (np.arange(len(images) * 3, dtype=np.float32).reshape(-1, 3) + 100 * self.calls) / 7


PINNED_SHA256 = {
    "features.npy": "3877003d4f92ac7aaaf1777f905800d9972d8cc68b86ce2d74b081b10ec52b29",
    "labels.npy": "98e354aa22b3e3c2802c50a532cd9d59baeec757a3f52898da3c9cf50e9a2d11",
    "ok.npy": "54dfc976366a3c477065bc9b9e968127a0b37278ebc3210e02d0d7345860e6ae",
}


def test_entry_files_are_unchanged(tmp_path, resnet, monkeypatch):
    from transferkit.core import engines
    monkeypatch.setattr(engines, "make_engine", lambda *args, **kwargs: CountingEngine())
    image = np.full((20, 20, 3), 90, np.uint8)
    samples = [image] * 4 + [tmp_path / "missing.png"] + [image] * 6  # 11 images, chunks of 4: 4 + 4 + 3
    entry = extract_features(samples, np.arange(11) % 3, resnet, data_fingerprint="format", layer="stage2", image_size=40,
                             batch_size=2, chunk_batches=2, num_workers=0, cache_dir=tmp_path,
                             description={"dataset": "d", "split": "train"})  # fmt: skip
    assert entry.path.name == cache_key(resnet, "stage2", 40, "format")[0]
    assert sorted(p.name for p in entry.path.iterdir()) == ["features.npy", "labels.npy", "meta.json", "ok.npy"]
    digests = {name: hashlib.sha256((entry.path / name).read_bytes()).hexdigest() for name in PINNED_SHA256}
    assert digests == PINNED_SHA256
    meta = json.loads((entry.path / "meta.json").read_text())
    assert meta.pop("created") and meta.pop("failures")[0]["index"] == 4
    assert meta == {**cache_key(resnet, "stage2", 40, "format")[1], "dataset": "d", "split": "train", "count": 11, "dim": 3, "sha256": PINNED_SHA256}
    assert (entry.path / "meta.json").read_text().startswith('{\n "version": 2,\n "backbone": "resnet18",')  # json indent=1, key order
    again = read_entry(entry.path)
    assert again.ok.tolist() == [True] * 4 + [False] + [True] * 6 and not again.features[4].any()
