"""Inference engines for extraction and prediction: PyTorch, or ONNX Runtime on an export.

On a CPU, ONNX Runtime runs these convnets several times faster than eager PyTorch. The
network (a backbone up to the requested layer, or a whole classifier) is exported once per
weights/layer/size, kept beside the feature cache, and checked against PyTorch on a sample
batch before it is trusted: outputs must match to 1e-3, or the engine is refused with a clear
message.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.backbones import Backbone
from transferkit.errors import TransferkitError

ENGINES = ("auto", "torch", "onnxruntime")
PARITY_ATOL = 1e-3


class LayerFeatures(nn.Module):
    """The backbone cut at ``layer``: images in, pooled features out."""

    def __init__(self, backbone: Backbone, layer: str, flip_tta: bool = False):
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        self.flip_tta = flip_tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x, self.layer, self.flip_tta)


class TorchEngine:
    """``model`` run eagerly: inference mode, on ``device``, channels-last where that is faster."""

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device | str | None = None, channels_last: bool = False):
        self.channels_last = channels_last
        self.device = torch.device(device or "cpu")
        self.model = model.eval().to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = images.to(self.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return self.model(images).float().cpu().numpy()


class OnnxEngine:
    """``model`` exported once to ``path`` and run by ONNX Runtime, after a parity check."""

    name = "onnxruntime"

    def __init__(self, model: nn.Module, image_size: int, path: Path):
        import onnxruntime

        path.parent.mkdir(parents=True, exist_ok=True)
        model = model.eval()
        sample = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        if not path.is_file():
            export_onnx(model, sample, path, input_name="images", output_name="outputs")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            expected = model(sample).numpy()
        difference = float(np.abs(self(sample) - expected).max())
        if difference > PARITY_ATOL:
            path.unlink(missing_ok=True)
            raise TransferkitError(f"ONNX Runtime's outputs for {path.stem} differ from PyTorch's by {difference:.1e}; use --engine torch")

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"images": images.numpy()})[0]


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, input_name: str, output_name: str) -> None:
    """torch.onnx's exporter with a dynamic batch dimension, written atomically, quietly."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=[input_name], output_names=[output_name],
                                    dynamic_shapes=({0: batch},), verbose=False)  # fmt: skip
        program.save(str(tmp))
    os.replace(tmp, path)


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


AUTO_ONNX_MIN_IMAGES = 1000  # below this, the one-off export (seconds) costs more than it saves


def resolve_engine(name: str, n_images: int | None = None) -> str:
    """``auto`` picks ONNX Runtime on a CPU for ``n_images`` >= 1000, where it is installed.

    $TRANSFERKIT_ENGINE, where set, decides what ``auto`` means.
    """
    if name not in ENGINES:
        raise TransferkitError(f"unknown engine {name!r}: use {', '.join(ENGINES)}")
    if name == "auto" and os.environ.get("TRANSFERKIT_ENGINE", "auto") != "auto":
        return resolve_engine(os.environ["TRANSFERKIT_ENGINE"])
    if name == "auto":
        many = n_images is None or n_images >= AUTO_ONNX_MIN_IMAGES
        return "onnxruntime" if many and onnxruntime_available() and not torch.cuda.is_available() else "torch"
    if name == "onnxruntime" and not onnxruntime_available():
        raise TransferkitError("--engine onnxruntime needs onnx, onnxscript and onnxruntime: pip install 'transferkit[onnx]'")
    return name


def _channels_last(backbone: Backbone) -> bool:
    return backbone.spec.source != "transferkit"  # faster for the library convnets


def make_engine(name: str, backbone: Backbone, layer: str, image_size: int, folder: Path, device=None, flip_tta: bool = False):
    """The features of ``backbone`` at ``layer`` as an engine (images in, numpy features out)."""
    model = LayerFeatures(backbone, layer, flip_tta)
    if resolve_engine(name) == "onnxruntime" and (device is None or torch.device(device).type == "cpu"):
        return OnnxEngine(model, image_size, folder / f"{backbone.spec.name}-{backbone.weights_digest}-{layer}{'-flip' if flip_tta else ''}-{image_size}.onnx")
    return TorchEngine(model, device, _channels_last(backbone))


def scoring_engine(name: str, model: nn.Module, backbone: Backbone, image_size: int, n_images: int, key: str):
    """A whole classifier (``model``, built on ``backbone``) as an engine: images in, class scores out.

    ``key`` names the exported file (it must change whenever the weights do); the ONNX files
    live beside the feature cache's.
    """
    if resolve_engine(name, n_images) == "onnxruntime":
        from transferkit.features import cache_root

        return OnnxEngine(model, image_size, cache_root().parent / "engines" / f"{key}-{image_size}.onnx")
    return TorchEngine(model, None, _channels_last(backbone))
