"""`transferkit report`: a run's report.html, rebuilt (on the data it was trained on, or new data)."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._app import ALLOW_OUTSIDE_ROOT, ENGINE, TRUST_PICKLE, command


@command("report")
def report(
    run: Path = typer.Argument(..., help="A run folder written by `transferkit train`."),
    data: str = typer.Option(None, "--data", help="Labelled images to show (default: the data the run was trained on, its val and test splits)."),
    split: str = typer.Option(None, "--split", help="With --data: train | val | test | all (default: test if DATA has one, else all)."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    engine: str = ENGINE,
    trust_pickle: bool = TRUST_PICKLE,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
) -> None:
    """Write RUN/report.html: accuracy with its 95% interval, per-class table, confusion matrix, learning curves and the mistakes, as thumbnails."""
    from transferkit.core.html_report import rebuild_report

    if split is not None and data is None:
        raise typer.BadParameter("--split needs --data (without it the report shows the run's own val and test splits)")
    path = rebuild_report(run, data, split=split, engine=engine, batch_size=batch_size, trust_pickle=trust_pickle,
                          allow_outside_root=allow_outside_root, progress=True)  # fmt: skip
    typer.echo(f"report written to {path}")
