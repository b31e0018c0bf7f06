"""`transferkit predict`: the pretrained network as is, on ImageNet's 1,000 classes."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.core.asis import predict as run_predict
from transferkit.core.backbones import get_spec
from transferkit.cli._app import ENGINE, JSON, MODEL, TRUST_PICKLE, WEIGHTS, command, one_line, print_json, printable
from transferkit.core.errors import TransferkitError


@command("predict")
def predict(
    images: list[Path] = typer.Argument(..., help="Image files or folders of images."),
    model: str = MODEL,
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Classes to show per image."),
    weights: Path = WEIGHTS,
    trust_pickle: bool = TRUST_PICKLE,
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    image_size: int = typer.Option(None, "--image-size", min=16, help="Override the backbone's input size."),
    engine: str = ENGINE,
    as_json: bool = JSON,
) -> None:
    """Classify images into ImageNet classes with the pretrained network as is."""
    if get_spec(model).categories is None:  # before building it: lenet and pixels have no weights either
        raise TransferkitError(f"{model} has no ImageNet classifier to predict with; use an ImageNet network "
                               "(`transferkit models`), or train a head with `transferkit train` and use `transferkit classify`")  # fmt: skip
    results = run_predict(
        [str(p) for p in images], model, top_k=top_k, weights=str(weights) if weights else None,
        trust_pickle=trust_pickle, batch_size=batch_size, image_size=image_size, progress="predict", engine=engine,
    )  # fmt: skip
    if as_json:
        print_json(results)
    else:
        for r in results:
            if "top" in r:
                typer.echo(printable(r["image"]))
                typer.echo("\n".join(f"  {t['probability']:6.1%}  {t['label']} ({t['class']})" for t in r["top"]))
    failed = [r for r in results if "error" in r]
    if failed:
        # The count first, then one `error:` line per bad file: the last line is always an error line.
        if len(results) > 1:
            typer.echo(f"{len(failed)} of {len(results)} images could not be classified:", err=True)
        for r in failed:
            typer.echo(f"error: {one_line(r['error'])}", err=True)
        raise typer.Exit(1)
