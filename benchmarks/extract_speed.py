"""Extraction speed: transferkit vs a plain PyTorch loop vs ONNX Runtime called directly.

One run, same images, model, size and batch. The plain baseline is what a user would write:
PIL + the model's torchvision transforms + the model in eval mode under torch.no_grad, batch
32, one process. Features of each engine are compared with the baseline's. transferkit's
`--quantize int8` runs too (calibrated on 64 of the images; its one-off quantisation timed
apart) and is compared by mean cosine similarity. With --memory, peak resident memory of
`transferkit extract` is measured at two dataset sizes.

    python benchmarks/extract_speed.py --images 512 --models efficientnet_lite0
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import cifar10_folder, command_line, record  # noqa: E402

from transferkit import build_backbone  # noqa: E402
from transferkit.core.data import LabelledImages  # noqa: E402
from transferkit.core.engines import LayerFeatures, export_onnx, make_engine, mean_cosine, resolve_engine  # noqa: E402
from transferkit.core.features import extract_features  # noqa: E402


def calibrate(backbone, transform, paths) -> None:
    """Random weights can drive activations into denormal floats that slow CPUs many times
    over; re-estimate BatchNorm statistics on real images so the network runs as a trained one."""
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    backbone.train()
    with torch.no_grad():
        backbone(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[:64]]))
    backbone.eval()


def plain_baseline(backbone, transform, paths, batch_size):
    features = []
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start : start + batch_size]])
            features.append(backbone.forward_features(batch).numpy())
    return np.concatenate(features), time.perf_counter() - started


def onnxruntime_direct(backbone, transform, paths, batch_size, size, folder):
    import onnxruntime

    path = Path(folder) / "direct.onnx"
    export_onnx(LayerFeatures(backbone, "penultimate"), torch.randn(2, 3, size, size), path, input_name="images", output_name="features")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    features = []
    started = time.perf_counter()
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start : start + batch_size]])
        features.append(session.run(None, {"images": batch.numpy()})[0])
    return np.concatenate(features), time.perf_counter() - started


def int8_extraction(backbone, paths, size, batch_size, cache):
    """`--quantize int8` features of ``paths``, their seconds, and the one-off quantisation's seconds."""
    calibration = LabelledImages(paths, np.zeros(len(paths), int), ["all"])
    common = {"image_size": size, "batch_size": batch_size, "cache_dir": cache, "quantize": "int8", "calibration": calibration, "progress": False}
    started = time.perf_counter()  # export + quantise + 8 images
    extract_features(paths[:8], np.zeros(8, int), backbone, data_fingerprint="int8-warm-up", **common)
    quantize_seconds = time.perf_counter() - started
    started = time.perf_counter()
    int8 = extract_features(paths, np.zeros(len(paths), int), backbone, data_fingerprint=f"bench-int8-{len(paths)}", **common)
    return np.asarray(int8.features), time.perf_counter() - started, quantize_seconds


def speed(args) -> list[str]:
    folder = cifar10_folder()
    paths = sorted((folder / "test").glob("*/*.jpg"))[:: max(1, 10000 // args.images)][: args.images]
    lines = [f"{len(paths)} CIFAR-10 test images, batch {args.batch_size}, {torch.get_num_threads()} torch threads", "",
             "| model | size | weights | plain PyTorch img/s | ONNX Runtime direct img/s | transferkit img/s | transferkit / plain | transferkit / ORT | one-off export s | max abs diff vs plain (transferkit, ORT) | transferkit int8 img/s | int8 / plain | int8 / ORT | one-off int8 s | int8 cosine vs plain |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in args.models:
        pretrained = name == "efficientnet_lite0"
        backbone = build_backbone(name, pretrained=pretrained).eval()
        size = args.image_size or backbone.spec.input_size
        transform = backbone.transform(size)
        if not pretrained:
            calibrate(backbone, transform, paths)
        baseline, plain_seconds = plain_baseline(backbone, transform, paths, args.batch_size)
        with tempfile.TemporaryDirectory() as tmp:
            direct, ort_seconds = onnxruntime_direct(backbone, transform, paths, args.batch_size, size, tmp)
            # The engine's one-off export (kept beside the cache for later runs) is timed apart.
            started = time.perf_counter()
            if resolve_engine(args.engine) == "onnxruntime":
                make_engine("onnxruntime", backbone, "penultimate", size, Path(tmp) / "engines")
            export_seconds = time.perf_counter() - started
            started = time.perf_counter()
            ours = extract_features(paths, np.zeros(len(paths), int), backbone, data_fingerprint=f"bench-{len(paths)}", image_size=size,
                                    batch_size=args.batch_size, cache_dir=tmp, engine=args.engine, progress=False)  # fmt: skip
            ours_seconds = time.perf_counter() - started
            difference = float(np.abs(np.asarray(ours.features) - baseline).max())
            ort_difference = float(np.abs(direct - baseline).max())
            int8, int8_seconds, quantize_seconds = int8_extraction(backbone, paths, size, args.batch_size, tmp)
        n = len(paths)
        weights = "pretrained" if pretrained else "random init, BatchNorm calibrated"
        lines.append(
            f"| {name} | {size} | {weights} | {n / plain_seconds:.1f} | {n / ort_seconds:.1f} | {n / ours_seconds:.1f} | "
            f"{plain_seconds / ours_seconds:.2f}x | {ort_seconds / ours_seconds:.2f}x | {export_seconds:.1f} | {difference:.1e}, {ort_difference:.1e} | "
            f"{n / int8_seconds:.1f} | {plain_seconds / int8_seconds:.2f}x | {ort_seconds / int8_seconds:.2f}x | {quantize_seconds:.1f} | {mean_cosine(int8, baseline):.3f} |"
        )
        print(lines[-1], flush=True)
    return lines


MEMORY_CHILD = """
import resource, sys, numpy as np
from pathlib import Path
from transferkit import build_backbone
from transferkit.core.features import extract_features
paths = sorted(Path(sys.argv[1]).glob('*/*.jpg'))[: int(sys.argv[2])]
backbone = build_backbone('efficientnet_lite0')
extract_features(paths, np.zeros(len(paths), int), backbone, data_fingerprint='mem-' + sys.argv[2], image_size=int(sys.argv[4]),
                 batch_size=64, cache_dir=sys.argv[3], progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def memory(args) -> list[str]:
    folder = cifar10_folder() / "train"
    lines = ["", f"Peak resident memory of one extraction (efficientnet_lite0, {args.memory_size} px, cold cache):", "",
             "| images | peak RSS MiB |", "|---|---|"]  # fmt: skip
    peaks = []
    for n in args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(folder), str(n), tmp, str(args.memory_size)], capture_output=True, text=True, check=True)
        peaks.append(int(out.stdout.split()[-1]) / 1024)
        lines.append(f"| {n} | {peaks[-1]:.0f} |")
        print(lines[-1], flush=True)
    lines.append(f"\nratio {args.memory[-1]} / {args.memory[0]} images: {peaks[-1] / peaks[0]:.2f}x")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--models", type=lambda s: [m for m in s.split(",") if m], default=["efficientnet_lite0"])
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--memory", type=lambda s: [int(v) for v in s.split(",")], default=None, help="e.g. 10000,50000")
    parser.add_argument("--memory-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    lines = speed(args) if args.models else []
    if args.memory:
        lines += memory(args)
    record("Extraction speed and memory", command_line(), lines)


if __name__ == "__main__":
    main()
