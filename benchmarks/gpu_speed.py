"""Speed on a CUDA GPU: extraction (transferkit vs a plain PyTorch loop) and the training step (float32 vs bf16-mixed).

One process; each comparison uses the same images, model, size and batch. Extraction: the plain
baseline is the loop a user would write (PIL and the model's transforms in the main process,
the model on the GPU in eval mode under torch.no_grad); transferkit is `extract_features` with its
defaults (PyTorch on the GPU, images decoded in DataLoader workers), at the same batch and at a
larger one. Training step: forward, cross-entropy, backward and AdamW on random inputs,
channels-last, in float32 and under bfloat16 autocast (what `--precision bf16-mixed`, the GPU
default, runs), timed between CUDA synchronisations; the share of the GPU's measured bf16
matrix-multiply peak says how far each network is from the chip.

    python benchmarks/gpu_speed.py --images 5000 --models efficientnet_lite0,resnet50
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from _common import cifar10_folder, command_line, record, synchronize  # noqa: E402
from extract_speed import calibrate  # noqa: E402

from transferkit import build_backbone  # noqa: E402
from transferkit.core.features import extract_features  # noqa: E402


DEVICE = torch.device("cuda")  # --device cpu: a dry run of this script on a machine without a GPU


def synchronised_seconds(fn, reps: int) -> float:
    """Mean seconds per call after three warm-up calls (cuDNN picks its kernels on the first)."""
    for _ in range(3):
        fn()
    synchronize(DEVICE)
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    synchronize(DEVICE)
    return (time.perf_counter() - started) / reps


def bf16_matmul_tflops(n: int = 8192) -> float:
    a, b = (torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
    return 2 * n**3 / synchronised_seconds(lambda: a @ b, 10) / 1e12


def plain_loop(backbone, transform, paths, batch_size) -> tuple[np.ndarray, float]:
    model = backbone.to(DEVICE).eval()
    features = []
    synchronize(DEVICE)
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start : start + batch_size]])
            features.append(model.forward_features(batch.to(DEVICE)).cpu().numpy())
    seconds = time.perf_counter() - started
    backbone.cpu()
    return np.concatenate(features), seconds


def extraction(args, paths) -> list[str]:
    lines = [f"Extraction: {len(paths)} CIFAR-10 test images, penultimate features; the plain loop with PyTorch's defaults (TF32 convolutions), "
             "transferkit in float32", "",
             f"| model | size | weights | plain loop img/s (batch {args.batch_size}) | transferkit img/s (batch {args.batch_size}) | transferkit / plain "
             f"| transferkit img/s (batch {args.big_batch}) | max abs diff vs plain |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in args.models:
        pretrained = name == "efficientnet_lite0"  # the only weights on the machines this project runs on
        backbone = build_backbone(name, pretrained=pretrained).eval()
        size = backbone.spec.input_size
        transform = backbone.transform(size)
        if not pretrained:
            calibrate(backbone, transform, paths)
        baseline, plain_seconds = plain_loop(backbone, transform, paths, args.batch_size)
        ours = {}
        with tempfile.TemporaryDirectory() as cache:
            for batch in (args.batch_size, args.big_batch):
                synchronize(DEVICE)
                started = time.perf_counter()
                entry = extract_features(paths, np.zeros(len(paths), int), backbone, data_fingerprint=f"gpu-{batch}", batch_size=batch,
                                         cache_dir=cache, progress=False)  # fmt: skip
                ours[batch] = (time.perf_counter() - started, np.asarray(entry.features))
        n, (seconds, features) = len(paths), ours[args.batch_size]
        difference = max(float(np.abs(f - baseline).max()) for _, f in ours.values())
        lines.append(f"| {name} | {size} | {'pretrained' if pretrained else 'random init, BatchNorm calibrated'} | {n / plain_seconds:.0f} | {n / seconds:.0f} "
                     f"| {plain_seconds / seconds:.2f}x | {n / ours[args.big_batch][0]:.0f} | {difference:.1e} |")  # fmt: skip
        print(lines[-1], flush=True)
    return lines


def training_step(args, peak: float) -> list[str]:
    lines = ["", f"Training step: batch {args.train_batch}, channels-last, random inputs; bf16 matmul peak {peak:.0f} TFLOP/s (8192^3, measured)", "",
             "| model | size | forward GFLOP/img | float32 img/s | bf16-mixed img/s | bf16 / float32 | bf16 share of peak | peak memory GiB (bf16) |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in args.models:
        net = build_backbone(name, pretrained=name == "efficientnet_lite0")
        net.reset_classifier(10, 0.2)
        size = args.train_size or net.spec.input_size
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net.eval()(torch.randn(2, 3, size, size))
        flops = counter.get_total_flops() / 2
        net = net.to(DEVICE).to(memory_format=torch.channels_last).train()
        optimiser = torch.optim.AdamW(net.parameters(), lr=1e-4)
        x = torch.randn(args.train_batch, 3, size, size, device=DEVICE).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (args.train_batch,), device=DEVICE)
        speeds, memory = {}, 0.0
        for precision in ("float32", "bf16-mixed"):

            def step():
                optimiser.zero_grad(set_to_none=True)
                with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
                    loss = F.cross_entropy(net(x), y)
                loss.backward()
                optimiser.step()

            if DEVICE.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            speeds[precision] = args.train_batch / synchronised_seconds(step, args.steps)
            memory = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else float("nan")
        bf16 = speeds["bf16-mixed"]
        lines.append(f"| {name} | {size} | {flops / 1e9:.2f} | {speeds['float32']:.0f} | {bf16:.0f} | {bf16 / speeds['float32']:.2f}x "
                     f"| {bf16 * 3 * flops / 1e12 / peak:.1%} | {memory:.1f} |")  # fmt: skip
        print(lines[-1], flush=True)
        del net, optimiser
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--models", type=lambda s: [m for m in s.split(",") if m], default=["efficientnet_lite0"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--big-batch", type=int, default=256)
    parser.add_argument("--train-batch", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=None, help="image size of the training step (default: each model's own)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--parts", default="extraction,training", help="which comparisons to run")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script, without recording")
    args = parser.parse_args()
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: benchmarks/extract_speed.py and train_speed.py measure the CPU")
    folder = cifar10_folder()
    paths = sorted((folder / "test").glob("*/*.jpg"))[:: max(1, 10000 // args.images)][: args.images]
    lines = extraction(args, paths) if "extraction" in args.parts else []
    if "training" in args.parts:
        peak = bf16_matmul_tflops(8192 if DEVICE.type == "cuda" else 512)
        lines += training_step(args, peak)
    if DEVICE.type != "cuda":
        return print("\n".join(lines))
    record("GPU speed: extraction and training step", command_line(), lines)


if __name__ == "__main__":
    main()
