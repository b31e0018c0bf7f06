"""`transferkit train`, `evaluate` and `classify`: trained runs from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._app import ALLOW_OUTSIDE_ROOT, ENGINE, JSON, MODEL, NO_PRETRAINED, TRUST_PICKLE, WEIGHTS, command, print_json
from transferkit.cli.extract import CACHE_DIR, FLIP_TTA, LAYER, QUANTIZE
from transferkit.train import STRATEGIES


@command("train")
def train(
    data: str = typer.Argument(..., help="Image folder, CSV, cifar10[:ROOT], gtsrb[:ROOT], file.p, or digits."),
    model: str = MODEL,
    strategy: str = typer.Option("linear", "--strategy", "-s", help=" | ".join(STRATEGIES)),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default runs/<data>-<model>-<strategy>)."),
    layer: str = LAYER,
    flip_tta: bool = FLIP_TTA,
    quantize: str = QUANTIZE,
    kernel: str = typer.Option("linear", "--kernel", help="svm: linear or rbf."),
    epochs: int = typer.Option(10, "--epochs"),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate of the head."),
    batch_size: int = typer.Option(32, "--batch-size"),
    image_size: int = typer.Option(None, "--image-size", help="Input size (default: the backbone's)."),
    weight_decay: float = typer.Option(1e-4, "--weight-decay"),
    dropout: float = typer.Option(None, "--dropout", help="Dropout before an end-to-end head (default 0.2); in the mlp head's hidden layer (default 0.5)."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing"),
    augment: str = typer.Option("light", "--augment", help="none | light | strong (end-to-end strategies)."),
    patience: int = typer.Option(None, "--patience", help="Stop after this many epochs without val improvement."),
    balance: str = typer.Option(None, "--balance", help="weights | sampler, for imbalanced classes."),
    unfreeze: str = typer.Option("all", "--unfreeze", help="finetune: layer groups to train, from the output end, or all."),
    backbone_lr_mult: float = typer.Option(0.1, "--backbone-lr-mult", help="finetune: backbone lr = lr x this."),
    head_epochs: int = typer.Option(1, "--head-epochs", help="finetune: epochs training the head alone first."),
    gradual: bool = typer.Option(False, "--gradual", help="finetune: unfreeze one more group per epoch."),
    cache_frozen: bool = typer.Option(False, "--cache-frozen", help="finetune --unfreeze N: run the frozen layers once and train on their cached output (fast on a CPU; --augment light mirrors the cached maps)."),
    per_class: int = typer.Option(None, "--per-class", help="Train on N images per class."),
    seed: int = typer.Option(0, "--seed"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share held out for validation where DATA has no val split."),
    devices: str = typer.Option("auto", "--devices", help="Lightning devices: auto (one: a GPU when there is one) or a number."),
    num_nodes: int = typer.Option(1, "--num-nodes", min=1, help="Machines (Lightning DDP; launch as docs/scale-out.md says)."),
    distributed: str = typer.Option("auto", "--distributed", help="Lightning strategy: auto or ddp."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16-mixed on a GPU with bfloat16, else 32-true), 32-true, 16-mixed or bf16-mixed."),
    num_workers: int = typer.Option(None, "--workers", min=0),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
    engine: str = ENGINE,
    cache_dir: Path = CACHE_DIR,
    weights: Path = WEIGHTS,
    no_pretrained: bool = NO_PRETRAINED,
    trust_pickle: bool = TRUST_PICKLE,
    allow_outside_root: bool = ALLOW_OUTSIDE_ROOT,
    as_json: bool = JSON,
) -> None:
    """Train a classifier on DATA with a pretrained backbone and the chosen strategy."""
    from transferkit.train import train as run_train

    result = run_train(
        data, out, resume=resume, progress=True, model=model, strategy=strategy, layer=layer, flip_tta=flip_tta, quantize=quantize, kernel=kernel, epochs=epochs,
        lr=lr, batch_size=batch_size, image_size=image_size, weight_decay=weight_decay, dropout=dropout,
        label_smoothing=label_smoothing, augment=augment, patience=patience, balance=balance, unfreeze=unfreeze,
        backbone_lr_mult=backbone_lr_mult, head_epochs=head_epochs, gradual=gradual, cache_frozen=cache_frozen, per_class=per_class, seed=seed,
        val_fraction=val_fraction, engine=engine, devices=devices, num_nodes=num_nodes, distributed=distributed, precision=precision, num_workers=num_workers, cache_dir=str(cache_dir) if cache_dir else None,
        weights=str(weights) if weights else None, pretrained=not no_pretrained, trust_pickle=trust_pickle,
        allow_outside_root=allow_outside_root,
    )  # fmt: skip
    summary = result.metrics["summary"]
    if not summary:  # a DDP process other than rank 0: rank 0 reports
        return
    if as_json:
        print_json(summary)
        return
    for split in ("val", "test"):
        if summary.get(f"{split}_acc") is not None:
            typer.echo(f"{split} accuracy: {summary[f'{split}_acc']:.2%}")
    typer.echo(f"run saved in {result.run_dir} (report.md, model.safetensors)")


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
    from transferkit.evaluate import evaluate_run

    metrics = evaluate_run(
        run, data, split=split, trust_pickle=trust_pickle, batch_size=batch_size, allow_outside_root=allow_outside_root, engine=engine
    )
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
    from transferkit.runs import load_run

    results = load_run(run).predict([str(p) for p in images], top_k=top_k, batch_size=batch_size, progress="classify", engine=engine)
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
