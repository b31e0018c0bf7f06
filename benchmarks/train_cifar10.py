"""CIFAR-10 accuracy and wall time of transferkit's strategies, from JPEG files to test accuracy.

    python benchmarks/train_cifar10.py linear-100-flip linear-500-flip finetune-500 linear-full-flip

Each configuration is one `transferkit.train` call on the CIFAR-10 JPEG folders (50,000
train, 10,000 test), timed as a whole (listing the files, extraction, training, evaluation). The feature cache
is the benchmark's own (`.data/bench-cache`, or `--cache-dir`); the table says whether a run found its
features already cached. Validation uses 100 images per class (49,000 images remain for training); the
test set is always the full 10,000.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import ROOT, cifar10_folder, command_line, record  # noqa: E402

import numpy as np  # noqa: E402

from transferkit.core.data import LabelledImages, load_data  # noqa: E402
from transferkit.api import train  # noqa: E402

# The last layer group(s) fine-tuned on the cached output of the frozen ones (--cache-frozen).
CACHED = {"strategy": "finetune", "cache_frozen": True, "head_epochs": 0, "lr": 3e-3, "backbone_lr_mult": 0.33, "label_smoothing": 0.1, "batch_size": 128}
CONFIGS = {
    "linear-100": {"strategy": "linear", "per_class": 100},
    "linear-100-flip": {"strategy": "linear", "per_class": 100, "flip_tta": True},
    "linear-100-int8": {"strategy": "linear", "per_class": 100, "quantize": "int8"},
    "linear-500": {"strategy": "linear", "per_class": 500},
    "linear-500-flip": {"strategy": "linear", "per_class": 500, "flip_tta": True},
    "linear-500-int8": {"strategy": "linear", "per_class": 500, "quantize": "int8"},
    "linear-full": {"strategy": "linear"},
    "linear-full-flip": {"strategy": "linear", "flip_tta": True},
    "mlp-full-flip": {"strategy": "mlp", "flip_tta": True},
    "mlp-full-flip-seed1": {"strategy": "mlp", "flip_tta": True, "seed": 1},
    "mlp-full": {"strategy": "mlp"},
    "mlp-500-flip": {"strategy": "mlp", "per_class": 500, "flip_tta": True},
    "mlp-100-flip": {"strategy": "mlp", "per_class": 100, "flip_tta": True},
    "mlp-full-flip-d5": {"strategy": "mlp", "flip_tta": True, "dropout": 0.5},
    "mlp-full-flip-d5-seed1": {"strategy": "mlp", "flip_tta": True, "dropout": 0.5, "seed": 1},
    "linear-full-flip-288": {"strategy": "linear", "flip_tta": True, "image_size": 288},
    "linear-500-128": {"strategy": "linear", "per_class": 500, "image_size": 128},
    "finetune-500-e10-ls": {"strategy": "finetune", "per_class": 500, "image_size": 128, "epochs": 10, "lr": 3e-3, "augment": "light", "batch_size": 64, "label_smoothing": 0.1},
    "finetune-500": {"strategy": "finetune", "per_class": 500, "image_size": 128, "epochs": 8, "lr": 3e-3, "augment": "light", "batch_size": 64},
    "finetune-full-64": {"strategy": "finetune", "image_size": 64, "epochs": 4, "lr": 3e-3, "augment": "light", "batch_size": 64},
    "cached-u2-192-e2": {**CACHED, "unfreeze": "2", "image_size": 192, "epochs": 2},
    "cached-u2-176-e2": {**CACHED, "unfreeze": "2", "image_size": 176, "epochs": 2},
    "cached-u2-192-e3": {**CACHED, "unfreeze": "2", "image_size": 192, "epochs": 3},
    "cached-u2-224-e2": {**CACHED, "unfreeze": "2", "epochs": 2},
    "cached-u1-224-e3": {**CACHED, "unfreeze": "1", "epochs": 3},
    # For a GPU: the whole network from the first step, at the native size and at 128 px.
    "finetune-full-224-e3": {"strategy": "finetune", "epochs": 3, "head_epochs": 0, "lr": 3e-3, "augment": "light", "batch_size": 128},
    "finetune-full-128-e3": {"strategy": "finetune", "image_size": 128, "epochs": 3, "head_epochs": 0, "lr": 3e-3, "augment": "light", "batch_size": 128},
}


def cifar10_dataset():
    """CIFAR-10's JPEG folders with 100 validation images per class; the rest of the held-out
    10,000 go back to training (49,000 images), the test set is the full 10,000."""
    dataset = load_data(str(cifar10_folder()))
    val = dataset.val.per_class(100, seed=0)
    kept = set(map(str, val.samples))
    rest = [i for i, s in enumerate(dataset.val.samples) if str(s) not in kept]
    extra = dataset.val.subset(rest)
    dataset.splits["train"] = LabelledImages(list(dataset.train.samples) + list(extra.samples), np.concatenate([dataset.train.labels, extra.labels]),
                                             dataset.classes, root=dataset.train.root)  # fmt: skip
    dataset.splits["val"] = val
    return dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", choices=sorted(CONFIGS))
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--cache-dir", default=str(ROOT / ".data" / "bench-cache"), help="feature cache (an empty folder: a cold run)")
    parser.add_argument("--keep-runs", metavar="DIR", help="keep each run folder under DIR (default: a temporary folder)")
    args = parser.parse_args()
    lines = ["| config | options | train images | test acc | wall s | extract s | train s | features cached | head chosen |", "|---|---|---|---|---|---|---|---|---|"]
    for name in args.configs:
        options = {"model": args.model, "cache_dir": args.cache_dir, **CONFIGS[name]}
        with tempfile.TemporaryDirectory() as scratch:
            started = time.perf_counter()  # listing the JPEG files is part of the command
            result = train(cifar10_dataset(), Path(args.keep_runs or scratch) / name, progress=False, **options)
            seconds = time.perf_counter() - started
        summary = result.metrics["summary"]
        shown = ", ".join(f"{k}={v}" for k, v in CONFIGS[name].items())
        lines.append(f"| {name} | {shown} | {summary['train_images']} | {summary['test_acc']:.2%} | {seconds:.0f} | {_seconds(summary, 'extract')} | {_seconds(summary, 'train')} | {summary.get('features_cached', '-')} | {_head(summary)} |")
        print(lines[-1], flush=True)
    record(f"CIFAR-10 training ({args.model})", command_line(), ["Test accuracy on the 10,000 CIFAR-10 test images; wall time of listing the files and the whole train call (extract s:"
           " features or frozen layers' outputs, train s: the head or the Trainer; the rest is evaluation).", "", *lines])


def _seconds(summary: dict, stage: str) -> str:
    value = summary.get(f"{stage}_seconds")
    return f"{value:.0f}" if value else "-"


def _head(summary: dict) -> str:
    """The scaling and C that cross-validation chose for a head on features."""
    chosen = [f"{k.removeprefix('chosen_')}={summary[k]}" for k in ("chosen_scaling", "chosen_C") if summary.get(k) is not None]
    return ", ".join(chosen) or "-"


if __name__ == "__main__":
    main()
