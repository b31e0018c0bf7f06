"""transferkit: transfer learning on images with pretrained networks."""

from transferkit.backbones import REGISTRY, Backbone, BackboneSpec, build_backbone, get_spec, list_models, load_backbone
from transferkit.errors import ImageError, TransferkitError, WeightsNotFoundError
from transferkit.asis import predict

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "Backbone",
    "BackboneSpec",
    "ImageError",
    "TransferkitError",
    "WeightsNotFoundError",
    "build_backbone",
    "get_spec",
    "list_models",
    "load_backbone",
    "predict",
]
