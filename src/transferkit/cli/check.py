"""`transferkit check`: what is wrong with DATA before a score is trusted."""

from __future__ import annotations

import typer

from transferkit.cli._app import ALLOW_OUTSIDE_ROOT, JSON, MODEL, TRUST_PICKLE, command, print_json
from transferkit.cli.extract import CACHE_DIR


@command("check")
def check(
    data: str = typer.Argument(..., help="Image folder, CSV, or gtsrb[:ROOT]: image files."),
    model: str = MODEL,
    image_size: int = typer.Option(None, "--image-size", help="Input size of the embeddings (default: the network's)."),
    cache_dir: str = CACHE_DIR,
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="Near duplicates and likely label errors need the network's features (cached)."),
    near_threshold: float = typer.Option(None, "--near-threshold", min=0.0, max=1.0, help="Cosine from which two images are near copies (default 0.86; 0.97-0.98 where they all look alike)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share held out for validation where DATA has no val split, as train draws it."),
    seed: int = typer.Option(0, "--seed"),
    trust_pickle: bool = TRUST_PICKLE,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    as_json: bool = JSON,
) -> None:
    """Unreadable and non-image files, exact and near duplicates (within a class, across classes,
    across splits), likely label errors, class balance. Reads the files; changes none."""
    from transferkit.api import check as run_check
    from transferkit.core.check import summary_lines

    report = run_check(data, model=model, image_size=image_size, cache_dir=cache_dir, embeddings=embeddings, near_threshold=near_threshold, val_fraction=val_fraction, seed=seed,
                       trust_pickle=trust_pickle, allow_outside_root=allow_outside_root, progress=not as_json)  # fmt: skip
    if as_json:
        print_json(report)
        return
    typer.echo(f"{report['data']}: " + ", ".join(f"{n:,} {s}" for s, n in report["splits"].items()) + f" images, {len(report['classes'])} classes")
    for line in summary_lines(report):
        typer.echo(f"  - {line}")
