"""What transferkit knows about one named backbone: a frozen spec, and the layer names it accepts.

A spec is data (as timm's pretrained config or torchvision's weights entry): where the network
comes from, where to split it, its preprocessing and its metadata.  Preprocessing always comes
from the spec; the pipelines themselves are built in :mod:`transferkit.core.transforms`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torchvision.models._meta import _IMAGENET_CATEGORIES
from torchvision.transforms import v2

from transferkit.core.errors import TransferkitError
from transferkit.core.transforms import create_transform, normalize_uint8, scaling

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)  # TensorFlow-trained weights expect inputs in [-1, 1]


@dataclass(frozen=True)
class BackboneSpec:
    """Everything transferkit needs to know about one named backbone."""

    name: str
    source: str  # "torchvision", "timm" or "transferkit"
    arch: str  # the source library's builder name
    feature_dim: int
    classifier: str  # path of the final layer in the library's network
    stages: tuple[str, ...]  # feature-map modules, shallow to deep: --layer stage1..N
    layer_groups: tuple[tuple[str, ...], ...]  # body modules from input to output, for fine-tuning
    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    params: int | None = None  # as the source library states it
    imagenet_top1: float | None = None  # as the source library states it
    weights: str | None = None  # torchvision weights enum or timm "arch.tag"; None: no pretrained weights
    embedded: str | None = None  # the pip package that ships the weights, when one does
    build_kwargs: Mapping[str, Any] = field(default_factory=dict)
    drop_keys: tuple[str, ...] = ()  # checkpoint prefixes the built network does not have (aux heads)
    min_input_size: int = 32
    fixed_input_size: bool = False  # the classifier needs exactly input_size (Caffe AlexNet)
    description: str = ""

    @property
    def has_pretrained(self) -> bool:
        return self.weights is not None or self.embedded is not None

    @property
    def has_learned_layers(self) -> bool:
        """Whether the body has parameters at all: raw pixels have none, so no weights to load.
        Layer groups cover every body parameter (a contract test checks it)."""
        return bool(self.layer_groups)

    @property
    def channels_last(self) -> bool:
        """Whether NHWC memory runs faster: the library convnets, not transferkit's own small networks."""
        return self.source != "transferkit"

    @property
    def categories(self) -> list[str] | None:
        return list(_IMAGENET_CATEGORIES) if self.num_classes == 1000 else None

    @property
    def crop_pct(self) -> float:
        return self.input_size / self.resize_size

    def check_image_size(self, image_size: int | None) -> int:
        """The input size to use; one the network cannot take is a clear error."""
        if image_size is None:
            return self.input_size
        if self.fixed_input_size and image_size != self.input_size:
            raise TransferkitError(f"{self.name} takes only {self.input_size} px inputs, got --image-size {image_size}")
        if image_size < self.min_input_size:
            raise TransferkitError(f"--image-size {image_size} is too small for {self.name}: the minimum is {self.min_input_size}")
        return image_size

    def resize_for(self, size: int) -> int:
        """The evaluation resize for a ``size`` px crop: the spec's crop ratio kept."""
        return round(size / self.crop_pct)

    def transform(self, image_size: int | None = None, uint8: bool = False, *, is_training: bool = False, augment: str = "light", mirror: bool = True,
                  crop_scale: float | None = None) -> v2.Compose:  # fmt: skip
        """Preprocessing for ``image_size`` px (default: the spec's): evaluation (resize, centre
        crop), or with ``is_training`` the ``augment`` pipeline; see :func:`create_transform`.

        ``image_size`` overrides the crop size and scales the resize by the spec's crop ratio.
        ``uint8``: stop before scaling, for :meth:`normalize` to finish on the GPU.
        """
        size = self.check_image_size(image_size)
        return create_transform(
            size, resize_size=self.resize_for(size), interpolation=self.interpolation, mean=self.mean, std=self.std,
            is_training=is_training, augment=augment, mirror=mirror, crop_scale=crop_scale, uint8=uint8,
        )  # fmt: skip

    def scaling(self) -> list:
        """The transforms' last steps: uint8 pixels to normalised float32."""
        return scaling(self.mean, self.std)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`scaling` for a batch of uint8 images where they are (a GPU)."""
        return normalize_uint8(images, self.mean, self.std)

    def preprocessing(self, image_size: int | None = None) -> dict[str, Any]:
        """The numbers that define :meth:`transform`, for run metadata and cache keys."""
        size = self.check_image_size(image_size)
        return {
            "input_size": size,
            "resize_size": self.resize_for(size),
            "smaller_images": "shorter side resized to input_size, no border cropped",
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def parse_layer(layer: str, spec: BackboneSpec) -> tuple[str, int]:
    """``"penultimate"`` -> ("penultimate", 0); ``stageN`` / ``groupN`` -> ("stage" / "group", N),
    N checked against the spec's stages / layer groups."""
    if layer == "penultimate":
        return layer, 0
    counts = {"stage": len(spec.stages), "group": len(spec.layer_groups)}
    kind, number = layer[:5], layer[5:]
    if kind in counts and number.isdigit() and 1 <= int(number) <= counts[kind]:
        return kind, int(number)
    raise TransferkitError(f"unknown layer {layer!r} for {spec.name}: use penultimate, stage1..stage{counts['stage']} or group1..group{counts['group']}")
