"""The infrastructure layer: data, images, backbones, features and their cache, engines, heads, run folders and reports. Imports nothing above it."""

__version__ = "0.1.0"
