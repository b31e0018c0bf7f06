"""`transferkit train`, `evaluate` and `classify`: trained runs from the command line."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import typer

from transferkit.cli._app import ALLOW_OUTSIDE_ROOT, ENGINE, JSON, TRUST_PICKLE, command, print_json
from transferkit.training.options import FIELDS, STRATEGIES, TrainOptions, flag, value_type


def _cli_parameters() -> list[inspect.Parameter]:
    """One command-line option per field of options.TrainOptions, with its declared help.

    Every default is None (a flag: False), so the command passes on only what the user typed and
    the options model fills in the rest: an option the strategy does not use can then be refused.
    """
    params = []
    for name, f in FIELDS.items():
        meta = f.metadata
        kind = value_type(name)
        help = meta["help"] + ("" if f.default in (None, False, True) else f" [default: {f.default}]")
        if name == "strategy":
            help += " " + "; ".join(f"{s.name}: {s.summary}" for s in STRATEGIES.values())
        names = [flag(name)] + ([meta["short"]] if meta["short"] else [])
        default = typer.Option(False if kind is bool else None, *names, help=help, show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind if kind is bool else typing.Optional[kind]))
    return params


def _given(values: dict) -> dict:
    """What the user typed: flags that are set, values that are not None (``--no-pretrained`` as pretrained=False)."""
    given = {name: value for name, value in values.items() if value is not None and value is not False}  # 0 is a value
    if given.pop("pretrained", False):  # the flag is --no-pretrained
        given["pretrained"] = False
    return given


def train(
    data: str = typer.Argument(..., help="Image folder, CSV, cifar10[:ROOT], gtsrb[:ROOT], file.p, or digits."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default runs/<data>-<model>-<strategy>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out, with the options it recorded."),
    as_json: bool = JSON,
    **options,
) -> None:
    """Train a classifier on DATA with a pretrained backbone and the chosen strategy."""
    from transferkit.api import train as run_train

    result = run_train(data, out, resume=resume, progress=True, **_given(options))
    summary = result.metrics["summary"]
    if not summary:  # a DDP process other than rank 0: rank 0 reports
        return
    if as_json:
        print_json(summary)
        return
    for split in ("val", "test"):
        if summary.get(f"{split}_acc") is not None:
            typer.echo(f"{split} accuracy: {summary[f'{split}_acc']:.2%}")
    typer.echo(f"run saved in {result.run_dir} (report.html to look at, model.safetensors)")


_signature = inspect.signature(train)
train.__signature__ = _signature.replace(parameters=[p for p in _signature.parameters.values() if p.kind != p.VAR_KEYWORD] + _cli_parameters())
train.__annotations__ = {**{p.name: p.annotation for p in train.__signature__.parameters.values()}, "return": None}
train = command("train")(train)
assert set(TrainOptions.__dataclass_fields__) <= set(inspect.signature(train).parameters)


@command("evaluate")
def evaluate(
    run: Path = typer.Argument(..., help="A run folder written by `transferkit train`."),
    data: str = typer.Argument(..., help="Labelled images with the run's class names."),
    split: str = typer.Option(None, "--split", help="train | val | test | all (default: test if DATA has one, else all)."),
    trust_pickle: bool = TRUST_PICKLE,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    engine: str = ENGINE,
    as_json: bool = JSON,
) -> None:
    """Accuracy and per-class precision/recall of a trained run on labelled DATA."""
    from transferkit.api import evaluate as run_evaluate

    metrics = run_evaluate(run, data, split=split, batch_size=batch_size, engine=engine, trust_pickle=trust_pickle, allow_outside_root=allow_outside_root)
    if as_json:
        print_json(metrics)
        return
    typer.echo(f"accuracy: {metrics['accuracy']:.2%} on {metrics['count']} images ({metrics['split']})")
    for name, row in metrics["per_class"].items():
        typer.echo(f"  {name:20s} precision {row['precision']:.2f}  recall {row['recall']:.2f}  ({row['support']})")


@command("classify")
def classify(
    run: Path = typer.Argument(..., help="A run folder written by `transferkit train`."),
    images: list[Path] = typer.Argument(..., help="Image files or folders."),
    top_k: int = typer.Option(1, "--top-k", "-k", min=1),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    engine: str = ENGINE,
    as_json: bool = JSON,
) -> None:
    """Classify new images with a trained run, printing its class names."""
    from transferkit.api import classify as run_classify

    results = run_classify(run, images, top_k=top_k, batch_size=batch_size, engine=engine, progress="classify")
    failed = [r for r in results if "error" in r]
    for r in failed:
        typer.echo(f"error: {r['error']}", err=True)
    if as_json:
        print_json(results)
    else:
        for r in results:
            if "top" in r:
                best = ", ".join(f"{t['label']} ({t['probability']:.1%})" for t in r["top"])
                typer.echo(f"{r['image']}: {best}")
    if failed:
        raise typer.Exit(1)
