"""Training-step speed on the CPU: channels-last vs the default layout, against the matmul peak.

One process, same model, image size, batch and random inputs; the two memory layouts take turns
so that machine noise hits both. A step is what `transferkit train --strategy finetune` runs
per batch once everything is unfrozen: forward, cross-entropy, backward, AdamW. The share of
the CPU's measured fp32 matrix-multiply peak says how far the network is from what the cores
can do (forward FLOPs counted by torch's FlopCounterMode; a training step taken as 3x forward).

    python benchmarks/train_speed.py --models efficientnet_lite0 --image-size 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, record  # noqa: E402

from transferkit import build_backbone  # noqa: E402
from transferkit.core.backbones import get_spec  # noqa: E402


def best_seconds(fn, reps: int) -> float:
    fn()  # warm-up: oneDNN picks and caches its kernels on the first call
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def matmul_gflops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / best_seconds(lambda: a @ b, 5) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per layout and round (best kept)")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_flush_denormal(True)  # random-init networks would otherwise hit denormal floats
    peak = matmul_gflops()
    print(f"fp32 matmul peak: {peak:.0f} GFLOP/s on {torch.get_num_threads()} threads", flush=True)
    lines = [
        f"batch {args.batch_size}, {args.image_size} px, {torch.get_num_threads()} torch threads; fp32 matmul peak {peak:.0f} GFLOP/s; denormals flushed",
        "",
        "| model | weights | forward GFLOP/img | train img/s (default) | train img/s (channels-last) | channels-last / default | train share of peak (channels-last) | inference img/s (default) | inference img/s (channels-last) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch_size,))
    for name in args.models.split(","):
        pretrained = get_spec(name).has_pretrained and name == "efficientnet_lite0"  # the only weights on this machine
        net = build_backbone(name, pretrained=pretrained)
        net.reset_classifier(10, 0.2)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            net.eval()(x)
        flops = counter.get_total_flops() / args.batch_size
        optimiser = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step(inputs):
            optimiser.zero_grad()
            F.cross_entropy(net(inputs), y).backward()
            optimiser.step()

        train, infer = {}, {}
        for _ in range(2):  # two rounds, layouts alternating
            for layout in (torch.contiguous_format, torch.channels_last):
                net.to(memory_format=layout)
                inputs = x.contiguous(memory_format=layout)
                net.train()
                train[layout] = max(train.get(layout, 0), args.batch_size / best_seconds(lambda: step(inputs), args.steps))
                net.eval()
                with torch.inference_mode():
                    infer[layout] = max(infer.get(layout, 0), args.batch_size / best_seconds(lambda: net(inputs), args.steps))
        default, last = train[torch.contiguous_format], train[torch.channels_last]
        share = last * 3 * flops / 1e9 / peak
        lines.append(
            f"| {name} | {'pretrained' if pretrained else 'random init'} | {flops / 1e9:.3f} | {default:.0f} | {last:.0f} | {last / default:.2f}x "
            f"| {share:.0%} | {infer[torch.contiguous_format]:.0f} | {infer[torch.channels_last]:.0f} |"
        )  # fmt: skip
        print(lines[-1], flush=True)
    record("Training-step speed (channels-last)", command_line(), lines)


if __name__ == "__main__":
    main()
