"""Inference engines for extraction and prediction: PyTorch, or ONNX Runtime on an export.

On a CPU, ONNX Runtime runs these convnets several times faster than eager PyTorch. The
network (a backbone up to the requested layer, or a whole classifier) is exported once per
weights/layer/size, kept beside the feature cache, and checked against PyTorch on a sample
batch before it is trusted: outputs must match to 1e-3 (of the largest output, where above 1),
or the engine is refused with a clear message; ``auto`` scoring then falls back to PyTorch.
With ``--quantize int8`` the export is further quantised by ONNX Runtime (static int8, ranges
calibrated on a sample of the training images); its features are checked for agreement
(cosine similarity) rather than equality.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.core.backbones import Backbone
from transferkit.core.errors import TransferkitError
from transferkit.core.feature_store import FeatureStore

ENGINES = ("auto", "torch", "onnxruntime")
PARITY_ATOL = 1e-3  # see parity_error
QUANTIZATIONS = ("int8",)
INT8_MIN_COSINE = 0.8  # a floor against broken quantisation: EfficientNet-Lite0 gives 0.90-0.94 on CIFAR-10 and loses <1 point of accuracy


class LayerFeatures(nn.Module):
    """The backbone cut at ``layer``: images in, pooled features out."""

    def __init__(self, backbone: Backbone, layer: str, flip_tta: bool = False):
        super().__init__()
        self.backbone = backbone
        self.layer = layer
        self.flip_tta = flip_tta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.features(x, self.layer, self.flip_tta)


def default_device() -> torch.device:
    """The GPU where there is one (as Lightning's ``accelerator="auto"`` picks for training), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def float32_convolutions():
    """cuDNN in true float32: its default TF32 put Lite0's features up to 3.3e-2 from the CPU's on
    an H200, float32 within 1.1e-5 (benchmarks/gpu_input.py, through this same flag). The legacy
    flag: once torch >= 2.9's per-operator flags are set, reading the legacy one raises, and other
    code may still read it."""
    cudnn = torch.backends.cudnn
    try:
        before = cudnn.allow_tf32
    except RuntimeError:  # someone set those per-operator flags apart: only the convolutions' then
        before, cudnn.conv.fp32_precision = cudnn.conv.fp32_precision, "ieee"
        try:
            yield
        finally:
            cudnn.conv.fp32_precision = before
        return
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32 = before


def _same_device(a: torch.device, b: torch.device) -> bool:
    """"cuda" and "cuda:0" are one device (the current one, taken as 0)."""
    return a.type == b.type and (a.index or 0) == (b.index or 0)


class TorchEngine:
    """``model`` run eagerly: inference mode, on ``device`` (default: :func:`default_device`), channels-last where that is faster.

    With ``normalize`` (the backbone's :meth:`~transferkit.core.backbones.BackboneSpec.normalize`) it also
    takes uint8 images and normalises them on the device, which pays on a GPU.
    """

    name = "torch"

    def __init__(self, model: nn.Module, device: torch.device | str | None = None, channels_last: bool = False, normalize=None):
        self.channels_last, self.normalize = channels_last, normalize
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.eval()
        if any(not _same_device(p.device, self.device) for p in model.parameters()):  # a copy: the caller's model stays where it is
            self.model = copy.deepcopy(model).to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = images.to(self.device)
        if images.dtype == torch.uint8:
            images = self.normalize(images)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), float32_convolutions() if self.device.type == "cuda" else contextlib.nullcontext():
            return self.model(images).float().cpu().numpy()


@dataclass(frozen=True)
class Int8Calibration:
    """Preprocessed images whose activations set the int8 ranges, and a name for them."""

    images: torch.Tensor  # N x 3 x S x S
    fingerprint: str  # of the images they were drawn from: names the quantised file


class OnnxEngine:
    """``model`` exported once to ``path`` (and quantised, with ``int8``), run by ONNX Runtime after a parity check."""

    name = "onnxruntime"
    device = torch.device("cpu")  # the CPU build of ONNX Runtime

    def __init__(self, model: nn.Module, image_size: int, path: Path, int8: Int8Calibration | None = None):
        import onnxruntime

        path.parent.mkdir(parents=True, exist_ok=True)
        model = model.eval()
        sample = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        exported, exported_now = path, not path.is_file()
        if exported_now:
            export_onnx(model, sample, exported, input_name="images", output_name="outputs")
        if int8 is not None:
            sample = int8.images[:16]  # the agreement check: eager PyTorch is slow on a CPU
            path = quantize_int8(exported, int8)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        with torch.inference_mode():
            expected = model(sample).numpy()
        got = self(sample)
        same_shape = got.shape == expected.shape
        if int8 is not None:
            cosine = mean_cosine(got, expected) if same_shape else float("-inf")
            failure = f"int8 quantisation changes the features of {path.stem} too much (mean cosine similarity {cosine:.2f} < {INT8_MIN_COSINE}); extract without --quantize" if cosine < INT8_MIN_COSINE else None
        else:
            error = parity_error(got, expected)
            failure = f"ONNX Runtime's outputs for {path.stem} differ from PyTorch's by {error:.1e}; use --engine torch" if error > PARITY_ATOL else None
        if failure:
            path.unlink(missing_ok=True)
            if not exported_now:  # the export may be left by another version of transferkit or torch: export again
                exported.unlink(missing_ok=True)
                self.__init__(model, image_size, exported, int8)
                return
            raise TransferkitError(failure)

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {"images": images.numpy()})[0]


def parity_error(got: np.ndarray, expected: np.ndarray) -> float:
    """Largest difference between two engines' outputs, relative to the largest output where that
    is above 1: float error grows with the values (random-init ResNet-152's logits reach 5e6)."""
    if got.shape != expected.shape:
        return float("inf")
    return float(np.abs(got - expected).max()) / max(1.0, float(np.abs(expected).max()))


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over rows of the cosine similarity of ``a``'s and ``b``'s feature vectors."""
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def quantize_int8(path: Path, int8: Int8Calibration) -> Path:
    """ONNX Runtime's static quantisation of the export at ``path``; returns the int8 file.

    Weights per channel in 7 bits (``reduce_range``): CPUs without VNNI multiply uint8 x int8
    pairs into 16-bit sums that saturate with full 8-bit weights. EfficientNet-Lite0's int8
    features keep a mean cosine similarity of 0.925 to float32 ones (BENCHMARKS.md).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = path.with_name(f"{path.stem}-int8-{int8.fingerprint[:12]}.onnx")
    if target.is_file():
        return target
    batches = iter([{"images": chunk.numpy()} for chunk in int8.images.split(16)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(batches, None)

    prepared = path.with_name(f"{target.name}.{os.getpid()}.pre.tmp")
    tmp = path.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)  # fmt: skip
        os.replace(tmp, target)
    finally:
        prepared.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return target


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
        return "onnxruntime" if many and not torch.cuda.is_available() and onnxruntime_available() else "torch"  # onnxscript imports slowly
    if name == "onnxruntime" and not onnxruntime_available():
        raise TransferkitError("--engine onnxruntime needs onnx, onnxscript and onnxruntime: pip install 'transferkit[onnx]'")
    return name


def make_engine(name: str, backbone: Backbone, layer: str, image_size: int, folder: Path, device=None, flip_tta: bool = False,
                int8: Int8Calibration | None = None):  # fmt: skip
    """The features of ``backbone`` at ``layer`` as an engine (images in, numpy features out).

    ``int8``: quantise the ONNX Runtime engine, calibrated on those images (CPU only).
    """
    model = LayerFeatures(backbone, layer, flip_tta)
    engine = resolve_engine(name)
    if device is None:  # ONNX Runtime (and so int8) runs on the CPU; PyTorch on the GPU where there is one
        device = default_device() if engine == "torch" and int8 is None else "cpu"
    on_cpu = torch.device(device).type == "cpu"
    if int8 is not None and not (on_cpu and engine == "onnxruntime"):
        raise TransferkitError("--quantize int8 runs on ONNX Runtime on the CPU: use --engine auto or onnxruntime, without GPU devices")
    if engine == "onnxruntime" and on_cpu:
        path = folder / f"{backbone.spec.name}-{backbone.weights_digest}-{layer}{'-flip' if flip_tta else ''}-{image_size}.onnx"
        return OnnxEngine(model, image_size, path, int8)
    return TorchEngine(model, device, backbone.spec.channels_last, backbone.spec.normalize)


def scoring_engine(name: str, model: nn.Module, backbone: Backbone, image_size: int, n_images: int, key: str, cache_dir=None):
    """A whole classifier (``model``, built on ``backbone``) as an engine: images in, class scores out.

    ``key`` names the exported file (it must change whenever the weights do); the ONNX files
    live beside the feature cache's (:attr:`~transferkit.core.feature_store.FeatureStore.engines_folder` of ``cache_dir``).
    Where ``auto`` chose ONNX Runtime and it cannot run the network (export or parity check), PyTorch
    scores instead, with a warning: the scores are the same, and a finished training is not lost.
    """
    if resolve_engine(name, n_images) == "onnxruntime":
        try:
            return OnnxEngine(model, image_size, FeatureStore(cache_dir).engines_folder / f"{key}-{image_size}.onnx")
        except Exception as err:  # the exporter raises many kinds
            if name != "auto":
                raise
            warnings.warn(f"ONNX Runtime cannot run this network ({str(err).splitlines()[0]}); scoring with PyTorch", stacklevel=2)
    return TorchEngine(model, None, backbone.spec.channels_last, backbone.spec.normalize)
