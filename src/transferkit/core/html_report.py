"""report.html and leaderboard.html: what a run got wrong, to look at rather than read.

One self-contained file that opens from disk: plots and image thumbnails are inline ``data:``
URIs, a Content-Security-Policy forbids loading anything else, and the only script sorts
tables.  A report's size is bounded by the number of thumbnails shown (the most confident
mistakes and a few examples per class, small JPEGs), not by the number of images scored.

The pages are Jinja2 templates in ``templates/`` (serve's page too, through :func:`render`);
this module only prepares what they show.  Jinja escapes every value, so a class or file name
is text on the page, never markup.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import jinja2
import numpy as np
from markupsafe import Markup

from transferkit.core.report import accuracy_interval, most_confused, plot_curves

REPORT_FILE = "report.html"
LEADERBOARD_FILE = "leaderboard.html"
THUMBNAIL_PX = 96  # longest side; a JPEG of this size is 2-4 KB
MISTAKES_SHOWN = 48  # the most confident mistakes in the gallery
EXAMPLES_PER_CLASS = 3  # right and wrong examples shown per class...
CLASSES_WITH_EXAMPLES = 60  # ...for at most this many classes: at most 408 thumbnails in all
CONFUSED_PAIRS = 10
CONFUSION_NUMBERS_UP_TO = 40  # classes; above, the matrix cells are coloured, with numbers on hover

_SUMMARY_LABELS = {  # summary keys shown first, in this order, with these names
    "data": "data", "model": "network", "strategy": "strategy", "layer": "layer", "image_size": "image size",
    "train_images": "training images", "extract_seconds": "feature extraction", "train_seconds": "training",
}  # fmt: skip
_TEXT_COLUMNS = {"model", "strategy", "layer", "status", "reason", "class"}

# StrictUndefined: a name a template misspells is an error, not an empty string on the page.
_TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("transferkit.core", "templates"), autoescape=True,
                                undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)  # fmt: skip


def render(template: str, **context: Any) -> str:
    """The page ``templates/<template>`` makes of ``context``, every value escaped."""
    return _TEMPLATES.get_template(template).render(**context)


def _inline(name: str) -> Markup:
    """A style sheet or script of ``templates/``, pasted into the page as it is (neither rendered
    nor escaped): a page stands alone, and its policy lets it load no other file."""
    return Markup(_TEMPLATES.loader.get_source(_TEMPLATES, name)[0])


def _format(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{float(value):.4g}"
    return "" if value is None else str(value)


_TEMPLATES.globals["inline"] = _inline
_TEMPLATES.filters["number"] = _format


def write_html_report(
    run_dir: Path,
    *,
    title: str,
    summary: dict,
    metrics: dict,
    classes: list[str],
    history: list[dict],
    scored: dict[str, tuple[Sequence, np.ndarray, np.ndarray]],
    plan: dict | None = None,
) -> Path:
    """Write ``run_dir/report.html``; returns its path.

    ``metrics``: per split, what :func:`~transferkit.core.report.classification_metrics` returns;
    ``history``: the per-epoch or learning-curve rows; ``scored[split]``: (samples, labels (N,),
    probabilities (N, C)) of the images scored; ``plan``: the planner's plan and evidence, where
    ``--strategy auto`` chose the recipe.
    """
    run_dir = Path(run_dir)
    summary = {**summary}
    if "image_size" not in summary and (run_dir / "model.json").is_file():
        summary["image_size"] = json.loads((run_dir / "model.json").read_text()).get("image_size")
    splits = [s for s in ("val", "test") if s in metrics] + [s for s in metrics if s not in ("val", "test", "summary", "history") and isinstance(metrics[s], dict) and "per_class" in metrics[s]]
    shown = next((s for s in ("test", "val") if s in scored), next(iter(scored), None))
    matrix_split = shown if shown in metrics else (splits[-1] if splits else None)
    curves = None
    if history:
        x = "epoch" if "epoch" in history[0] else "train_images"
        buffer = io.BytesIO()
        plot_curves(history, buffer, x, f"{summary.get('model', '')} / {summary.get('strategy', '')}")
        curves = {"image": _data_uri(buffer.getvalue(), "image/png"), "by_images": x == "train_images"}
    page = render(
        "report.html",
        title=title,
        generated=_generated(),
        summary=_summary_rows(summary, metrics, splits),
        plan=_tree(plan) if plan else None,
        per_class=[_per_class(split, metrics[split], classes) for split in splits],
        confusion=_confusion(metrics[matrix_split]["confusion_matrix"], classes, matrix_split) if matrix_split else None,
        curves=curves,
        gallery=_gallery(scored[shown], classes, shown) if shown is not None else None,
    )
    return _write(run_dir / REPORT_FILE, page)


def write_leaderboard_html(rows: list[dict], out: Path, title: str) -> Path:
    """Write ``out/leaderboard.html``: every cell of a comparison, ranked as leaderboard.csv is
    (validation accuracy, or test where no cell has one), sortable, linked to each cell's report."""
    out = Path(out)
    key = "val_acc" if any(r.get("val_acc") is not None for r in rows) else "test_acc"
    ranked = sorted(rows, key=lambda r: -(r.get(key) if r.get(key) is not None else -1))
    columns = ["rank", "model", "strategy", "layer", "status", "val_acc", "test_acc", "extract_seconds", "train_seconds", "params", "train_images", "reason"]
    columns = [c for c in columns if c == "rank" or any(r.get(c) not in (None, "") for r in rows)]
    table = []
    for rank, row in enumerate(ranked, 1):
        cells = []
        for c in columns:
            value = rank if c == "rank" else row.get(c)
            report = f"{row.get('model')}-{row.get('strategy')}-{row.get('layer')}/{REPORT_FILE}"
            if c in ("val_acc", "test_acc") and value is not None:
                cells.append(_cell(f"{value:.2%}", sort=f"{value:.6f}", bar=value))
            elif c == "model" and (out / report).is_file():
                cells.append(_cell(value, href=report))
            elif value is None or value == "":
                cells.append(_cell(""))
            elif c not in _TEXT_COLUMNS and isinstance(value, (int, float, np.integer, np.floating)):
                cells.append(_cell(_format(value), sort=f"{float(value):.6g}"))
            else:
                cells.append(_cell(_format(value)))
        table.append(cells)
    page = render("leaderboard.html", title=title, generated=_generated(), ranked_by="validation" if key == "val_acc" else "test",
                  columns=[(c.replace("_", " "), c not in _TEXT_COLUMNS) for c in columns], rows=table)  # fmt: skip
    return _write(out / LEADERBOARD_FILE, page)


def rebuild_report(run_dir: str | os.PathLike, data: str | None = None, *, split: str | None = None, engine: str = "auto",
                   batch_size: int = 32, trust_pickle: bool = False, allow_outside_root: bool = False, progress: bool = False) -> Path:  # fmt: skip
    """Score a run again and write its report.html (``transferkit report``).

    Without ``data``: the validation and test splits of the data the run was trained on, drawn
    with its recorded seed.  With ``data`` (a new test set, say): its ``split``, by default its
    test split if it has one, else all of it.  The summary and learning curves are the run's own.
    """
    from transferkit.core.data import ImageDataset, load_data
    from transferkit.core.errors import TransferkitError
    from transferkit.core.evaluation import evaluate_run
    from transferkit.core.runs import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    config = _read_json(run_dir / "config.json")
    recorded = _read_json(run_dir / "metrics.json")
    spec = data if data is not None else config.get("data")
    if spec is None:
        raise TransferkitError(f"{run_dir}/config.json does not say what data the run was trained on; name it with --data")
    try:  # loaded here, not by evaluate_run: the val split must be the one the run's seed drew
        dataset = load_data(str(spec), trust_pickle=trust_pickle, val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0),
                            allow_outside_root=allow_outside_root or (data is None and config.get("allow_outside_root", False)))  # fmt: skip
    except TransferkitError as err:
        if data is not None:
            raise
        raise TransferkitError(f"the run was trained on {spec!r}, which cannot be loaded from here ({err}); name the images with --data") from None
    if not isinstance(dataset, ImageDataset):
        raise TransferkitError(f"{spec} holds features, not images; a report shows images")
    if data is None:
        splits = [s for s in ("val", "test") if dataset.splits.get(s) is not None and len(dataset.splits[s])]
    else:
        splits = [split or ("test" if dataset.splits.get("test") is not None else "all")]
    metrics, scored = {}, {}
    for name in splits:  # evaluate_run refuses a split the data lacks and classes the run does not know
        result = evaluate_run(run, dataset, split=name, batch_size=batch_size, engine=engine,
                              progress=f"score {name}" if progress else False, return_scored=True)  # fmt: skip
        scored[name] = result.pop("scored")
        metrics[name] = {k: v for k, v in result.items() if k != "split"}
    summary = {**recorded.get("summary", {})}
    if data is not None:
        summary = {"data": dataset.name, "trained on": summary.get("data"), **{k: v for k, v in summary.items() if k not in ("data", "val_acc", "test_acc")}}
    summary.setdefault("model", run.meta.get("backbone"))
    summary.setdefault("strategy", run.meta.get("strategy"))
    title = f"{dataset.name}: {summary.get('model')} / {summary.get('strategy')}" + (f" (run {run_dir.name})" if data is not None else "")
    return write_html_report(run_dir, title=title, summary=summary, metrics=metrics, classes=list(run.classes),
                             history=recorded.get("history") or [], scored=scored)  # fmt: skip


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# --- what each section shows -----------------------------------------------------------------


def _summary_rows(summary: dict, metrics: dict, splits: list[str]) -> list[tuple[str, str]]:
    rows = []
    for key, label in _SUMMARY_LABELS.items():
        if summary.get(key) is not None:
            value = summary[key]
            rows.append((label, f"{value:,.1f} s" if key.endswith("_seconds") else _format(value)))
    if summary.get("extract_seconds") is not None or summary.get("train_seconds") is not None:
        rows.append(("time in all", f"{(summary.get('extract_seconds') or 0) + (summary.get('train_seconds') or 0):,.1f} s"))
    for split in splits:
        rows.append((f"{split} accuracy", _accuracy_text(metrics[split]["accuracy"], metrics[split]["count"])))
    shown = set(_SUMMARY_LABELS) | {"val_acc", "test_acc"}
    return rows + [(key.replace("_", " "), _format(value)) for key, value in summary.items() if key not in shown and value is not None]


def _accuracy_text(accuracy: float, count: int) -> str:
    if not count or accuracy is None or math.isnan(accuracy):
        return "none (no images scored)"
    low, high = accuracy_interval(round(accuracy * count), count)
    return f"{accuracy:.2%} (95% interval {low:.1%} to {high:.1%}, {count:,} images)"


def _per_class(split: str, m: dict, classes: Sequence[str]) -> dict:
    rows = []
    for name in classes:
        row = m["per_class"].get(name)
        if row is not None:
            rows.append([_cell(name)] + [_cell(f"{row[k]:.3f}", sort=f"{row[k]:.6f}", bar=row[k]) for k in ("precision", "recall", "f1")]
                        + [_cell(f"{row['support']:,}", sort=str(row["support"]))])  # fmt: skip
    return {"split": split, "accuracy": _accuracy_text(m["accuracy"], m["count"]), "skipped": m.get("skipped", 0), "rows": rows}


def _confusion(confusion: list[list[int]], classes: Sequence[str], split: str) -> dict:
    counts = np.asarray(confusion, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    rows = []
    for i, true in enumerate(classes):
        cells = [{"count": int(counts[i, j]), "share": float(shares[i, j]), "right": i == j,
                  "title": f"true {true}, predicted {predicted}: {counts[i, j]:,} ({shares[i, j]:.1%} of {true})"}
                 for j, predicted in enumerate(classes)]  # fmt: skip
        rows.append({"name": true, "short": _short(true), "cells": cells})
    pairs = [[_cell(p["true"]), _cell(p["predicted"]), _cell(f"{p['count']:,}", sort=str(p["count"])), _cell(f"{p['share']:.1%}", sort=f"{p['share']:.6f}")]
             for p in most_confused(counts, classes, CONFUSED_PAIRS)]  # fmt: skip
    return {"split": split, "classes": [{"name": c, "short": _short(c)} for c in classes], "rows": rows,
            "numbers": len(classes) <= CONFUSION_NUMBERS_UP_TO, "pairs": pairs}  # fmt: skip


def _gallery(scored: tuple[Sequence, np.ndarray, np.ndarray], classes: Sequence[str], split: str) -> dict:
    samples, labels, probs = scored
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float32).reshape(len(labels), len(classes))
    predicted = probs.argmax(1)
    confidence = probs.max(1)
    wrong = np.flatnonzero(predicted != labels)
    mistakes = wrong[np.argsort(-confidence[wrong], kind="stable")][:MISTAKES_SHOWN]
    per_class = []
    for c in range(min(len(classes), CLASSES_WITH_EXAMPLES)):
        right = np.flatnonzero((labels == c) & (predicted == c))
        missed = np.flatnonzero((labels == c) & (predicted != c))
        per_class.append((c, [*right[np.argsort(-confidence[right], kind="stable")][:EXAMPLES_PER_CLASS],
                              *missed[np.argsort(-confidence[missed], kind="stable")][:EXAMPLES_PER_CLASS]]))  # fmt: skip
    thumbs = _thumbnails(samples, sorted(set(mistakes.tolist()) | {int(i) for _, shown in per_class for i in shown}))

    def card(i: int) -> dict:
        thumb = thumbs[i]  # a data: URI, or why the image cannot be shown
        shown = thumb.startswith("data:")
        return {"right": bool(predicted[i] == labels[i]), "name": _sample_name(samples[i], i),
                "image": thumb if shown else None, "error": None if shown else thumb,
                "true": classes[labels[i]], "p_true": f"{probs[i, labels[i]]:.1%}",
                "predicted": classes[predicted[i]], "p_predicted": f"{probs[i, predicted[i]]:.1%}"}  # fmt: skip

    return {"split": split, "images": len(labels), "wrong": len(wrong), "mistakes": [card(i) for i in mistakes],
            "classes": [{"name": classes[c], "cards": [card(i) for i in shown]} for c, shown in per_class],
            "per_class": EXAMPLES_PER_CLASS, "all_classes": len(classes)}  # fmt: skip


def _cell(text: Any, *, sort: str | None = None, bar: float | None = None, href: str | None = None) -> dict:
    """A table cell for the templates' cell(): ``sort``, the number a sortable table sorts it by
    (and right-aligns it); ``bar``, a 0-1 share drawn beside it; ``href``, a link."""
    return {"text": text, "v": sort, "bar": bar, "href": href}


def _tree(value: Any) -> dict:
    """A JSON-like value (the plan) as nodes for the templates' value(): dicts as key/value
    tables, lists of dicts as tables, a short list of plain values as one line."""
    if isinstance(value, dict):
        return {"kind": "table", "rows": [(str(k).replace("_", " "), _tree(v)) for k, v in value.items()]}
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(k for v in value for k in v))
        return {"kind": "grid", "columns": [str(c).replace("_", " ") for c in columns], "rows": [[_tree(v.get(c)) for c in columns] for v in value]}
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value) and sum(len(str(v)) for v in value) < 80:
            return {"kind": "text", "text": ", ".join(_format(v) for v in value)}
        return {"kind": "list", "entries": [_tree(v) for v in value]}
    return {"kind": "text", "text": _format(value)}


# --- pieces ----------------------------------------------------------------------------------


def _thumbnails(samples: Sequence, indices: list[int]) -> dict[int, str]:
    """Index -> a JPEG data URI, or the reason the image cannot be shown.  Decoded by the
    loader's own path (any source the loader reads: paths, arrays, PIL images)."""
    from transferkit.core.loader import DecodedImages

    decoded = DecodedImages([samples[i] for i in indices], _thumbnail_uri)
    out = {}
    for position, i in enumerate(indices):
        uri, _, error = decoded[position]
        out[i] = uri if uri is not None else error
    return out


def _thumbnail_uri(image) -> str:
    """A small JPEG: the longest side THUMBNAIL_PX; tiny images (8x8 digits) scaled up by pixel
    repetition, larger ones down with antialiasing."""
    from PIL import Image

    width, height = image.size
    scale = THUMBNAIL_PX / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return _data_uri(buffer.getvalue(), "image/jpeg")


def _sample_name(sample: Any, index: int) -> str:
    if isinstance(sample, (str, os.PathLike)):
        path = Path(sample)
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return f"image #{index}"


def _short(name: str, limit: int = 12) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _generated() -> str:
    from transferkit.core import __version__

    return f"written by transferkit {__version__} on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"


def _write(path: Path, page: str) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a report
    return path
