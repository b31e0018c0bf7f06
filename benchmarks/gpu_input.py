"""Where extraction and training time goes beside a GPU: the image loader alone, the network alone.

One process, 5000 CIFAR-10 test images at the model's size. The loader rows run transferkit's
DataLoader (decoding and transforms in worker processes) with no network, for the extraction
transform (float32, normalised), the training transform (random crops and flips) and the same
images left as uint8 (normalisation would then run on the GPU); the network rows run
Lite0 on batches already on the GPU, channels-last or not, with cuDNN's TF32 on or off, and
report the largest feature difference from float32 on the CPU.

    python benchmarks/gpu_input.py --images 5000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import cifar10_folder, command_line, record, synchronize  # noqa: E402

from transferkit import build_backbone  # noqa: E402
from transferkit.core.engines import LayerFeatures  # noqa: E402
from transferkit.core.loader import iterate_batches  # noqa: E402

DEVICE = torch.device("cuda")


def loader_rate(paths, transform, batch_size: int, workers: int | None, to_device: bool = False) -> float:
    started = time.perf_counter()
    for batch in iterate_batches(paths, transform, batch_size=batch_size, num_workers=workers):
        if to_device:
            batch.images.to(DEVICE)
    synchronize(DEVICE)
    return len(paths) / (time.perf_counter() - started)


def network_rate(model, images: torch.Tensor, batch_size: int, channels_last: bool, tf32: bool) -> tuple[float, torch.Tensor]:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = model.eval().to(DEVICE).to(memory_format=layout)
    batches = [b.to(DEVICE).contiguous(memory_format=layout) for b in images.split(batch_size)]
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32), torch.inference_mode():
        model(batches[0])  # warm-up
        synchronize(DEVICE)
        started = time.perf_counter()
        out = torch.cat([model(b).float() for b in batches])
        synchronize(DEVICE)
    return len(images) / (time.perf_counter() - started), out.cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script, without recording")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    paths = sorted((cifar10_folder() / "test").glob("*/*.jpg"))[:: max(1, 10000 // args.images)][: args.images]
    backbone = build_backbone("efficientnet_lite0").eval()
    size = backbone.spec.input_size
    extract_tf, train_tf = backbone.transform(size), backbone.spec.transform(size, is_training=True, augment="light")
    uint8_tf = backbone.transform(size, uint8=True)
    lines = [f"{len(paths)} CIFAR-10 test images at {size} px, efficientnet_lite0", "", "| stage | variant | img/s |", "|---|---|---|"]

    def row(stage: str, variant: str, rate: float) -> None:
        lines.append(f"| {stage} | {variant} | {rate:.0f} |")
        print(lines[-1], flush=True)

    for workers in (None, 4, 8):
        row("loader", f"extraction transform, float32, batch 32, workers {workers or 'default'}", loader_rate(paths, extract_tf, 32, workers))
    row("loader", "extraction transform, float32, batch 256, default workers", loader_rate(paths, extract_tf, 256, None))
    row("loader", "extraction transform, float32, batch 32, default workers, copied to the device", loader_rate(paths, extract_tf, 32, None, True))
    row("loader", "extraction transform stopped at uint8, batch 32, default workers", loader_rate(paths, uint8_tf, 32, None))
    row("loader", "training transform, float32, batch 128, default workers", loader_rate(paths, train_tf, 128, None))
    images = torch.cat([b.images for b in iterate_batches(paths[:1024], extract_tf, batch_size=256)])
    reference = backbone.features(images[:64], "penultimate").detach()  # float32 on the CPU
    for channels_last in (True, False):
        for tf32 in (True, False):
            for batch in (32, 256):
                rate, out = network_rate(LayerFeatures(backbone, "penultimate"), images, batch, channels_last, tf32)
                difference = float((out[:64] - reference).abs().max())
                row("network", f"batch {batch}, {'channels-last' if channels_last else 'NCHW'}, TF32 {'on' if tf32 else 'off'}, max diff vs CPU {difference:.1e}", rate)
    if DEVICE.type != "cuda":
        return
    record("GPU input pipeline: loader alone, network alone", command_line(), lines)


if __name__ == "__main__":
    main()
