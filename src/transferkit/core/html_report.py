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
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import jinja2
import numpy as np
from markupsafe import Markup

from transferkit.core.check import metrics_without_copies
from transferkit.core.report import _pyplot, accuracy_interval, most_confused, plot_curves

REPORT_FILE = "report.html"
LEADERBOARD_FILE = "leaderboard.html"
THUMBNAIL_PX = 96  # longest side; a JPEG of this size is 2-4 KB
MISTAKES_SHOWN = 48  # the most confident mistakes in the gallery
EXAMPLES_PER_CLASS = 3  # right and wrong examples shown per class...
CLASSES_WITH_EXAMPLES = 60  # ...for at most this many classes: at most 408 thumbnails in all
CONFUSED_PAIRS = 10
CONFUSION_NUMBERS_UP_TO = 40  # classes; above, the matrix cells are coloured, with numbers on hover
CHECK_FILES_SHOWN = 4  # images shown of one group of copies; the check keeps a few groups a finding (check.EXAMPLES)

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
    check: dict | None = None,
) -> Path:
    """Write ``run_dir/report.html``; returns its path.

    ``metrics``: per split, what :func:`~transferkit.core.report.classification_metrics` returns
    (``metrics["test_clean"]``: the test images without a copy in train or val, where the check
    found copies); ``history``: the per-epoch or learning-curve rows; ``scored[split]``: (samples,
    labels (N,), probabilities (N, C)) of the images scored; ``plan``: the planner's plan and
    evidence, where ``--strategy auto`` chose the recipe; ``check``: the data check's report
    (:func:`transferkit.core.check.check_images`), shown as the "Data check" section.
    """
    run_dir = Path(run_dir)
    summary = {**summary}
    if "image_size" not in summary and (run_dir / "model.json").is_file():
        summary["image_size"] = json.loads((run_dir / "model.json").read_text()).get("image_size")
    splits = [s for s in ("val", "test") if s in metrics]  # test_clean: shown beside test, in the summary and the data check
    splits += [s for s in metrics if s not in ("val", "test", "test_clean", "summary", "history") and isinstance(metrics[s], dict) and "per_class" in metrics[s]]
    shown = next((s for s in ("test", "val") if s in scored), next(iter(scored), None))
    matrix_split = shown if shown in metrics else (splits[-1] if splits else None)
    curves = None
    if history:
        x = "epoch" if "epoch" in history[0] else "train_images"
        buffer = io.BytesIO()
        plot_curves(history, buffer, x, f"{summary.get('model', '')} / {summary.get('strategy', '')}")
        curves = {"image": _data_uri(buffer.getvalue(), "image/png"), "by_images": x == "train_images"}
    planned = _plan(plan, summary, metrics) if plan else None
    mirror_pairs = planned.pop("mirror_pairs") if planned else {}
    confusion = _confusion(metrics[matrix_split]["confusion_matrix"], classes, matrix_split) if matrix_split else None
    if confusion is not None and mirror_pairs:  # a most confused pair that the plan's mirror test found to be mirror images
        confusion["mirror"] = _mirror_confusion(metrics[matrix_split]["confusion_matrix"], classes, mirror_pairs, _run_mirrors(run_dir))
    page = render(
        "report.html",
        title=title,
        generated=_generated(),
        summary=_summary_rows(summary, metrics, splits),
        check=_check(check, metrics, scored) if check or _clean_test(metrics) else None,
        plan=planned,
        per_class=[_per_class(split, metrics[split], classes) for split in splits],
        confusion=confusion,
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
    test split if it has one, else all of it.  The summary and learning curves are the run's own,
    and so is its plan (``--strategy auto``), shown without ``data`` only: on other data the run's
    accuracy is not what the plan expected.
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
    check = recorded.get("check") if data is None and isinstance(recorded.get("check"), dict) else None  # a check of the data the run was trained on
    if check is not None and "test" in scored:
        clean = metrics_without_copies(dataset, check, scored["test"], list(run.classes))
        if clean is not None:
            metrics["test_clean"] = clean
    if data is not None:
        summary = {"data": dataset.name, "trained on": summary.get("data"),
                   **{k: v for k, v in summary.items() if k not in ("data", "val_acc", "test_acc", "test_acc_without_copies", "test_images_with_copies")}}
    summary.setdefault("model", run.meta.get("backbone"))
    summary.setdefault("strategy", run.meta.get("strategy"))
    title = f"{dataset.name}: {summary.get('model')} / {summary.get('strategy')}" + (f" (run {run_dir.name})" if data is not None else "")
    plan = recorded.get("plan") if data is None and isinstance(recorded.get("plan"), dict) else None  # on other data its "got" would not be the run's
    return write_html_report(run_dir, title=title, summary=summary, metrics=metrics, classes=list(run.classes),
                             history=recorded.get("history") or [], scored=scored, plan=plan, check=check)  # fmt: skip


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
        clean = _clean_test(metrics) if split == "test" else None
        if clean is not None:
            n = clean["images_with_copies"]
            left_out = f"the {n:,} test image{'' if n == 1 else 's'} with a copy in train or val left out"
            rows.append(("test accuracy without copies", f"{_accuracy_text(clean['accuracy'], clean['count'])}: {left_out}"))
    shown = set(_SUMMARY_LABELS) | {"val_acc", "test_acc", "test_acc_without_copies", "test_images_with_copies"}
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
            "numbers": len(classes) <= CONFUSION_NUMBERS_UP_TO, "pairs": pairs, "mirror": None}  # fmt: skip


def _clean_test(metrics: dict) -> dict | None:
    """``metrics["test_clean"]`` where it is whole: the test metrics without the copied images."""
    clean = metrics.get("test_clean")
    if not isinstance(clean, dict) or not isinstance(metrics.get("test"), dict) or _number(clean.get("accuracy")) is None:
        return None
    if clean.get("count") is None or clean.get("images_with_copies") is None:
        return None
    return clean


def _check(check: dict | None, metrics: dict, scored: dict | None = None) -> dict:
    """The data check (check.check_images' report) as the section shows it: each finding in one
    sentence (check.summary_lines), the images behind the findings as thumbnails, each with its
    split where ``scored`` tells it, and the test accuracy without the test images that have a
    copy in train or val beside the full one."""
    from transferkit.core.check import summary_lines

    check = check or {}
    files = check.get("files") if isinstance(check.get("files"), dict) else None
    images = sum(n for n in (check.get("splits") or {}).values() if isinstance(n, (int, np.integer)))
    lines, unread = [], False
    if check:
        try:  # a record from another version of the check: its sentences where they can be said
            if files is not None:
                lines = summary_lines(check)
            else:  # in-memory images: only the splits, classes and balance were checked
                empty = {key: {"count": 0, "examples": []} for key in ("unreadable", "not_image", "not_image_name", "small", "rotated")}
                lines = summary_lines({**check, "files": {**empty, "modes": {"counts": {}}, "min_side": 0, "files": images}})
        except (KeyError, TypeError, IndexError, AttributeError, ValueError):
            lines, unread = [], True
    nothing = len(lines) == 1 and lines[0].startswith("no problem found")
    if nothing and files is None:
        lines = [f"no problem found in the class balance of {images:,} images (given in memory: their files were not checked)"]
    kinds = [("exact", "exact_duplicates"), ("near", "near_duplicates")]
    exact = [_copies(g) for g in _get(check, "exact_duplicates", "across_splits", "examples")]
    near = [_copies(p.get("paths") or [], cosine=_number(p.get("cosine"))) for p in _get(check, "near_duplicates", "closest_across_splits") if isinstance(p, dict)]
    conflicts = [{**_copies(g), "kind": kind} for kind, key in kinds for g in _get(check, key, "conflicting_labels", "examples")]
    errors = [{**_copies([e.get("path")]), "given": e.get("given"), "likely": e.get("likely"),
               "confidence": f"{e['self_confidence']:.0%}" if _number(e.get("self_confidence")) is not None else None}
              for e in _get(check, "label_errors", "examples") if isinstance(e, dict) and e.get("path")]  # fmt: skip
    exact, near, conflicts, errors = ([g for g in groups if g["files"]] for groups in (exact, near, conflicts, errors))  # a group no file of which is named: nothing to show
    shown = [f for group in (*exact, *near, *conflicts, *errors) for f in group["files"]]
    split_of = _splits_of(check, scored or {})
    for f in shown:
        f["split"] = split_of(f["path"])
    thumbs = _thumbnails([f["path"] for f in shown], list(range(len(shown)))) if shown else {}
    for i, f in enumerate(shown):
        shown_ok = thumbs[i].startswith("data:")
        f["image"], f["error"] = (thumbs[i], None) if shown_ok else (None, thumbs[i])
    clean = _clean_test(metrics)
    if clean is not None:
        full = metrics["test"]
        clean = {"full": _percent(full["accuracy"]), "full_count": full["count"], "clean": _percent(clean["accuracy"]), "clean_count": clean["count"],
                 "copies": clean["images_with_copies"], "delta": _points(clean["accuracy"], full["accuracy"])}  # fmt: skip
    return {"lines": [line[:1].upper() + line[1:] for line in lines], "nothing": nothing, "unread": unread, "data": check.get("data"),
            "files_checked": files is not None, "images": images, "clean": clean, "exact": exact, "near": near, "conflicts": conflicts,
            "errors": errors, "threshold": _number(_get(check, "near_duplicates", "threshold", default=None))}  # fmt: skip


def _splits_of(check: dict, scored: dict):
    """path -> its split, or None: the check's examples are bare paths, and a validation split
    drawn from a training folder does not show in them.  The splits scored for the report name
    their images; where they are all the splits but train, any other path is a training image."""
    where = {str(sample): split for split, (samples, *_) in scored.items() for sample in samples if isinstance(sample, (str, os.PathLike))}
    others = set(check.get("splits") or {}) - {"train"}
    rest = "train" if "train" in (check.get("splits") or {}) and others <= set(scored) else None
    return lambda path: where.get(path, rest)


def _get(record: Any, *keys: str, default: Any = ()) -> Any:
    """``record[k1][k2]...``, or ``default`` where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(record, dict) or key not in record:
            return default
        record = record[key]
    return record if record is not None else default


def _copies(paths: Any, *, cosine: float | None = None) -> dict:
    """A group of files (copies, or one file) for the check's thumbnails: the first CHECK_FILES_SHOWN."""
    paths = [str(p) for p in paths if p] if isinstance(paths, (list, tuple)) else []
    return {"files": [{"path": p, "name": _path_tail(p)} for p in paths[:CHECK_FILES_SHOWN]], "more": max(0, len(paths) - CHECK_FILES_SHOWN),
            "cosine": None if cosine is None else f"{cosine:.3f}"}  # fmt: skip


def _path_tail(path: str, parts: int = 3) -> str:
    """The end of a path, as much as tells split, class and file apart (train/cat/001.jpg)."""
    pieces = Path(path).parts
    return str(Path(*pieces[-parts:])) if len(pieces) > parts else path


def _percent(value: float) -> str:
    return "none" if value is None or math.isnan(value) else f"{value:.1%}"


def _points(a: float, b: float) -> str | None:
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    return f"{100 * (a - b):+.1f}"


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


# --- the plan (--strategy auto) ----------------------------------------------------------------
# The planner's record (plan.auto.plan) as a person reads it: its choice against what the run
# got, the candidates, the probes' learning curves, each decision with its evidence.  Every key
# is optional: a record from an older planner, or one without probes, shows what it has; keys
# this does not know are kept, as tables, under "other details".

_PLAN_KEYS = {"budget_s", "budget_given", "planning_s", "chosen", "expected_accuracy", "training_time_limit_s", "command", "case",
              "augmentation", "mirror", "evidence", "candidates", "notes"}  # fmt: skip
_EVIDENCE_KEYS = {"layer_accuracy", "linear_probe", "end_to_end_probe", "rbf_probe", "flip_tta_gain"}
_CASES = {  # the teaching guide's four cases (plan.advice.four_cases), in words
    "small": "few training images a class", "large": "many training images a class",
    "similar": "the last layer's features separate the classes as well as any earlier stage's (close to ImageNet)",
    "different": "an earlier stage's features separate the classes better than the last layer's (unlike ImageNet)",
}  # fmt: skip
_MIRROR_VERDICTS = {"keep": "kept", "off": "off", "undecided": "undecided, so off"}
_END_TO_END = {"frozen", "finetune", "scratch"}  # training.options.END_TO_END_STRATEGIES (core does not import training)


def _plan(plan: dict, summary: dict, metrics: dict) -> dict:
    """What the plan section shows (templates/plan.html); ``mirror_pairs``, for the confusion
    section, is popped by the caller."""
    evidence = plan.get("evidence") if isinstance(plan.get("evidence"), dict) else {}
    candidates = [row for row in plan.get("candidates") or [] if isinstance(row, dict) and "recipe" in row]
    chosen = next((row for row in candidates if row.get("chosen")), None)
    recipe = plan.get("chosen") or (chosen or {}).get("recipe")
    expected = _number(plan.get("expected_accuracy"), _number((chosen or {}).get("expected_accuracy")))
    got = [(split, metrics[split]["accuracy"]) for split in ("val", "test") if isinstance(metrics.get(split), dict) and metrics[split].get("accuracy") is not None]
    got = got or [(split, summary[f"{split}_acc"]) for split in ("val", "test") if _number(summary.get(f"{split}_acc")) is not None]
    got = [(split, float(a)) for split, a in got if not math.isnan(a)]
    augmentation = _augmentation_text(plan.get("augmentation"))
    mirror_rows = _mirror_rows(plan.get("mirror"), augmentation)
    train_images = _number(summary.get("train_images"))
    leftover = {k: v for k, v in plan.items() if k not in _PLAN_KEYS}
    if plan.get("candidates") and not candidates:
        leftover["candidates"] = plan["candidates"]  # not the planner's table: shown as it is
    if any(k not in _EVIDENCE_KEYS for k in evidence):
        leftover["evidence"] = {k: v for k, v in evidence.items() if k not in _EVIDENCE_KEYS}
    decisions = [d for d in (_mirror_decision(plan.get("mirror"), augmentation, mirror_rows), _crop_decision(augmentation),
                             _flip_decision(evidence.get("flip_tta_gain"), recipe), _layer_decision(evidence.get("layer_accuracy"), summary, recipe),
                             _size_decision(evidence, summary, recipe, train_images), _budget_decision(plan, chosen, summary)) if d is not None]  # fmt: skip
    return {
        "recipe": recipe,
        "expected": None if expected is None else f"{expected:.1%}",
        "got": [{"split": "validation" if split == "val" else split, "text": f"{a:.1%}", "delta": None if expected is None else f"{100 * (a - expected):+.1f}"}
                for split, a in got],
        "case": _case(plan.get("case")),
        "decisions": decisions,
        "probes_other": (augmentation or {}).get("other") or [],  # the probes' paragraphs and tables this does not place
        "candidates": [_candidate(row, got if row is chosen else [], expected) for row in candidates],
        "curves": _probe_curves(evidence, train_images, dict(got).get("val")),
        "notes": [str(n) for n in plan.get("notes") or [] if n],
        "command": plan.get("command"),
        "other": _tree(leftover) if leftover else None,
        "mirror_pairs": _mirror_pairs(mirror_rows),
    }


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _number(value: Any, default: float | None = None) -> float | None:
    return float(value) if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and not math.isnan(value) else default


def _duration(seconds: float | None) -> str:
    """``45 s``, ``2 min 5 s``, ``1 h 10 min``."""
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min" + (f" {rest} s" if rest else "")
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h" + (f" {minutes} min" if minutes else "")


def _flag(recipe: str | None, name: str) -> str | None:
    """The value of ``--name`` in a recipe line (planner.describe), or None."""
    found = re.search(rf"(?:^|\s)--{re.escape(name)}\s+(\S+)", recipe or "")
    return found.group(1) if found else None


def _candidate(row: dict, got: list[tuple[str, float]], expected: float | None) -> dict:
    accuracy, cost = _number(row.get("expected_accuracy")), _number(row.get("cost_s"))
    return {"recipe": str(row.get("recipe")), "chosen": bool(row.get("chosen")), "evidence": _format(row.get("evidence")),
            "expected": _cell("" if accuracy is None else f"{accuracy:.1%}", sort=None if accuracy is None else f"{accuracy:.6f}", bar=accuracy),
            "cost": _cell(_duration(cost), sort=None if cost is None else f"{cost:.6g}"),
            "fits": None if row.get("fits") is None else bool(row.get("fits")),
            "got": ", ".join(f"{a:.1%} {'val' if split == 'val' else split}" for split, a in got)}  # fmt: skip


def _case(case: Any) -> dict | None:
    if not case:
        return None
    size, _, kind = str(case).partition("-")
    meaning = "; ".join(_CASES[part] for part in (size, kind) if part in _CASES)
    return {"label": str(case), "meaning": meaning}


# The augmentation probes' report (probes.AugmentationProbe.report): paragraphs and Markdown tables.


def _augmentation_text(text: Any) -> dict | None:
    """The mirror and crop paragraphs and tables of the probes' Markdown, each None where absent."""
    if not isinstance(text, str) or not text.strip():
        return None
    blocks = [block.strip() for block in re.split(r"\n\s*\n", text.strip()) if block.strip()]
    parsed = [_markdown_table(block) if block.startswith("|") else block for block in blocks]
    out = {"mirror_text": None, "mirror_table": None, "crop_text": None, "crop_table": None, "other": []}
    for block in parsed:
        if isinstance(block, dict):
            names = [c["name"] for c in block["columns"]]
            key = "mirror_table" if any("mirror" in n for n in names) else "crop_table" if any("crop" in n for n in names) else None
        else:
            key = "mirror_text" if out["mirror_text"] is None and ("mirror" in block or block.startswith("Probes on")) else \
                  "crop_text" if out["crop_text"] is None and "crop" in block else None  # fmt: skip
        if key is None or out[key] is not None:
            out["other"].append(block if isinstance(block, dict) else {"text": block})
        else:
            out[key] = block
    return out


def _markdown_table(block: str) -> dict:
    """A Markdown table as columns (name, right-aligned) and rows of text.  A cell that holds a
    ``|`` (a class name) splits one too many: the extra cells are joined back into the first."""
    lines = [line.strip() for line in block.splitlines() if line.strip().startswith("|")]

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split("|")]

    header = cells(lines[0]) if lines else []
    rule = cells(lines[1]) if len(lines) > 1 and set(lines[1]) <= set("|-: ") else None
    right = [bool(rule) and i < len(rule) and rule[i].endswith(":") for i in range(len(header))]
    rows = []
    for line in lines[1 + (rule is not None):]:
        row = cells(line)
        if len(row) > len(header) > 0:
            extra = len(row) - len(header)
            row = [" | ".join(row[: extra + 1])] + row[extra + 1 :]
        rows.append(row + [""] * (len(header) - len(row)))
    return {"columns": [{"name": name, "n": r} for name, r in zip(header, right)], "rows": rows}


def _mirror_rows(mirror: Any, augmentation: dict | None) -> list[dict]:
    """Per class: the class its mirror images were taken for (or None) and whether it breaks under
    mirroring.  From the record's ``mirror`` (a dict with ``classes``, or the list of rows itself)
    where it has one, else from the probes' Markdown table."""
    rows = mirror.get("classes") if isinstance(mirror, dict) else mirror
    if isinstance(rows, list) and rows and all(isinstance(r, dict) and "class" in r for r in rows):
        return [{"class": str(r["class"]), "mirrored_as": None if r.get("mirrored_as") is None else str(r["mirrored_as"]), "breaks": bool(r.get("breaks"))}
                for r in rows]  # fmt: skip
    table = (augmentation or {}).get("mirror_table")
    if not table:
        return []
    names = [c["name"] for c in table["columns"]]
    at = {key: next((i for i, n in enumerate(names) if key in n), None) for key in ("class", "taken for", "breaks")}
    if at["class"] is None or at["taken for"] is None:
        return []
    out = []
    for row in table["rows"]:
        taken = re.sub(r"\s*\(\d+(?:\.\d+)?%\)$", "", row[at["taken for"]]).strip()
        out.append({"class": row[at["class"]], "mirrored_as": taken or None, "breaks": at["breaks"] is not None and row[at["breaks"]].lower() == "yes"})
    return out


def _mirror_pairs(rows: list[dict]) -> dict[frozenset, bool]:
    """Pairs of classes that are each other's mirror images: a class that breaks under mirroring
    whose mirror images were taken for the other (value: True where both directions say so)."""
    partner = {r["class"]: r["mirrored_as"] for r in rows}
    pairs: dict[frozenset, bool] = {}
    for r in rows:
        if r["breaks"] and r["mirrored_as"] is not None and r["mirrored_as"] != r["class"]:
            pair = frozenset((r["class"], r["mirrored_as"]))
            pairs[pair] = pairs.get(pair, False) or partner.get(r["mirrored_as"]) == r["class"]
    return pairs


def _mirror_decision(mirror: Any, augmentation: dict | None, rows: list[dict]) -> dict | None:
    decision = mirror.get("decision") if isinstance(mirror, dict) else None
    text = (augmentation or {}).get("mirror_text")
    if decision is None and text:
        lowered = text.lower()
        decision = "off" if "do not survive" in lowered or "no mirroring (and" in lowered else "undecided" if "undecided" in lowered else \
            "keep" if "mirroring kept" in lowered else None  # fmt: skip
    if decision is None and not text and not rows:
        return None
    why, measured = "", ""
    if text:
        head = re.match(r"Probes on (?P<layer>.+?) at (?P<size>\d+) px \((?P<seconds>[\d.]+) s\): (?P<rest>.*)$", text, re.DOTALL)
        rest = head.group("rest") if head else text
        measured = f"on {head.group('layer')} features at {head.group('size')} px, in {head.group('seconds')} s" if head else ""
        first, sep, verdict = rest.partition("; ")
        why, evidence = (verdict, first) if sep and first.startswith("a linear probe") else (rest, "")
        measured = "; ".join(p for p in (evidence, measured) if p)
    broken = [r["class"] for r in rows if r["breaks"]]
    if not why:
        why = f"{len(broken)} of {len(rows)} classes do not survive a mirror image: {', '.join(broken)}" if broken else f"{len(rows)} classes measured"
    table = (augmentation or {}).get("mirror_table")
    return {"topic": "Mirroring", "verdict": _MIRROR_VERDICTS.get(decision, decision or "measured"), "text": why.rstrip("."), "evidence": measured,
            "table": table, "table_caption": f"per class ({len(table['rows'])} classes), those that break first" if table else None,
            "open": bool(table) and len(table["rows"]) <= 12}  # fmt: skip


def _crop_decision(augmentation: dict | None) -> dict | None:
    text, table = (augmentation or {}).get("crop_text"), (augmentation or {}).get("crop_table")
    if not text and not table:
        return None
    kept = re.search(r"crops keeping (\d+(?:\.\d+)?)% of the area or more", text or "")
    verdict = f"random crops keep at least {kept.group(1)}% of the area" if kept else "no cropping" if "no crop" in (text or "") else "measured"
    return {"topic": "Crops", "verdict": verdict, "text": (text or "").rstrip("."), "evidence": "", "table": table,
            "table_caption": "accuracy of the probe on random crops" if table else None, "open": bool(table)}  # fmt: skip


def _flip_decision(gains: Any, recipe: str | None) -> dict | None:
    if not isinstance(gains, dict) or not gains:
        return None
    shown = ", ".join(f"{100 * g:+.1f} points ({name})" for name, g in gains.items() if _number(g) is not None)
    used = "--flip-tta" in (recipe or "")
    return {"topic": "Mirror images at test time (--flip-tta)", "verdict": "used" if used else "not used",
            "text": f"averaging each validation image's features with its mirror image's changed the linear probe's accuracy by {shown}", "evidence": "",
            "table": None, "table_caption": None, "open": False}  # fmt: skip


def _layer_decision(accuracy: Any, summary: dict, recipe: str | None) -> dict | None:
    layer = _flag(recipe, "layer") or summary.get("layer")
    strategy = (recipe or "").split(" ", 1)[0] or summary.get("strategy")
    scored = {k: _number(v) for k, v in accuracy.items()} if isinstance(accuracy, dict) else {}
    scored = {k: v for k, v in scored.items() if v is not None}
    if not scored and layer is None:
        return None
    verdict = f"{layer or 'penultimate'}, the network trained end to end ({strategy})" if strategy in _END_TO_END else str(layer or "penultimate")
    text = "a linear probe on each layer's features, scored on the validation sample: " + ", ".join(
        f"{k} {v:.1%}" for k, v in sorted(scored.items(), key=lambda kv: -kv[1])) if scored else ""
    return {"topic": "Layer", "verdict": verdict, "text": text, "evidence": "", "table": None, "table_caption": None, "open": False}


def _size_decision(evidence: dict, summary: dict, recipe: str | None, train_images: float | None) -> dict | None:
    size = _flag(recipe, "image-size") or summary.get("image_size")
    by_size: dict[int, float] = {}
    for name, probe in _dict(evidence.get("linear_probe")).items():
        found = re.search(r"@(\d+)$", str(name))
        full = _number(probe.get("expected_full")) if isinstance(probe, dict) else None
        if found and full is not None:
            by_size[int(found.group(1))] = max(full, by_size.get(int(found.group(1)), 0.0))
    tuned = []
    for name, probe in _dict(evidence.get("end_to_end_probe")).items():
        full = _number(probe.get("expected_full")) if isinstance(probe, dict) else None
        if full is not None:
            recipe_name, _, at = str(name).partition(" @")
            tuned.append(f"{recipe_name} at {at} px {full:.1%}" if at else f"{recipe_name} {full:.1%}")
    if size is None and not by_size and not tuned:
        return None
    images = f"all {train_images:,.0f} training images" if train_images else "the whole training set"
    parts = []
    if by_size:
        parts.append(f"extrapolated to {images}, a linear head expects " + ", ".join(f"{v:.1%} at {k} px" for k, v in sorted(by_size.items())))
    if tuned:
        parts.append("fine-tuning probed on the sample and extended: " + ", ".join(tuned))
    return {"topic": "Input size", "verdict": f"{size} px" if size is not None else "measured", "text": "; ".join(parts), "evidence": "",
            "table": None, "table_caption": None, "open": False}  # fmt: skip


def _budget_decision(plan: dict, chosen: dict | None, summary: dict) -> dict | None:
    budget = _number(plan.get("budget_s"))
    if budget is None:
        return None
    if plan.get("budget_given"):
        origin = "given with --time-budget"
    else:
        images = _number(summary.get("train_images"))
        origin = f"the default for {images:,.0f} training images (set --time-budget to change it)" if images else "the default (set --time-budget to change it)"
    parts = []
    planning = _number(plan.get("planning_s"))
    if planning is not None:
        parts.append(f"{_duration(planning)} of it went on measuring" if planning <= budget else f"measuring alone took {_duration(planning)}, past the budget")
    if chosen is not None and _number(chosen.get("cost_s")) is not None:
        parts.append(f"the chosen recipe was expected to take about {_duration(chosen['cost_s'])}")
    limit = _number(plan.get("training_time_limit_s"))
    parts.append(f"training was held to {_duration(limit)}" if limit is not None else "no training time limit (a head on features stops by itself)")
    if _number(summary.get("wall_seconds")) is not None:
        parts.append(f"the whole run took {_duration(summary['wall_seconds'])}")
    return {"topic": "Budget", "verdict": f"{_duration(budget)}, {origin}", "text": "; ".join(parts), "evidence": "", "table": None,
            "table_caption": None, "open": False}  # fmt: skip


def _probe_curves(evidence: dict, train_images: float | None, run_val: float | None) -> dict | None:
    """The probes' learning curves as one PNG: accuracy against training images (log scale), each
    curve's extrapolation to the whole training set marked there, and what the run got."""
    kinds = (("linear_probe", "linear", "-"), ("end_to_end_probe", "fine-tuned", "--"), ("rbf_probe", "RBF SVM", ":"))
    lines = []
    for key, kind, style in kinds:
        for name, probe in _dict(evidence.get(key)).items():
            curve = probe.get("curve") if isinstance(probe, dict) else None
            points = sorted((float(n), float(a)) for n, a in (curve or {}).items() if _number(a) is not None and re.fullmatch(r"\d+(?:\.\d+)?", str(n)))
            if points:
                lines.append((f"{kind}: {name}", style, points, _number(probe.get("expected_full"))))
    if not lines:
        return None
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, PercentFormatter

    fig, ax = plt.subplots(figsize=(11, 4.8))
    colours = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
    for i, (label, style, points, full) in enumerate(lines):
        colour = colours(i % colours.N)
        xs, ys = zip(*points)
        ax.plot(xs, ys, style, marker="o", color=colour, label=label)
        if full is not None and train_images and train_images > xs[-1]:
            ax.plot([xs[-1], train_images], [ys[-1], full], ":", color=colour, alpha=0.7)
            ax.plot([train_images], [full], marker="D", markerfacecolor="white", markeredgecolor=colour, linestyle="none")
    if train_images:
        ax.axvline(train_images, color="#999", linewidth=0.8, label=f"all {train_images:,.0f} training images")
        if run_val is not None:
            ax.plot([train_images], [run_val], marker="*", markersize=14, color="black", linestyle="none", label="this run (validation)")
    ax.set_xscale("log")
    ax.margins(x=0.06)
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("accuracy")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 50, 100, 200, 500: labelled even within one decade
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return {"image": _data_uri(buffer.getvalue(), "image/png"), "train_images": None if not train_images else f"{train_images:,.0f}",
            "star": bool(train_images) and run_val is not None}  # fmt: skip


def _run_mirrors(run_dir: Path) -> str | None:
    """How the run used mirror images, from its config.json: "train" (mirrored training images),
    "tta" (averaged with mirror images at test time), "no", or None where it cannot tell."""
    config = _read_json(run_dir / "config.json")
    if not config:
        return None
    if config.get("flip_tta"):
        return "tta"
    if config.get("augment", "none") != "none" and config.get("mirror", True):
        return "train"
    return "no"


def _mirror_confusion(confusion: list[list[int]], classes: Sequence[str], pairs: dict[frozenset, bool], mirrors: str | None) -> dict | None:
    """The first of the most confused pairs that the plan's mirror test found to be each other's
    mirror images, as the sentence near the confusion matrix says it."""
    if not pairs:
        return None
    for rank, row in enumerate(most_confused(np.asarray(confusion, dtype=np.int64), classes, CONFUSED_PAIRS), 1):
        pair = frozenset((row["true"], row["predicted"]))
        if pair in pairs:
            if mirrors == "train":
                advice = "the run mirrored its training images: train again without mirroring (--no-mirror)"
            elif mirrors == "tta":
                advice = "the run averaged each image's features with its mirror image's (--flip-tta): train again without it"
            elif mirrors == "no":
                advice = "the run did not mirror its images, so mirroring is not what confuses them"
            else:
                advice = "train without mirroring (--no-mirror) if the run mirrored"
            return {"a": row["true"], "b": row["predicted"], "rank": rank, "count": row["count"], "both": pairs[pair], "advice": advice}
    return None


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
