"""Every network x strategy (x layer) combination on one dataset, as a leaderboard.

Each cell is an ordinary training run in ``OUT/<model>-<strategy>-<layer>``, so cached
features are reused across cells, a finished cell is never redone (an interrupted comparison
resumes), an interrupted end-to-end cell resumes from its checkpoint, and a cell that fails
is recorded with its reason while the others still run.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from transferkit.core.errors import TransferkitError
from transferkit.training.options import END_TO_END_STRATEGIES, FEATURE_STRATEGIES, STRATEGIES, check_names, flag

COLUMNS = ("model", "strategy", "layer", "status", "val_acc", "test_acc", "extract_seconds", "train_seconds", "params", "train_images", "reason")


@dataclass(frozen=True)
class Cell:
    model: str
    strategy: str
    layer: str = "penultimate"
    options: tuple = ()  # extra training options for this cell only, as (name, value) pairs

    @property
    def name(self) -> str:
        return f"{self.model}-{self.strategy}-{self.layer}"

    def train_options(self, shared: dict) -> dict:
        """This cell's training options: the shared ones its strategy uses, then its own."""
        uses = STRATEGIES[self.strategy].options
        layer = {"layer": self.layer} if "layer" in uses else {}
        return {**{k: v for k, v in shared.items() if k in uses}, "model": self.model, "strategy": self.strategy, **layer, **dict(self.options)}


def grid(models: Sequence[str], strategies: Sequence[str], layers: Sequence[str] = ("penultimate",)) -> list[Cell]:
    """Every combination; layers apply to the heads on features only.  Unknown model or
    strategy names are refused here, before any cell runs."""
    from transferkit.core.backbones import get_spec

    for model in models:
        get_spec(model)  # raises "unknown model ... (did you mean ...)"
    for strategy in strategies:
        if strategy not in STRATEGIES or strategy == "auto":
            raise TransferkitError(f"unknown strategy {strategy!r}: use {', '.join(FEATURE_STRATEGIES + END_TO_END_STRATEGIES)}")
    return [
        Cell(m, s, layer)
        for m in models
        for s in strategies
        for layer in (layers if s in FEATURE_STRATEGIES else ["penultimate"])
    ]


def compare(data, cells: Sequence[Cell], out: str | Path, *, progress: bool = True, echo=print, **options) -> list[dict]:
    """Run ``cells`` on ``data`` and write leaderboard.{csv,md,png} in ``out``; returns the rows.

    ``options`` are training options for every cell whose strategy uses them (``epochs`` reaches
    the end-to-end cells, not the heads); one that no cell uses is refused.
    """
    from transferkit.core.data import ImageDataset, load_data
    from transferkit.core.check import check_dataset, summary_lines
    from transferkit.plan.auto import train

    check_names(options)
    options = {k: v for k, v in options.items() if v is not None}
    unused = [name for name in options if not any(name in STRATEGIES[cell.strategy].options for cell in cells)]
    if unused:
        raise TransferkitError(f"no cell's strategy uses {', '.join(flag(n) for n in unused)}: drop it, or add a strategy that uses it")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = data if isinstance(data, ImageDataset) else load_data(
        str(data), trust_pickle=options.get("trust_pickle", False), seed=options.get("seed", 0),
        val_fraction=options.get("val_fraction", 0.2), allow_outside_root=options.get("allow_outside_root", False),
    )
    if isinstance(dataset, ImageDataset):
        for line in summary_lines(check_dataset(dataset, None, decode=False, progress=False)):
            echo(f"check: {line}")
    rows = []
    for i, cell in enumerate(cells, 1):
        cell_dir = out / cell.name
        finished = cell_dir / "metrics.json"
        if (cell_dir / "model.json").is_file() and finished.is_file():
            summary = json.loads(finished.read_text())["summary"]
            rows.append(_row(cell, "done (reused)", summary))
            echo(f"[{i}/{len(cells)}] {cell.name}: already done, reused")
            continue
        echo(f"[{i}/{len(cells)}] {cell.name}")
        resume = (cell_dir / "checkpoints" / "last.ckpt").is_file()
        try:
            result = train(dataset, cell_dir, resume=resume, progress=progress, check=False, **cell.train_options(options))  # checked once, above
        except TransferkitError as err:
            rows.append(_row(cell, "failed", {}, reason=str(err)))
            echo(f"  failed: {err}")
            continue
        rows.append(_row(cell, "done", result.metrics["summary"]))
        acc = result.metrics["summary"].get("test_acc") or result.metrics["summary"].get("val_acc")
        echo(f"  accuracy {acc:.2%}" if acc is not None else "  done")
    write_leaderboard(rows, out, title=f"{dataset.name}: networks x strategies")
    return rows


def _row(cell: Cell, status: str, summary: dict, reason: str = "") -> dict:
    row = {"model": cell.model, "strategy": cell.strategy, "layer": cell.layer, "status": status, "reason": reason}
    row.update({k: summary.get(k) for k in COLUMNS if k in summary and k not in row})
    return row


def _rank_key(rows: list[dict]) -> str:
    """Cells are chosen by validation accuracy, as a user would choose; the test set only
    reports. Test accuracy ranks them only where no cell has a validation score."""
    return "val_acc" if any(r.get("val_acc") is not None for r in rows) else "test_acc"


def best(rows: list[dict]) -> dict | None:
    """The best finished cell (see :func:`_rank_key`)."""
    key = _rank_key(rows)
    scored = [r for r in rows if r.get(key) is not None]
    return max(scored, key=lambda r: r[key]) if scored else None


def write_leaderboard(rows: list[dict], out: Path, title: str) -> None:
    from transferkit.core.html_report import write_leaderboard_html
    from transferkit.core.report import markdown_table, plot_bars

    key = _rank_key(rows)
    ranked = sorted(rows, key=lambda r: -(r.get(key) or -1))
    with open(out / "leaderboard.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(ranked)
    (out / "leaderboard.md").write_text(f"# {title}\n\nRanked by {'validation' if key == 'val_acc' else 'test'} accuracy.\n\n{markdown_table(ranked, COLUMNS)}\n\n![leaderboard](leaderboard.png)\n")
    scored = [r for r in ranked if r.get(key) is not None]
    if scored:
        plot_bars([f"{r['model']} / {r['strategy']} / {r['layer']}" for r in scored], [r[key] for r in scored], out / "leaderboard.png", f"{title} ({key.replace('_acc', '')} accuracy)")
    write_leaderboard_html(rows, out, title)
