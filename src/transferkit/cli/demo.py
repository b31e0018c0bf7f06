"""`transferkit demo`: the main job on the embedded model and data."""

from __future__ import annotations

import tempfile
from pathlib import Path

from transferkit.cli._app import command
from transferkit.errors import TransferkitError


@command("demo")
def demo() -> None:
    """Classify scikit-image's sample photos with the embedded EfficientNet-Lite0."""
    try:
        from skimage import data
    except ImportError:
        raise TransferkitError("the demo photos come from scikit-image: pip install scikit-image") from None
    from PIL import Image

    from transferkit.asis import predict

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name in ("chelsea", "coffee", "astronaut", "rocket"):
            path = Path(tmp) / f"{name}.png"
            Image.fromarray(getattr(data, name)()).save(path)
            paths.append(path)
        for result in predict(paths, top_k=3, progress="predict"):
            best = result["top"][0]
            print(f"{Path(result['image']).stem:10s} {best['label']} ({best['probability']:.0%})")
