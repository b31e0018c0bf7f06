"""`transferkit compare`: networks x strategies on one dataset, as a leaderboard."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._app import ALLOW_OUTSIDE_ROOT, JSON, TRUST_PICKLE, command, print_json
from transferkit.cli.extract import CACHE_DIR
from transferkit.core.errors import TransferkitError


@command("compare")
def compare(
    data: str = typer.Argument(..., help="Image folder, CSV, cifar10[:ROOT], gtsrb[:ROOT], file.p, or digits."),
    models: str = typer.Option("efficientnet_lite0", "--models", help="Comma-separated backbone names."),
    strategies: str = typer.Option("linear", "--strategies", help="Comma-separated strategies."),
    layers: str = typer.Option("penultimate", "--layers", help="Comma-separated layers for the heads on features."),
    per_class: int = typer.Option(None, "--per-class", min=1, help="Train on N images per class."),
    out: Path = typer.Option(Path("runs/compare"), "--out", "-o"),
    epochs: int = typer.Option(None, "--epochs", min=1, help="Epochs of the mlp and end-to-end cells (default: train's)."),
    image_size: int = typer.Option(None, "--image-size"),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Images per batch (default: train's)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the split and the training (default: train's)."),
    cache_dir: Path = CACHE_DIR,
    trust_pickle: bool = TRUST_PICKLE,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    as_json: bool = JSON,
) -> None:
    """Run every model x strategy combination, reusing cached features; resumable."""
    from transferkit.api import compare as run_compare

    rows = run_compare(
        data, models=models, strategies=strategies, layers=layers, out=out, echo=(lambda *_: None) if as_json else typer.echo, per_class=per_class, epochs=epochs,
        image_size=image_size, batch_size=batch_size, seed=seed, cache_dir=str(cache_dir) if cache_dir else None,
        trust_pickle=trust_pickle, allow_outside_root=allow_outside_root,
    )  # fmt: skip
    if as_json:
        print_json(rows)
    else:
        typer.echo((out / "leaderboard.md").read_text())
    if rows and all(r["status"] == "failed" for r in rows):  # nothing to compare: scripts must see it
        raise TransferkitError(f"every cell failed (first: {rows[0]['reason']}); the reasons are in {out / 'leaderboard.md'}")
