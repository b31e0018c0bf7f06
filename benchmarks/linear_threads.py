"""The linear head's fit with one BLAS thread (LinearHead's default) against the BLAS pool's default.

One process, the same cached CIFAR-10 features (`train_cifar10.py`'s split, Lite0 at 224 px with
flip TTA: 49,000 x 1280), the two settings alternating; each fit is the whole `LinearHead.fit`
(the cross-validated C path over both scalings, then the final fit). Needs the features cached
by `python benchmarks/train_cifar10.py linear-full-flip` (else it extracts them first).

    python benchmarks/linear_threads.py --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

from threadpoolctl import threadpool_info

sys.path.insert(0, str(Path(__file__).parent))
from _common import ROOT, command_line, record  # noqa: E402
from train_cifar10 import cifar10_dataset  # noqa: E402

from transferkit import build_backbone  # noqa: E402
from transferkit.core.features import extract_features  # noqa: E402
from transferkit.core.heads import LinearHead  # noqa: E402


def features(backbone, images, cache_dir):
    entry = extract_features(images.samples, images.labels, backbone, data_fingerprint=images.fingerprint(), flip_tta=True, cache_dir=cache_dir, progress="extract")
    return entry.usable()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--cache-dir", default=str(ROOT / ".data" / "bench-cache"))
    args = parser.parse_args()
    dataset, backbone = cifar10_dataset(), build_backbone("efficientnet_lite0")
    (X, y), (Xt, yt) = features(backbone, dataset.train, args.cache_dir), features(backbone, dataset.test, args.cache_dir)
    pool = max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")
    if pool == 1:
        sys.exit("the BLAS pool has one thread here: nothing to compare")
    lines = [f"LinearHead.fit on {X.shape[0]} x {X.shape[1]} CIFAR-10 features; BLAS pool of {pool} threads", "",
             "| round | BLAS threads | fit s | scaling, C chosen | test acc |", "|---|---|---|---|---|"]  # fmt: skip
    seconds = {1: [], pool: []}
    warnings.simplefilter("ignore")  # ConvergenceWarning at the largest C of the path
    for round_ in range(1, args.rounds + 1):
        for threads in (1, pool):
            head = LinearHead(blas_threads=1 if threads == 1 else None)
            started = time.perf_counter()
            head.fit(X, y)
            seconds[threads].append(time.perf_counter() - started)
            lines.append(f"| {round_} | {threads} | {seconds[threads][-1]:.1f} | {head.scaling_}, {head.C_} | {head.score(Xt, yt):.2%} |")
            print(lines[-1], flush=True)
    lines.append(f"\none thread / {pool} threads, time: {sum(seconds[1]) / sum(seconds[pool]):.2f}")
    record("Linear head: one BLAS thread", command_line(), lines)


if __name__ == "__main__":
    main()
