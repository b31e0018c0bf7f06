"""`transferkit advise`: which strategy fits DATA, from measurements on it."""

from __future__ import annotations

import typer

from transferkit.cli._app import ALLOW_OUTSIDE_ROOT, JSON, MODEL, NO_PRETRAINED, TRUST_PICKLE, WEIGHTS, command, print_json
from transferkit.cli.extract import CACHE_DIR


@command("advise")
def advise(
    data: str = typer.Argument(..., help="Image folder, CSV, cifar10[:ROOT], gtsrb[:ROOT], file.p, or digits."),
    model: str = MODEL,
    weights: str = WEIGHTS,
    no_pretrained: bool = NO_PRETRAINED,
    sample_per_class: int = typer.Option(50, "--sample-per-class", min=2, help="Images per class measured."),
    cache_dir: str = CACHE_DIR,
    seed: int = typer.Option(0, "--seed"),
    trust_pickle: bool = TRUST_PICKLE,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    time_budget: str = typer.Option(None, "--time-budget", help="The planner's dry run: what `train --time-budget` would measure and train, without training."),
    as_json: bool = JSON,
) -> None:
    """Measure DATA and recommend a strategy, layer, image size and regularisation."""
    from transferkit.api import advise as run_advise

    advice = run_advise(
        data, model=model, weights=weights, pretrained=not no_pretrained, sample_per_class=sample_per_class, cache_dir=cache_dir, seed=seed, progress=not as_json,
        trust_pickle=trust_pickle, allow_outside_root=allow_outside_root, time_budget=time_budget,
    )
    if as_json:
        print_json(advice.to_dict())
        return
    if time_budget is not None:
        typer.echo(f"plan within {time_budget}: {advice.case.replace('-', ', ')} to ImageNet")
        for reason in advice.reasons:
            typer.echo(f"  - {reason}")
        typer.echo(f"run: {advice.command}")
        return
    typer.echo(f"case: {advice.case.replace('-', ', ')} to ImageNet")
    for reason in advice.reasons:
        typer.echo(f"  - {reason}")
    typer.echo(f"recommended: --strategy {advice.strategy} --layer {advice.layer} --image-size {advice.image_size}")
    typer.echo(f"regularisation: {', '.join(f'{k} {v}' for k, v in advice.regularisation.items())}")
    typer.echo(f"run: {advice.command}")
