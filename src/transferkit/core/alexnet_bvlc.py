"""The original Caffe AlexNet (BVLC reference, Krizhevsky 2012) from the teaching lab's ``bvlc-alexnet.npy``.

The file is ``np.save`` of a dict ``{layer: [weights, biases]}`` in TensorFlow layout: conv weights
HWIO ``(kh, kw, in_per_group, out)``, fc weights ``(in, out)``.  Converting it to PyTorch takes three
layout changes, all made here once so that the module itself is a plain ``nn.Module``:

* conv weights HWIO -> OIHW.  Grouped convs need nothing more: both TF's split-and-concat and
  ``groups=2`` give output half ``g`` from input half ``g``.
* conv1's input channels are flipped BGR (Caffe) -> RGB, so the network consumes RGB like every
  other backbone; the caller only has to normalise (see ``BVLC_MEAN``/``BVLC_STD``).
* fc6's rows are permuted from TF's HWC flatten of pool5 (6x6x256) to PyTorch's CHW flatten.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from transferkit.core.errors import TransferkitError

# The weights expect 0..255 pixels minus a mean pixel (Caffe's ImageNet mean is about RGB 123, 117, 104;
# the lab subtracted each image's own mean).  As a Normalize spec on [0, 1] RGB: subtract, then times 255.
BVLC_MEAN = (123.68 / 255, 116.78 / 255, 103.94 / 255)
BVLC_STD = (1 / 255, 1 / 255, 1 / 255)
INPUT_SIZE = 227  # fixed: the classifier expects pool5 to be exactly 6x6

# layer -> (TF weight shape, torch state-dict prefix)
LAYERS: dict[str, tuple[tuple[int, ...], str]] = {
    "conv1": ((11, 11, 3, 96), "features.0"),
    "conv2": ((5, 5, 48, 256), "features.4"),
    "conv3": ((3, 3, 256, 384), "features.8"),
    "conv4": ((3, 3, 192, 384), "features.10"),
    "conv5": ((3, 3, 192, 256), "features.12"),
    "fc6": ((9216, 4096), "classifier.0"),
    "fc7": ((4096, 4096), "classifier.3"),
    "fc8": ((4096, 1000), "classifier.6"),
}


class BvlcWeightsError(TransferkitError, ValueError):
    """A ``bvlc-alexnet.npy`` that is not the expected dict of layers and shapes."""


def _lrn() -> nn.LocalResponseNorm:
    # TF depth_radius=2, alpha=2e-5 per element; PyTorch divides alpha by size, hence alpha*5.
    return nn.LocalResponseNorm(size=5, alpha=2e-05 * 5, beta=0.75, k=1.0)


class BvlcAlexNet(nn.Module):
    """Caffe AlexNet with its two-group convs; takes normalised RGB images of exactly 227x227.

    ``classifier[:-1]`` maps flattened pool5 to the 4096-d fc7 features (after ReLU);
    ``classifier[-1]`` is the final ``nn.Linear(4096, num_classes)``.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(inplace=True), _lrn(), nn.MaxPool2d(3, 2),  # VALID
            nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True), _lrn(), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),  # TF SAME, odd kernel, stride 1 == k//2
            nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"BvlcAlexNet takes {INPUT_SIZE}x{INPUT_SIZE} images, got {tuple(x.shape[-2:])}")
        return self.classifier(torch.flatten(self.features(x), 1))


def bvlc_state_dict(arrays: dict, *, include_fc8: bool = True) -> dict[str, torch.Tensor]:
    """Convert ``{layer: [weights, biases]}`` in TF layout to a ``BvlcAlexNet`` state dict.

    ``include_fc8=False`` leaves out the ImageNet head, for a model with another ``num_classes``
    (load it with ``strict=False``).  Raises ``BvlcWeightsError`` (a ``ValueError``) naming the layer.
    """
    if not isinstance(arrays, dict):
        raise BvlcWeightsError(f"expected a dict of AlexNet layers, got {type(arrays).__name__}")
    missing = [name for name in LAYERS if name not in arrays]
    if missing:
        found = ", ".join(sorted(map(str, arrays))) or "nothing"
        raise BvlcWeightsError(f"AlexNet weights are missing layer(s) {', '.join(missing)}; found {found}")
    checked = {}  # check every layer before converting any, so a bad file fails fast
    for name, (shape, _) in LAYERS.items():
        entry = arrays[name]
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise BvlcWeightsError(f"layer {name}: expected [weights, biases], got {type(entry).__name__}")
        try:
            w, b = (np.asarray(a, dtype=np.float32) for a in entry)
        except (TypeError, ValueError) as exc:
            raise BvlcWeightsError(f"layer {name}: weights are not numeric arrays ({exc})") from None
        for what, expected, got in (("weights", shape, w.shape), ("biases", (shape[-1],), b.shape)):
            if tuple(got) != expected:
                raise BvlcWeightsError(f"layer {name}: {what} shape should be {expected}, got {tuple(got)}")
        checked[name] = w, b
    state: dict[str, torch.Tensor] = {}
    for name, (w, b) in checked.items():
        if name == "fc8" and not include_fc8:
            continue
        if name == "conv1":
            w = w[:, :, ::-1, :]  # input channels BGR (Caffe) -> RGB
        if name == "fc6":
            # fc6's rows are pool5 flattened in (h, w, c) order: it is a 6x6 HWIO conv over pool5.
            # Converted like the convs to (out, c, h, w), it flattens in PyTorch's (c, h, w) order.
            w = w.reshape(6, 6, 256, 4096)
        w = np.ascontiguousarray(w.transpose(3, 2, 0, 1) if w.ndim == 4 else w.T)  # HWIO -> OIHW; (in, out) -> (out, in)
        prefix = LAYERS[name][1]
        state[f"{prefix}.weight"] = torch.from_numpy(w.reshape(4096, 9216) if name == "fc6" else w)
        state[f"{prefix}.bias"] = torch.from_numpy(np.ascontiguousarray(b))
    return state


def load_bvlc_npy(path: str | os.PathLike, *, include_fc8: bool = True) -> dict[str, torch.Tensor]:
    """Load ``bvlc-alexnet.npy`` and return ``bvlc_state_dict`` of it.

    The file is a pickle, and unpickling runs arbitrary code: call this only on a file the user
    has explicitly said they trust.  A missing file raises ``FileNotFoundError``; anything other
    than a dict of the AlexNet layers raises ``BvlcWeightsError`` (a ``ValueError``).
    """
    name = os.fspath(path)
    try:
        loaded = np.load(path, encoding="latin1", allow_pickle=True)
    except OSError:  # missing or unreadable file: not a format problem
        raise
    except Exception as exc:  # pickle and format errors of every kind
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        raise BvlcWeightsError(f"{name} is not a readable .npy file ({reason})") from None
    if not (isinstance(loaded, np.ndarray) and loaded.shape == () and loaded.dtype == object):
        kind = f"array of shape {loaded.shape}" if isinstance(loaded, np.ndarray) else type(loaded).__name__
        raise BvlcWeightsError(f"{name} should hold a dict of AlexNet layers, found an {kind}")
    try:
        return bvlc_state_dict(loaded.item(), include_fc8=include_fc8)
    except BvlcWeightsError as exc:
        raise BvlcWeightsError(f"{name}: {exc}") from None


def make_fake_bvlc_arrays(seed: int = 0, scale: float = 0.01) -> dict:
    """Random float32 ``{layer: [weights, biases]}`` in ``[-scale, scale]``, in the file's shapes and layout."""
    rng = np.random.default_rng(seed)

    def uniform(shape: tuple[int, ...]) -> np.ndarray:
        a = rng.random(shape, dtype=np.float32)  # float32 uniform: fast for fc6's 38M weights
        a -= 0.5
        a *= 2 * scale
        return a

    return {name: [uniform(shape), uniform(shape[-1:])] for name, (shape, _) in LAYERS.items()}
