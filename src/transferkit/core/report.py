"""What a person reads after a run: metrics from predictions, plots, and report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = np.arange(len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan"),
        "count": int(len(y_true)),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def accuracy_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy measured on ``total`` images: honest at 0 or 100%
    and on small test sets, where the normal approximation is not."""
    from scipy.stats import binomtest

    if total < 1:
        return float("nan"), float("nan")
    interval = binomtest(int(correct), int(total)).proportion_ci(confidence, method="wilson")
    return float(interval.low), float(interval.high)


def most_confused(confusion: Sequence[Sequence[int]], classes: Sequence[str], n: int = 10) -> list[dict]:
    """The ``n`` largest off-diagonal cells: which true class is taken for which, how often,
    and what share of the true class that is."""
    counts = np.asarray(confusion, dtype=np.int64)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:n]
    rows = []
    for true, predicted in zip(*np.unravel_index(order, off.shape)):
        if off[true, predicted] == 0:
            break
        rows.append({"true": classes[true], "predicted": classes[predicted], "count": int(off[true, predicted]),
                     "share": float(off[true, predicted] / max(counts[true].sum(), 1))})  # fmt: skip
    return rows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(confusion: list[list[int]], classes: Sequence[str], path: Path, title: str) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _pyplot()
    size = min(4 + 0.4 * len(classes), 16)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(np.asarray(confusion), display_labels=list(classes)).plot(
        ax=ax, colorbar=False, xticks_rotation="vertical", include_values=len(classes) <= 20
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict], path: Path, x: str, title: str) -> None:
    """Accuracy (and loss, where recorded) against ``x``: epochs, or training images for heads."""
    plt = _pyplot()
    keys = [k for k in ("acc", "loss") if any(row.get(f"{split}_{k}") is not None for row in history for split in ("train", "val"))]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    xs = [row[x] for row in history]
    for key, ax in zip(keys, axes[0]):
        for split in ("train", "val"):
            ys = [row.get(f"{split}_{key}") for row in history]
            if any(y is not None for y in ys):
                ax.plot(xs, [np.nan if y is None else y for y in ys], marker="o", label=split)
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel("accuracy" if key == "acc" else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bars(labels: Sequence[str], values: Sequence[float], path: Path, title: str, xlabel: str = "accuracy") -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(labels) + 1.5))
    ax.barh(list(labels)[::-1], list(values)[::-1], color="tab:blue")
    for y, v in enumerate(list(values)[::-1]):
        ax.text(v, y, f" {v:.1%}" if xlabel == "accuracy" else f" {v:.3g}", va="center")
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, max(1.0, max(values, default=0) * 1.15) if xlabel == "accuracy" else None)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown_table(rows: list[dict], columns: Sequence[str]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_report(run_dir: Path, title: str, summary: dict, metrics: dict, classes: Sequence[str]) -> Path:
    """report.md: headline numbers, per-class precision/recall, and the plots."""
    lines = [f"# {title}", "", markdown_table([{"": k, "value": v} for k, v in summary.items()], ["", "value"]), ""]
    for split in ("val", "test"):
        if split in metrics:
            per_class = metrics[split]["per_class"]
            lines += [f"## {split} split: accuracy {metrics[split]['accuracy']:.2%} on {metrics[split]['count']} images", ""]
            lines += [markdown_table([{"class": c, **per_class[c]} for c in classes], ["class", "precision", "recall", "f1", "support"]), ""]
    for image, caption in (("curves.png", "Learning curves"), ("confusion.png", "Confusion matrix")):
        if (run_dir / image).exists():
            lines += [f"## {caption}", "", f"![{caption}]({image})", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
