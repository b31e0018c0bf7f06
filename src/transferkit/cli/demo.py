"""`transferkit demo`: the main job, on the embedded EfficientNet-Lite0 and the embedded digits."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from transferkit.cli._app import command


def demo_cells(model: str, image_size: int | None, epochs: int):
    """What pretraining buys, side by side: raw pixels, features of two depths, a short fine-tune."""
    from transferkit.plan.comparison import Cell

    sized = (("image_size", image_size),)
    return [
        Cell("pixels", "linear", options=(("image_size", None),)),
        Cell(model, "linear", "stage2", sized),
        Cell(model, "linear", "stage3", sized),
        Cell(model, "linear", "penultimate", sized),
        # Few epochs: no augmentation, a brisk learning rate (measured on digits: 97% in 5 epochs).
        Cell(model, "finetune", "penultimate", sized + (("epochs", epochs), ("lr", 3e-3), ("augment", "none"))),
    ]


@command("demo")
def demo(
    data: str = typer.Option("digits", "--data", help="DATA to run on (default: scikit-learn's embedded digits)."),
    model: str = typer.Option("efficientnet_lite0", "--model", "-m"),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Folder for the runs and the leaderboard."),
    image_size: int = typer.Option(None, "--image-size", help="Input size (default 64 for digits, else the backbone's)."),
    epochs: int = typer.Option(5, "--epochs", min=1, help="Epochs of the fine-tuning cell."),
) -> None:
    """Compare transfer-learning strategies on DATA and write a leaderboard with plots."""
    from transferkit.plan.comparison import best, compare

    size = image_size or (64 if data == "digits" else None)
    rows = compare(data, demo_cells(model, size, epochs), out, progress=True, echo=typer.echo, batch_size=32)
    table = Table("model", "strategy", "layer", "val acc", "test acc", "extract s", "train s", title=f"transferkit demo on {data}")
    for r in rows:
        acc = lambda k: f"{r[k]:.1%}" if r.get(k) is not None else "-"  # noqa: E731
        secs = lambda k: f"{r[k]:.1f}" if r.get(k) is not None else "-"  # noqa: E731
        table.add_row(r["model"], r["strategy"], r["layer"], acc("val_acc"), acc("test_acc"), secs("extract_seconds"), secs("train_seconds"))
    console = Console()
    console.width = max(console.width, 110)  # keep the table whole when stdout is not a terminal
    console.print(table)
    top = best(rows)
    if top:
        typer.echo(f"best on validation: {top['model']} / {top['strategy']} / {top['layer']}; leaderboard and reports in {out}/")
    for r in rows:
        if r["status"] == "failed":
            typer.echo(f"failed: {r['model']} / {r['strategy']}: {r['reason']}", err=True)
