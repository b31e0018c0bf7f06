"""A loaded run scoring one image at a time from Python, beside `classify` on a folder.

    python benchmarks/predict_one.py [--images 100] [--engine auto|torch|onnxruntime]

Trains a linear head on the embedded EfficientNet-Lite0 (scikit-learn's digits as PNG files,
64 px), loads the run once, then times ``run.predict([path])`` image by image (the first call
builds the engine and is timed apart) and ``transferkit.classify(run_dir, [folder])`` on the
same images, in one process. Prints images/s of each.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine  # noqa: E402

import transferkit  # noqa: E402


def digits_folder(root: Path, per_class: int) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(10):
        (root / str(label)).mkdir(parents=True)
        for i, row in enumerate(np.flatnonzero(digits.target == label)[:per_class]):
            Image.fromarray(np.round(digits.images[row] * (255 / 16)).astype(np.uint8)).resize((32, 32)).save(root / str(label) / f"{i}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--engine", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        data = digits_folder(root / "digits", 20)
        run_dir = root / "run"
        transferkit.train(str(data), run_dir, strategy="linear", image_size=64, progress=False, cache_dir=str(root / "cache"))
        images = sorted(str(p) for p in data.rglob("*.png"))[: args.images]
        run = transferkit.load_run(run_dir)
        started = time.perf_counter()
        run.predict(images[:1], engine=args.engine)
        first = time.perf_counter() - started
        started = time.perf_counter()
        for image in images:
            run.predict([image], engine=args.engine)
        one_by_one = len(images) / (time.perf_counter() - started)
        started = time.perf_counter()
        transferkit.classify(run_dir, images, engine=args.engine)
        batched = len(images) / (time.perf_counter() - started)
    print(f"machine: {machine()}")
    print(f"engine {args.engine}: first predict call {first:.2f} s; then one image a call {one_by_one:.1f} images/s; "
          f"classify on the {len(images)} files at once {batched:.1f} images/s (ratio {one_by_one / batched:.2f})")


if __name__ == "__main__":
    main()
