"""What `transferkit check` costs beyond feature extraction, on a folder of N CIFAR-10 JPEG files.

    python benchmarks/check_speed.py [--images 30000]

Extracts (or reuses) the embedded Lite0's features of the first N training files of CIFAR-10
(../shared/datasets, extracted into .data/) into a cache, then times `transferkit.check` on the
same folder twice in one process: the first call reads the cached features, so its time is the
check itself (file headers and decoding, hashes, near-duplicate search, out-of-fold probe,
confident learning); the second shows the spread.  Prints seconds and images/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import cifar10_folder, machine  # noqa: E402

import transferkit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=30_000)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    source = cifar10_folder() / "train"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "cifar"
        classes = sorted(p.name for p in source.iterdir())
        per_class = args.images // len(classes)
        for name in classes:  # links, not copies: the check reads the same bytes
            (root / name).mkdir(parents=True)
            for file in sorted((source / name).iterdir())[:per_class]:
                os.symlink(file, root / name / file.name)
        cache = args.cache_dir or str(Path(folder) / "cache")
        started = time.perf_counter()
        transferkit.extract(str(root), cache_dir=cache, progress=False)
        extraction = time.perf_counter() - started
        times = []
        for _ in range(2):
            started = time.perf_counter()
            report = transferkit.check(str(root), cache_dir=cache, progress=False)
            times.append(time.perf_counter() - started)
    n = sum(report["splits"].values())
    print(f"machine: {machine()}")
    print(f"{n:,} images: extraction {extraction:.0f} s; check beyond it {times[0]:.1f} s and {times[1]:.1f} s ({n / min(times):,.0f} images/s)")


if __name__ == "__main__":
    main()
