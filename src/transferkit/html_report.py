"""report.html and leaderboard.html: what a run got wrong, to look at rather than read.

One self-contained file that opens from disk: plots and image thumbnails are inline ``data:``
URIs, a Content-Security-Policy forbids loading anything else, and the only script sorts
tables.  A report's size is bounded by the number of thumbnails shown (the most confident
mistakes and a few examples per class, small JPEGs), not by the number of images scored.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transferkit.report import accuracy_interval, most_confused, plot_curves

REPORT_FILE = "report.html"
LEADERBOARD_FILE = "leaderboard.html"
THUMBNAIL_PX = 96  # longest side; a JPEG of this size is 2-4 KB
MISTAKES_SHOWN = 48  # the most confident mistakes in the gallery
EXAMPLES_PER_CLASS = 3  # right and wrong examples shown per class...
CLASSES_WITH_EXAMPLES = 60  # ...for at most this many classes: at most 408 thumbnails in all
CONFUSED_PAIRS = 10
CONFUSION_NUMBERS_UP_TO = 40  # classes; above, the matrix cells are coloured, with numbers on hover

# Nothing but this file itself: no network, no other file (a report is safe to open anywhere).
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#1d1d1f}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em} h3{margin-bottom:.4em}
.muted{color:#666} table{border-collapse:collapse;margin:.5em 0} th,td{padding:.25em .6em;border-bottom:1px solid #eee;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none} table.sortable th:after{content:' \\2195';color:#bbb}
table.sortable th[data-order=asc]:after{content:' \\2191';color:#333} table.sortable th[data-order=desc]:after{content:' \\2193';color:#333}
table.confusion td,table.confusion th{border:1px solid #fff;padding:.15em .35em;font-size:12px;text-align:center;min-width:1.6em}
table.confusion th.true{text-align:right} .axis{font-size:12px;color:#666}
.gallery{display:flex;flex-wrap:wrap;gap:10px} .card{width:120px;font-size:12px;line-height:1.3}
.card img{width:96px;height:96px;object-fit:contain;background:#f4f4f4;image-rendering:pixelated;display:block;margin-bottom:3px;border:2px solid #ccc}
.card.wrong img{border-color:#d62728} .card.right img{border-color:#2ca02c} .card .err{color:#d62728}
.cls{display:flex;gap:1.5em;align-items:flex-start;margin:.6em 0;padding-bottom:.6em;border-bottom:1px solid #eee} .cls h3{width:9em;margin:0;word-break:break-word}
.bar{background:#e8eef7;width:90px;height:1em;display:inline-block;vertical-align:middle}
.bar span{background:#1f77b4;height:100%;display:block}
table.kv th{font-weight:600;vertical-align:top;color:#333}
img.plot{max-width:100%}
"""

_SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.dataset.order !== 'asc';
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = asc ? 'asc' : 'desc';
    function key(row) { var td = row.cells[col]; return td.dataset.v !== undefined ? parseFloat(td.dataset.v) : td.textContent.toLowerCase(); }
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b); return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
    }).forEach(function (row) { body.appendChild(row); });
  });
});
"""

_SUMMARY_LABELS = {  # summary keys shown first, in this order, with these names
    "data": "data", "model": "network", "strategy": "strategy", "layer": "layer", "image_size": "image size",
    "train_images": "training images", "extract_seconds": "feature extraction", "train_seconds": "training",
}  # fmt: skip


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

    ``metrics``: per split, what :func:`~transferkit.report.classification_metrics` returns;
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
    body = [f"<h1>{_e(title)}</h1>", f"<p class=muted>{_e(_generated())}</p>", "<h2 id=summary>Summary</h2>", _summary_table(summary, metrics, splits)]
    if plan:
        body += ["<h2 id=plan>Plan chosen by <code>--strategy auto</code></h2>", _value(plan)]
    for split in splits:
        m = metrics[split]
        skipped = f" {m['skipped']:,} image{'s' if m['skipped'] > 1 else ''} could not be read and {'are' if m['skipped'] > 1 else 'is'} left out." if m.get("skipped") else ""
        body += [f"<h2 id=per-class-{_e(split)}>Per class: {_e(split)} split</h2>",
                 f"<p>accuracy {_accuracy_text(m['accuracy'], m['count'])}.{skipped} Click a column to sort.</p>", _per_class_table(m, classes)]  # fmt: skip
    matrix_split = shown if shown in metrics else (splits[-1] if splits else None)
    if matrix_split:
        body += _confusion_section(metrics[matrix_split]["confusion_matrix"], classes, matrix_split)
    if history:
        x = "epoch" if "epoch" in history[0] else "train_images"
        buffer = io.BytesIO()
        plot_curves(history, buffer, x, f"{summary.get('model', '')} / {summary.get('strategy', '')}")
        body += ["<h2 id=curves>Learning curves</h2>", f"<img class=plot alt='learning curves' src='{_data_uri(buffer.getvalue(), 'image/png')}'>"]
        if x == "train_images":
            body.append("<p class=muted>A head on features: accuracy against the number of training images.</p>")
    if shown is not None:
        body += _gallery_sections(scored[shown], classes, shown)
    return _write(run_dir / REPORT_FILE, title, body)


def write_leaderboard_html(rows: list[dict], out: Path, title: str) -> Path:
    """Write ``out/leaderboard.html``: every cell of a comparison, ranked as leaderboard.csv is
    (validation accuracy, or test where no cell has one), sortable, linked to each cell's report."""
    out = Path(out)
    key = "val_acc" if any(r.get("val_acc") is not None for r in rows) else "test_acc"
    ranked = sorted(rows, key=lambda r: -(r.get(key) if r.get(key) is not None else -1))
    columns = ["rank", "model", "strategy", "layer", "status", "val_acc", "test_acc", "extract_seconds", "train_seconds", "params", "train_images", "reason"]
    columns = [c for c in columns if c == "rank" or any(r.get(c) not in (None, "") for r in rows)]
    head = "".join(f"<th{' class=n' if c not in _TEXT_COLUMNS else ''}>{_e(c.replace('_', ' '))}</th>" for c in columns)
    lines = []
    for rank, row in enumerate(ranked, 1):
        cells = []
        for c in columns:
            value = rank if c == "rank" else row.get(c)
            if c in ("val_acc", "test_acc") and value is not None:
                cells.append(f"<td class=n data-v='{value:.6f}'>{value:.2%} <span class=bar><span style='width:{100 * value:.1f}%'></span></span></td>")
            elif c == "model" and (out / f"{row.get('model')}-{row.get('strategy')}-{row.get('layer')}" / REPORT_FILE).is_file():
                link = f"{row.get('model')}-{row.get('strategy')}-{row.get('layer')}/{REPORT_FILE}"
                cells.append(f"<td><a href='{_e(link)}'>{_e(value)}</a></td>")
            else:
                cells.append(_cell(value, numeric=c not in _TEXT_COLUMNS))
        lines.append("<tr>" + "".join(cells) + "</tr>")
    body = [f"<h1>{_e(title)}</h1>", f"<p class=muted>{_e(_generated())}</p>",
            f"<p>Ranked by {'validation' if key == 'val_acc' else 'test'} accuracy; the test set only reports. Click a column to sort; a model name links to that run's report.</p>",
            f"<table class=sortable><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"]  # fmt: skip
    return _write(out / LEADERBOARD_FILE, title, body)


_TEXT_COLUMNS = {"model", "strategy", "layer", "status", "reason", "class"}


def rebuild_report(run_dir: str | os.PathLike, data: str | None = None, *, split: str | None = None, engine: str = "auto",
                   batch_size: int = 32, trust_pickle: bool = False, allow_outside_root: bool = False, progress: bool = False) -> Path:  # fmt: skip
    """Score a run again and write its report.html (``transferkit report``).

    Without ``data``: the validation and test splits of the data the run was trained on, drawn
    with its recorded seed.  With ``data`` (a new test set, say): its ``split``, by default its
    test split if it has one, else all of it.  The summary and learning curves are the run's own.
    """
    from transferkit.data import ImageDataset, load_data
    from transferkit.errors import TransferkitError
    from transferkit.report import classification_metrics
    from transferkit.runs import load_run

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    config = _read_json(run_dir / "config.json")
    recorded = _read_json(run_dir / "metrics.json")
    spec = data if data is not None else config.get("data")
    if spec is None:
        raise TransferkitError(f"{run_dir}/config.json does not say what data the run was trained on; name it with --data")
    try:
        dataset = load_data(str(spec), trust_pickle=trust_pickle, val_fraction=config.get("val_fraction", 0.2), seed=config.get("seed", 0),
                            allow_outside_root=allow_outside_root or (data is None and config.get("allow_outside_root", False)))  # fmt: skip
    except TransferkitError as err:
        if data is not None:
            raise
        raise TransferkitError(f"the run was trained on {spec!r}, which cannot be loaded from here ({err}); name the images with --data") from None
    if not isinstance(dataset, ImageDataset):
        raise TransferkitError(f"{spec} holds features, not images; a report shows images")
    unknown = sorted(set(dataset.classes) - set(run.classes))
    if unknown:
        raise TransferkitError(f"{dataset.name} has classes the run was not trained on: {', '.join(unknown[:5])}")
    if data is None:
        parts = {s: [dataset.splits[s]] for s in ("val", "test") if dataset.splits.get(s) is not None and len(dataset.splits[s])}
    else:
        split = split or ("test" if dataset.splits.get("test") is not None else "all")
        if split == "all":
            parts = {"all": [s for s in dataset.splits.values() if s is not None]}
        elif dataset.splits.get(split) is not None:
            parts = {split: [dataset.splits[split]]}
        else:
            raise TransferkitError(f"{dataset.name} has no {split!r} split: choose from {', '.join(dataset.splits)} or all")
    to_run = np.array([run.classes.index(name) for name in dataset.classes])
    metrics, scored = {}, {}
    for name, images in parts.items():
        samples = [s for part in images for s in part.samples]
        labels = to_run[np.concatenate([part.labels for part in images])]
        probs, ok, failures = run.scores(samples, batch_size=batch_size, engine=engine, progress=f"score {name}" if progress else False)
        kept = np.flatnonzero(ok)
        metrics[name] = {**classification_metrics(labels[ok], probs[ok].argmax(1), run.classes), "skipped": len(failures)}
        scored[name] = ([samples[i] for i in kept], labels[kept], probs[kept])
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


# --- sections --------------------------------------------------------------------------------


def _summary_table(summary: dict, metrics: dict, splits: list[str]) -> str:
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
    rows += [(key.replace("_", " "), _format(value)) for key, value in summary.items() if key not in shown and value is not None]
    return "<table class=kv>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows) + "</table>"


def _accuracy_text(accuracy: float, count: int) -> str:
    if not count or accuracy is None or math.isnan(accuracy):
        return "none (no images scored)"
    low, high = accuracy_interval(round(accuracy * count), count)
    return f"{accuracy:.2%} (95% interval {low:.1%} to {high:.1%}, {count:,} images)"


def _per_class_table(m: dict, classes: Sequence[str]) -> str:
    head = "<th>class</th>" + "".join(f"<th class=n>{k}</th>" for k in ("precision", "recall", "f1", "support"))
    rows = []
    for name in classes:
        row = m["per_class"].get(name)
        if row is None:
            continue
        cells = [f"<td>{_e(name)}</td>"]
        for k in ("precision", "recall", "f1"):
            cells.append(f"<td class=n data-v='{row[k]:.6f}'>{row[k]:.3f} <span class=bar><span style='width:{100 * row[k]:.1f}%'></span></span></td>")
        cells.append(f"<td class=n data-v='{row['support']}'>{row['support']:,}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='sortable per-class'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _confusion_section(confusion: list[list[int]], classes: Sequence[str], split: str) -> list[str]:
    counts = np.asarray(confusion, dtype=np.int64)
    totals = counts.sum(1, keepdims=True)
    shares = counts / np.maximum(totals, 1)
    numbers = len(classes) <= CONFUSION_NUMBERS_UP_TO

    def table(kind: str) -> str:
        head = "<th></th>" + "".join(f"<th title='predicted {_e(c)}'>{_e(_short(c))}</th>" for c in classes)
        lines = []
        for i, true in enumerate(classes):
            cells = []
            for j, predicted in enumerate(classes):
                share, count = shares[i, j], counts[i, j]
                colour = (31, 119, 180) if i == j else (214, 39, 40)
                text = f"{count:,}" if kind == "counts" else f"{100 * share:.0f}"
                style = f"background:rgba({colour[0]},{colour[1]},{colour[2]},{share:.3f});color:{'#fff' if share > 0.55 else '#222'}"
                hover = f"true {true}, predicted {predicted}: {count:,} ({share:.1%} of {true})"
                cells.append(f"<td style='{style}' title='{_e(hover)}'>{text if numbers and (count or kind == 'counts') else ''}</td>")
            lines.append(f"<tr><th class=true title='true {_e(true)}'>{_e(_short(true))}</th>{''.join(cells)}</tr>")
        return f"<table class='confusion {kind}'><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"

    pairs = most_confused(counts, classes, CONFUSED_PAIRS)
    if pairs:
        pair_rows = "".join(
            f"<tr><td>{_e(p['true'])}</td><td>{_e(p['predicted'])}</td><td class=n data-v='{p['count']}'>{p['count']:,}</td>"
            f"<td class=n data-v='{p['share']:.6f}'>{p['share']:.1%}</td></tr>"
            for p in pairs
        )
        listed = ("<h3>Most confused pairs</h3><table class='sortable confused'><thead><tr><th>true class</th><th>taken for</th>"
                  f"<th class=n>images</th><th class=n>share of the true class</th></tr></thead><tbody>{pair_rows}</tbody></table>")  # fmt: skip
    else:
        listed = "<h3>Most confused pairs</h3><p>None: every image of this split is classified right.</p>"
    return [
        f"<h2 id=confusion>Confusion matrix: {_e(split)} split</h2>",
        "<p class=axis>Rows: the true class; columns: the predicted class. Blue: right, red: wrong; the shade is the share of the row.</p>",
        "<h3>Counts</h3>", table("counts"), "<h3>Row-normalised (% of the true class)</h3>", table("shares"), listed,
    ]  # fmt: skip


def _gallery_sections(scored: tuple[Sequence, np.ndarray, np.ndarray], classes: Sequence[str], split: str) -> list[str]:
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
        per_class.append((c, right[np.argsort(-confidence[right], kind="stable")][:EXAMPLES_PER_CLASS],
                          missed[np.argsort(-confidence[missed], kind="stable")][:EXAMPLES_PER_CLASS]))  # fmt: skip
    wanted = sorted(set(mistakes.tolist()) | {int(i) for _, r, m in per_class for i in (*r, *m)})
    thumbs = _thumbnails(samples, wanted)

    def card(i: int) -> str:
        ok = predicted[i] == labels[i]
        image = thumbs[i]
        picture = f"<img src='{image}' alt='{_e(_sample_name(samples[i], i))}'>" if image.startswith("data:") else f"<div class=err>{_e(image)}</div>"
        if ok:
            lines = [f"<b>{_e(classes[labels[i]])}</b> {probs[i, labels[i]]:.1%}"]
        else:
            lines = [f"true <b>{_e(classes[labels[i]])}</b> {probs[i, labels[i]]:.1%}", f"predicted <b class=err>{_e(classes[predicted[i]])}</b> {probs[i, predicted[i]]:.1%}"]
        return (f"<div class='card {'right' if ok else 'wrong'}' title='{_e(_sample_name(samples[i], i))}'>{picture}"
                f"{'<br>'.join(lines)}</div>")  # fmt: skip

    n_wrong = len(wrong)
    out = [f"<h2 id=mistakes>Most confident mistakes: {_e(split)} split</h2>"]
    if n_wrong:
        out += [f"<p>{min(n_wrong, MISTAKES_SHOWN)} of {n_wrong:,} mistakes on {len(labels):,} images, the most confident first "
                "(beside each class, the probability the model gave it).</p>",
                "<div class='gallery mistakes'>" + "".join(card(i) for i in mistakes) + "</div>"]  # fmt: skip
    else:
        out.append(f"<p>None: all {len(labels):,} images are classified right.</p>")
    out += [f"<h2 id=examples>Examples per class: {_e(split)} split</h2>",
            f"<p>For each true class, up to {EXAMPLES_PER_CLASS} images classified right and {EXAMPLES_PER_CLASS} wrong, the most confident first"
            + (f"; the first {CLASSES_WITH_EXAMPLES} of {len(classes)} classes" if len(classes) > CLASSES_WITH_EXAMPLES else "") + ".</p>"]  # fmt: skip
    for c, right, missed in per_class:
        cards = "".join(card(i) for i in right) + "".join(card(i) for i in missed)
        out.append(f"<div class=cls><h3>{_e(classes[c])}</h3><div class=gallery>{cards or '<p class=muted>no images</p>'}</div></div>")
    return out


# --- pieces ----------------------------------------------------------------------------------


def _thumbnails(samples: Sequence, indices: list[int]) -> dict[int, str]:
    """Index -> a JPEG data URI, or the reason the image cannot be shown.  Decoded by the
    loader's own path (any source the loader reads: paths, arrays, PIL images)."""
    from transferkit.loader import DecodedImages

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


def _value(value: Any) -> str:
    """Any JSON-like value as HTML: dicts as key/value tables, lists of dicts as tables."""
    if isinstance(value, dict):
        return "<table class=kv>" + "".join(f"<tr><th>{_e(str(k).replace('_', ' '))}</th><td>{_value(v)}</td></tr>" for k, v in value.items()) + "</table>"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        columns = list(dict.fromkeys(k for v in value for k in v))
        head = "".join(f"<th>{_e(str(c).replace('_', ' '))}</th>" for c in columns)
        rows = "".join("<tr>" + "".join(f"<td>{_value(v.get(c))}</td>" for c in columns) + "</tr>" for v in value)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(value, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple)) for v in value) and sum(len(str(v)) for v in value) < 80:
            return _e(", ".join(_format(v) for v in value))
        return "<ul>" + "".join(f"<li>{_value(v)}</li>" for v in value) + "</ul>"
    return _e(_format(value))


def _cell(value: Any, numeric: bool) -> str:
    if value is None or value == "":
        return "<td></td>"
    if numeric and isinstance(value, (int, float, np.integer, np.floating)):
        return f"<td class=n data-v='{float(value):.6g}'>{_e(_format(value))}</td>"
    return f"<td>{_e(_format(value))}</td>"


def _format(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{float(value):.4g}"
    return "" if value is None else str(value)


def _short(name: str, limit: int = 12) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _generated() -> str:
    from transferkit import __version__

    return f"written by transferkit {__version__} on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"


def _write(path: Path, title: str, body: list[str]) -> Path:
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{_SORT_SCRIPT}</script></body></html>\n"
    )
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a report
    return path
