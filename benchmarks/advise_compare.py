"""Does `advise` recommend what `compare` then measures as best? On digits and CIFAR-10 (100 per class).

    python benchmarks/advise_compare.py digits cifar10-100

For each dataset: the advice (case, strategy, layer, image size, the probes behind it), then a
comparison of the candidate strategies on the same training images, and whether the advised
cell is the best on validation (as `compare` chooses) and how far it is from that cell on test.
CIFAR-10's test set is subsampled to 2,000 images (200 per class) to keep the fine-tuning
cell's evaluation short.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import ROOT, cifar10_folder, command_line, record  # noqa: E402

from transferkit.plan.advice import advise  # noqa: E402
from transferkit.plan.comparison import Cell, best, compare  # noqa: E402
from transferkit.core.data import load_data  # noqa: E402

MODEL = "efficientnet_lite0"


def dataset(name: str):
    if name == "digits":
        return load_data("digits")
    data = load_data(str(cifar10_folder()))
    data.splits["train"] = data.train.per_class(100, seed=0)
    data.splits["val"] = data.val.per_class(50, seed=0)
    data.splits["test"] = data.test.per_class(200, seed=0)
    data.name = "cifar10-100"
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+", choices=["digits", "cifar10-100"])
    args = parser.parse_args()
    cache = str(ROOT / ".data" / "bench-cache")
    lines = []
    for name in args.datasets:
        data = dataset(name)
        started = time.perf_counter()
        advice = advise(data, model=MODEL, cache_dir=cache, progress=False)
        advise_seconds = time.perf_counter() - started
        size = advice.image_size
        probes = ", ".join(f"{k} {v:.1%}" for k, v in advice.evidence["probe_accuracy"].items())
        lines += [f"### {name}", "", f"- advice ({advise_seconds:.0f} s): **{advice.case}** -> `--strategy {advice.strategy} --layer {advice.layer} --image-size {size}`",
                  f"- probes on {advice.evidence['sample_images']} sampled images: {probes}",
                  f"- ImageNet confidence {advice.evidence['imagenet_confidence']:.2f}; sizes tried: "
                  + ", ".join(f"{s} px {a:.1%}" for s, a in advice.evidence["probe_accuracy_by_image_size"].items()), ""]  # fmt: skip
        sized = (("image_size", size),)
        cells = [Cell(MODEL, "linear", layer, sized) for layer in ("penultimate", "stage1", "stage2", "stage3", "stage4")]
        cells.append(Cell(MODEL, "finetune", "penultimate", sized + (("epochs", 5), ("lr", 3e-3), ("augment", "none" if name == "digits" else "light"))))
        with tempfile.TemporaryDirectory() as out:
            rows = compare(data, cells, out, progress=False, echo=lambda *_: None, cache_dir=cache)
        top = best(rows)
        advised = next(r for r in rows if r["strategy"] == advice.strategy and r["layer"] == advice.layer)
        lines += ["| cell | val acc | test acc | train s |", "|---|---|---|---|"]
        lines += [f"| {r['model']} / {r['strategy']} / {r['layer']} | {r['val_acc']:.2%} | {r['test_acc']:.2%} | {r.get('train_seconds', 0):.0f} |" for r in rows if r.get("test_acc") is not None]
        # best() chooses on validation accuracy, as `compare` does; test accuracy is reported beside it.
        verdict = "the best on validation" if advised is top else (
            f"{top['val_acc'] - advised['val_acc']:.1%} below the best on validation ({top['strategy']} / {top['layer']}), "
            f"{top['test_acc'] - advised['test_acc']:+.1%} on test")  # fmt: skip
        lines += ["", f"Advised cell ({advice.strategy} / {advice.layer}): val {advised['val_acc']:.2%}, test {advised['test_acc']:.2%}, {verdict}.", ""]
        print("\n".join(lines[-12:]), flush=True)
    record("Advice vs measurement", command_line(), lines)


if __name__ == "__main__":
    main()
