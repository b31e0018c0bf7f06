"""A backbone: the network split into ``body`` and ``classifier``, and the one path that builds it.

Every backbone, whichever library it comes from, is split the same way: a ``body`` that maps
an image batch to pooled penultimate features of ``feature_dim`` columns, and a replaceable
``classifier`` on top.  The split point is the spec's ``classifier`` path inside the library's
own network, so the library's checkpoints load unchanged before the split.

The spec (:mod:`transferkit.core.spec`), the named specs (:mod:`transferkit.core.registry`), the
preprocessing (:mod:`transferkit.core.transforms`) and where weights come from
(:mod:`transferkit.core.weights`) each have a module of their own; the names other modules used to
import from here still import from here.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn
from torchvision.transforms import v2

from transferkit.core.alexnet_bvlc import BvlcAlexNet
from transferkit.core.baselines import LeNet, Pixels
from transferkit.core.errors import TransferkitError
from transferkit.core.registry import DEFAULT_MODEL, REGISTRY, get_spec, list_models, register
from transferkit.core.spec import IMAGENET_MEAN, IMAGENET_STD, TF_MEAN, TF_STD, BackboneSpec, parse_layer
from transferkit.core.transforms import UpscaleWithoutBorderLoss
from transferkit.core.weights import load_pretrained, read_weights_file

__all__ = [
    "Backbone", "build_network", "build_backbone", "load_backbone",
    # defined elsewhere, importable from here as before
    "BackboneSpec", "parse_layer", "IMAGENET_MEAN", "IMAGENET_STD", "TF_MEAN", "TF_STD",
    "DEFAULT_MODEL", "REGISTRY", "register", "list_models", "get_spec", "UpscaleWithoutBorderLoss", "LeNet", "Pixels",
]  # fmt: skip


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()


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

    def transform(self, image_size: int | None = None, uint8: bool = False, *, is_training: bool = False, augment: str = "light") -> v2.Compose:
        return self.spec.transform(image_size, uint8, is_training=is_training, augment=augment)


# transferkit's own networks, by the spec's ``arch``
_LOCAL_NETWORKS: dict[str, Callable[..., nn.Module]] = {"LeNet": LeNet, "BvlcAlexNet": BvlcAlexNet, "Pixels": Pixels}


def build_network(spec: BackboneSpec) -> nn.Module:
    """The source library's network for ``spec``, randomly initialised."""
    if spec.source == "torchvision":
        return tvm.get_model(spec.arch, weights=None, num_classes=spec.num_classes, **spec.build_kwargs)
    if spec.source == "timm":
        import timm  # here, not at the top: importing timm costs a second that listing or parsing need not pay

        return timm.create_model(spec.arch, pretrained=False, num_classes=spec.num_classes, **spec.build_kwargs)
    return _LOCAL_NETWORKS[spec.arch](num_classes=spec.num_classes, **spec.build_kwargs)


def build_backbone(
    name: str = DEFAULT_MODEL,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    num_classes: int | None = None,
    seed: int | None = 0,
) -> Backbone:
    """Build ``name`` with its pretrained weights, or those in ``weights`` (a file), and split it.

    ``weights``: a state dict, as safetensors or a plain torch checkpoint, in the library's key
    names or a saved Backbone's (for alexnet_bvlc also the lab's .npy, with ``trust_pickle``).
    It is checked against the network's names and shapes before the network is built, and
    replaces the pretrained weights: with ``pretrained=False`` it is a contradiction, refused
    rather than one of the two silently ignored.  ``pretrained=False`` gives random weights
    (seeded); missing pretrained weights are an error, never a silent fallback.
    ``num_classes`` replaces the classifier.
    """
    spec = get_spec(name)
    from_file = None
    if weights is not None:
        if not pretrained:
            raise TransferkitError(
                f"--weights {weights} loads that file and --no-pretrained (pretrained=False) asks for random weights: pass one of them"
            )
        with torch.device("meta"):  # names and shapes without initialising: a bad file fails fast
            expected = build_network(spec).state_dict()
        from_file = read_weights_file(weights, spec, expected, trust_pickle=trust_pickle)
    if seed is not None:
        torch.manual_seed(seed)
    net = build_network(spec)
    if from_file is not None:
        state, source, digest = from_file
        net.load_state_dict(state)
    elif pretrained:
        source, digest = load_pretrained(net, spec)
    else:
        source = digest = "random" if seed is None else f"random-seed{seed}"
    backbone = Backbone(spec, net, weights_source=source, weights_digest=digest)
    if num_classes is not None and num_classes != backbone.num_classes:
        backbone.reset_classifier(num_classes)
    return backbone.eval()


load_backbone = build_backbone
