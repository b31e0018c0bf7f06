"""Where a `--cache-frozen` training step spends its time on the CPU, by kind of operator.

The step of `train --strategy finetune --unfreeze 2 --cache-frozen` (BENCHMARKS.md's CIFAR-10
recipe): a batch of cached layer-group outputs through the last two groups and the head, the
cross-entropy, backward and AdamW, channels-last. torch.profiler's self times are summed by
operator kind (forward and backward together); the forward 1x1 convolutions' FLOPs (counted from
their shapes) per second are set against the CPU's measured fp32 matmul peak.

    python benchmarks/cached_step_profile.py --image-size 192 --batch-size 128
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from _common import command_line, record  # noqa: E402
from train_speed import best_seconds, matmul_gflops  # noqa: E402

from transferkit import build_backbone  # noqa: E402


def kind(event) -> str:
    """Operator kind of a profiler event: convolutions split by their weight's shape (1x1 or depthwise)."""
    name = event.key
    if name.startswith("aten::convolution_backward") or name == "aten::mkldnn_convolution":
        weight = event.input_shapes[2] if "backward" in name else event.input_shapes[1]
        pointwise = len(weight) == 4 and weight[2:] == [1, 1]
        return f"1x1 convolution {'backward' if 'backward' in name else 'forward'}" if pointwise else "depthwise convolution"
    if "batch_norm" in name:
        return "batch norm"
    if "hardtanh" in name or "clamp" in name:
        return "ReLU6"
    if name in ("aten::copy_", "aten::fill_", "aten::constant_pad_nd", "aten::zero_"):
        return "copies, padding"
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--unfreeze", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.manual_seed(0)
    peak = matmul_gflops()
    backbone = build_backbone(args.model)  # the real weights: the step's activations are the run's
    backbone.reset_classifier(10)
    groups = backbone.layer_groups()
    first_trained = len(groups) - args.unfreeze  # forward_from's 1-based group: the last frozen one
    backbone.requires_grad_(False)
    trained = [m for group in groups[first_trained:] for m in group] + [backbone.classifier]
    for module in trained:
        module.requires_grad_(True)
    backbone.train()
    for module in (m for group in groups[:first_trained] for m in group):
        module.eval()
    backbone.to(memory_format=torch.channels_last)
    images = torch.randn(2, 3, args.image_size, args.image_size)
    shape = backbone.group_output(images, first_trained).shape[1:]
    inputs = torch.randn(args.batch_size, *shape).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-3)

    def step():
        loss = F.cross_entropy(backbone.forward_from(inputs, first_trained, args.image_size), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds = best_seconds(step, 5)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(3):
            step()
    by_kind: dict[str, float] = defaultdict(float)
    pointwise_flops = 0.0  # forward, of the batch (not forward_from's one-image stand-in)
    for event in prof.key_averages(group_by_input_shape=True):
        by_kind[kind(event)] += event.self_cpu_time_total / 3e6  # microseconds over 3 steps -> s per step
        if kind(event) == "1x1 convolution forward" and event.input_shapes[0][0] == args.batch_size:
            (n, c, h, w), (out_channels, *_) = event.input_shapes[0], event.input_shapes[1]
            pointwise_flops += 2 * n * h * w * c * out_channels * event.count / 3
    profiled = sum(by_kind.values())
    pointwise_seconds = by_kind["1x1 convolution forward"]
    lines = [
        f"{args.model}, last {args.unfreeze} layer groups on cached outputs {tuple(shape)}, {args.image_size} px, batch {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads, channels-last; fp32 matmul peak {peak:.0f} GFLOP/s; a step takes {seconds:.2f} s "
        f"({args.batch_size / seconds:.0f} img/s); profiled self time {profiled:.2f} s per step",
        "",
        "| operator kind | s per step | share |",
        "|---|---|---|",
        *(f"| {name} | {value:.3f} | {value / profiled:.0%} |" for name, value in sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "",
        f"Forward 1x1 convolutions: {pointwise_flops / 1e9:.1f} GFLOP per step in {pointwise_seconds:.2f} s = "
        f"{pointwise_flops / pointwise_seconds / 1e9:.0f} GFLOP/s, {pointwise_flops / pointwise_seconds / 1e9 / peak:.0%} of the matmul peak",
    ]
    print("\n".join(lines), flush=True)
    record("Where a --cache-frozen training step's time goes", command_line(), lines)


if __name__ == "__main__":
    main()
