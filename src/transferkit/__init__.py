"""transferkit: transfer learning on images with pretrained networks.

The functions here are the CLI's commands, by the same names and options (see api.py).
"""

from transferkit.core.backbones import REGISTRY, Backbone, BackboneSpec, build_backbone, get_spec, list_models, load_backbone
from transferkit.core.errors import ImageError, TransferkitError, WeightsNotFoundError
from transferkit.core.asis import predict
from transferkit.api import TrainResult, advise, check, classify, compare, evaluate, export, extract, load_run, train
from transferkit.training.options import TrainOptions
from transferkit.core import __version__


__all__ = [
    "__version__",
    "REGISTRY",
    "Backbone",
    "BackboneSpec",
    "ImageError",
    "TrainOptions",
    "TrainResult",
    "TransferkitError",
    "WeightsNotFoundError",
    "advise",
    "build_backbone",
    "check",
    "classify",
    "compare",
    "evaluate",
    "export",
    "extract",
    "get_spec",
    "list_models",
    "load_backbone",
    "load_run",
    "predict",
    "train",
]
