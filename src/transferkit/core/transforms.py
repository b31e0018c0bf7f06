"""Image preprocessing: one factory for the evaluation and the training pipelines.

As timm's ``create_transform(is_training=...)``: the numbers (sizes, interpolation, mean, std)
come in as arguments, from a backbone's spec (:meth:`transferkit.core.spec.BackboneSpec.transform`);
nothing here knows a backbone.  Both pipelines end in the same :func:`scaling`, so the uint8
variant of either can be finished on the GPU by :func:`normalize_uint8`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

from transferkit.core.errors import TransferkitError

AUGMENTS = ("none", "light", "strong")


def create_transform(
    input_size: int,
    *,
    resize_size: int,
    interpolation: str,
    mean: Sequence[float],
    std: Sequence[float],
    is_training: bool = False,
    augment: str = "light",
    mirror: bool = True,
    crop_scale: float | None = None,
    uint8: bool = False,
) -> v2.Compose:
    """The preprocessing pipeline for images of ``input_size`` px.

    Evaluation: shorter side to ``resize_size`` (see :class:`UpscaleWithoutBorderLoss`), centre
    crop.  Training: random resized crops keeping at least ``crop_scale`` of the area (default
    0.35; 1: the evaluation pipeline's crop) and, with ``mirror``, flips ("light"), plus colour
    jitter, RandAugment and erasing ("strong", crops from 0.25); "none" is the evaluation pipeline.  Both scale to [0, 1] and
    normalise, unless ``uint8``: then they stop before that, for the device to finish.
    """
    if augment not in AUGMENTS:
        raise TransferkitError(f"unknown augment {augment!r}: use {', '.join(AUGMENTS)}")
    mode = InterpolationMode(interpolation)
    if is_training and augment != "none":
        strong = augment == "strong"
        scale = crop_scale if crop_scale is not None else (0.25 if strong else 0.35)
        if scale < 1.0:
            ops = [v2.ToImage(), v2.RandomResizedCrop(input_size, scale=(scale, 1.0), interpolation=mode, antialias=True)]
        else:  # no cropping: the evaluation pipeline's view of each image
            ops = [v2.ToImage(), UpscaleWithoutBorderLoss(resize_size, input_size, mode), v2.CenterCrop(input_size)]
        if mirror:
            ops.append(v2.RandomHorizontalFlip())
        if strong:  # erased patches get the mean colour, which normalises to zero
            mean_pixel = [round(255 * m) for m in mean]
            # RandAugment's rotations and shears run on tensors, which take only nearest or bilinear:
            # with bicubic (EfficientNet) they raised ValueError on about 3 images in 5.
            affine = mode if mode in (InterpolationMode.NEAREST, InterpolationMode.BILINEAR) else InterpolationMode.BILINEAR
            ops += [v2.ColorJitter(0.2, 0.2, 0.2), v2.RandAugment(num_ops=2, magnitude=9, interpolation=affine), v2.RandomErasing(0.25, value=mean_pixel)]
    else:
        ops = [v2.ToImage(), UpscaleWithoutBorderLoss(resize_size, input_size, mode), v2.CenterCrop(input_size)]
    return v2.Compose(ops + ([] if uint8 else scaling(mean, std)))


def scaling(mean: Sequence[float], std: Sequence[float]) -> list:
    """The pipelines' last steps: uint8 pixels to normalised float32."""
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def normalize_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """:func:`scaling` for a batch of uint8 images where they are (a GPU): a uint8 image is a
    quarter the bytes of a float32 one, and copying images out of the loader's workers bounds GPU
    extraction (benchmarks/gpu_input.py)."""
    mean_255 = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255
    std_255 = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean_255) / std_255


class UpscaleWithoutBorderLoss:
    """Resize the shorter side to ``resize`` for the centre crop, as the network was trained.

    An image smaller than the crop (CIFAR's 32 px, the digits' 8 px) has no spare border to
    lose: it is resized to the crop size itself. Measured on CIFAR-10 with EfficientNet-Lite0
    at 224 px, 100 images per class: 73.1% test accuracy for a linear head, against 71.3%
    with the usual resize-to-256-then-crop.
    """

    def __init__(self, resize: int, size: int, interpolation: InterpolationMode):
        self.resize, self.size, self.interpolation = resize, size, interpolation

    def __call__(self, image):
        height, width = v2.functional.get_size(image)
        target = self.size if min(height, width) < self.size else self.resize
        return v2.functional.resize(image, [target], interpolation=self.interpolation, antialias=True)
