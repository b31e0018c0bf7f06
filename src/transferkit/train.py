"""Training strategies, one entry point: labelled images in, a saved and evaluated run out.

Heads on cached features (``linear``, ``svm``, ``mlp``) are scikit-learn estimators folded
into a torch head; end-to-end strategies (``frozen``, ``finetune``, ``scratch``) run on
Lightning's Trainer (see finetune.py).  Every run writes the same artifacts (see runs.py).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.backbones import DEFAULT_MODEL, build_backbone, get_spec
from transferkit.errors import TransferkitError

FEATURE_STRATEGIES = ("linear", "svm", "mlp")
END_TO_END_STRATEGIES = ("frozen", "finetune", "scratch")
STRATEGIES = FEATURE_STRATEGIES + END_TO_END_STRATEGIES + ("auto",)


@dataclass
class TrainOptions:
    """Everything `transferkit train` takes; the resolved copy is saved as config.json."""

    model: str = DEFAULT_MODEL
    strategy: str = "linear"
    layer: str = "penultimate"
    flip_tta: bool = False
    quantize: str | None = None
    kernel: str = "linear"
    image_size: int | None = None
    batch_size: int = 32
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float | None = None  # None: each head's own default (0.2 end to end, 0.5 in the MLP head)
    label_smoothing: float = 0.0
    augment: str = "light"
    patience: int | None = None
    balance: str | None = None
    unfreeze: str = "all"
    backbone_lr_mult: float = 0.1
    head_epochs: int = 1
    gradual: bool = False
    cache_frozen: bool = False  # finetune --unfreeze N: run the frozen layer groups once, train on their cached output
    per_class: int | None = None
    seed: int = 0
    val_fraction: float = 0.2
    pretrained: bool = True
    weights: str | None = None
    trust_pickle: bool = False
    allow_outside_root: bool = False
    cache_dir: str | None = None
    engine: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    distributed: str = "auto"
    precision: str = "auto"
    num_workers: int | None = None

    def check(self) -> None:
        """Refuse impossible settings with one line each, before any work starts."""
        if self.strategy not in STRATEGIES:
            raise TransferkitError(f"unknown strategy {self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        for name in ("batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise TransferkitError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr < 0 or self.weight_decay < 0 or not 0 <= (self.dropout or 0) < 1 or not 0 <= self.label_smoothing < 1:
            raise TransferkitError("--lr and --weight-decay must be >= 0; --dropout and --label-smoothing in [0, 1)")
        if self.per_class is not None and self.per_class < 1:
            raise TransferkitError(f"--per-class must be at least 1, got {self.per_class}")
        if not 0 < self.val_fraction < 1:
            raise TransferkitError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.augment not in ("none", "light", "strong"):
            raise TransferkitError(f"--augment must be none, light or strong, got {self.augment!r}")
        if self.balance not in (None, "weights", "sampler"):
            raise TransferkitError(f"--balance must be weights or sampler, got {self.balance!r}")
        if self.kernel not in ("linear", "rbf"):
            raise TransferkitError(f"--kernel must be linear or rbf, got {self.kernel!r}")
        if self.unfreeze != "all" and not (str(self.unfreeze).isdigit() and int(self.unfreeze) >= 0):
            raise TransferkitError(f"--unfreeze must be a number of layer groups or 'all', got {self.unfreeze!r}")
        if self.layer != "penultimate" and self.strategy in END_TO_END_STRATEGIES:
            raise TransferkitError(f"--layer applies to heads on features ({', '.join(FEATURE_STRATEGIES)}), not to {self.strategy}")
        if self.flip_tta and self.strategy in END_TO_END_STRATEGIES:
            raise TransferkitError(f"--flip-tta applies to heads on features ({', '.join(FEATURE_STRATEGIES)}), not to {self.strategy}")
        if self.cache_frozen and not (self.strategy == "finetune" and self.unfreeze != "all"):
            raise TransferkitError("--cache-frozen applies to --strategy finetune --unfreeze N (for a frozen backbone, "
                                   f"--strategy {'|'.join(FEATURE_STRATEGIES)} train a head on its cached features)")
        n_groups = len(get_spec(self.model).layer_groups) if self.cache_frozen else 0
        if self.cache_frozen and int(self.unfreeze) >= n_groups:
            raise TransferkitError(f"--cache-frozen needs a frozen layer group: {self.model} has {n_groups}, so --unfreeze at most {n_groups - 1}")
        if self.cache_frozen and self.augment == "strong":
            raise TransferkitError("--cache-frozen augments the cached feature maps (mirroring, with --augment light): use --augment light or none")
        if self.quantize is not None and self.strategy in END_TO_END_STRATEGIES:
            raise TransferkitError(f"--quantize applies to feature extraction ({', '.join(FEATURE_STRATEGIES)}), not to {self.strategy}")


class _NotRankZero(Exception):
    """This process is not DDP's rank 0."""


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    run: Any = field(repr=False, default=None)  # runs.Run, loaded and ready to predict


def train(data, out: str | Path | None = None, *, resume: bool = False, progress: bool = True, **options) -> TrainResult:
    """Train a classifier on ``data`` (a DATA string or a loaded Dataset) and save the run.

    ``options`` are the fields of :class:`TrainOptions`.  ``out`` is the run folder
    (default ``runs/<data>-<model>-<strategy>``); ``resume`` continues an interrupted
    end-to-end run from its last checkpoint.
    """
    from transferkit.data import Dataset, load_data

    unknown = set(options) - {f.name for f in dataclasses.fields(TrainOptions)}
    if unknown:
        raise TypeError(f"unknown training options: {', '.join(sorted(unknown))}")
    opts = TrainOptions(**options)
    if resume and out is not None and (Path(out) / "config.json").is_file():
        opts = _resumed_options(Path(out), opts)
    opts.check()
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise TransferkitError(f"--out {out} is a file: a run is a folder; choose another --out")
    dataset = data if isinstance(data, Dataset) else load_data(
        str(data), trust_pickle=opts.trust_pickle, val_fraction=opts.val_fraction, seed=opts.seed,
        allow_outside_root=opts.allow_outside_root,
    )
    if not isinstance(dataset, Dataset):
        return _train_on_bottleneck_features(dataset, opts, out)
    if opts.strategy == "auto":
        from transferkit.advise import advise

        advice = advise(dataset, model=opts.model, cache_dir=opts.cache_dir, progress=progress)
        opts = dataclasses.replace(opts, **advice.train_options)
    if opts.dropout is None:  # config.json records the value used
        opts = dataclasses.replace(opts, dropout=_default_dropout(opts.strategy))
    train_set = dataset.train.per_class(opts.per_class, seed=opts.seed) if opts.per_class else dataset.train
    missing = set(range(len(dataset.classes))) - set(np.unique(train_set.labels).tolist())
    if missing:
        raise TransferkitError(f"the training split has no images of class(es) {', '.join(dataset.classes[i] for i in sorted(missing))}")
    run_dir = Path(out) if out else Path("runs") / f"{dataset.name}-{opts.model}-{opts.strategy}"
    if not resume and (run_dir / "model.json").exists():
        raise TransferkitError(f"{run_dir} already holds a finished run; choose another --out or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    from transferkit.runs import write_json

    write_json(run_dir / "config.json", {"data": dataset.name, "classes": dataset.classes, **dataclasses.asdict(opts)})
    if opts.strategy in FEATURE_STRATEGIES:
        model, history, timings, predictions = _train_head(dataset, train_set, opts, progress)
    else:
        try:
            model, history, timings = _train_end_to_end(dataset, train_set, opts, run_dir, resume, progress)
        except _NotRankZero:  # DDP: rank 0 evaluates and writes the run; the other processes are done
            return TrainResult(run_dir, {"summary": {}}, None)
        predictions = {}
    return _finish(run_dir, dataset, train_set, model, history, timings, predictions, opts, progress)


def _head_params(opts: TrainOptions) -> dict:
    """The options a head on features takes from `train`: the MLP's dropout, when given."""
    return {"dropout": opts.dropout} if opts.strategy == "mlp" and opts.dropout is not None else {}


def _default_dropout(strategy: str) -> float | None:
    """The dropout a strategy uses unless told otherwise; None for heads without dropout."""
    from transferkit.finetune import FitConfig
    from transferkit.heads import MLPHead

    if strategy in END_TO_END_STRATEGIES:
        return FitConfig.dropout
    return MLPHead().dropout if strategy == "mlp" else None


def _resumed_options(run_dir: Path, given: TrainOptions) -> TrainOptions:
    import json

    saved = json.loads((run_dir / "config.json").read_text())
    return TrainOptions(**{f.name: saved.get(f.name, getattr(given, f.name)) for f in dataclasses.fields(TrainOptions)})


def _backbone(opts: TrainOptions):
    from transferkit.backbones import get_spec

    # Baselines without pretrained weights (lenet, pixels) are always built at random.
    pretrained = opts.pretrained and opts.strategy != "scratch" and get_spec(opts.model).has_pretrained
    return build_backbone(opts.model, pretrained=pretrained, weights=opts.weights if pretrained else None, trust_pickle=opts.trust_pickle, seed=opts.seed)


def _extract(backbone, images, opts: TrainOptions, split: str, dataset_name: str, progress: bool, train_set):
    """Features of ``images``; an int8 engine is calibrated on ``train_set``, whatever the split."""
    from transferkit.features import extract_features

    return extract_features(
        images.samples, images.labels, backbone, data_fingerprint=images.fingerprint(), layer=opts.layer,
        image_size=opts.image_size, batch_size=opts.batch_size, num_workers=opts.num_workers, cache_dir=opts.cache_dir,
        engine=opts.engine, progress=f"extract {split}" if progress else False, description={"dataset": dataset_name, "split": split},
        flip_tta=opts.flip_tta, quantize=opts.quantize, calibration=train_set,
    )  # fmt: skip


def _train_head(dataset, train_set, opts: TrainOptions, progress: bool):
    """Extract (or reuse) features, fit the scikit-learn head, fold it into the network."""
    from transferkit.heads import make_head
    from transferkit.runs import TrainedModel

    backbone = _backbone(opts)
    started = time.perf_counter()
    train_features = _extract(backbone, train_set, opts, "train", dataset.name, progress, train_set)
    extract_seconds = time.perf_counter() - started
    X, y = train_features.usable()
    head = make_head(opts.strategy, kernel=opts.kernel, seed=opts.seed, **_head_params(opts))
    started = time.perf_counter()
    head.fit(X, y)
    train_seconds = time.perf_counter() - started
    # Validation and test images go through cached features and the folded head. The saved run
    # is the float32 network, so an int8 run is scored on float32 features too: the accuracy it
    # records is the one the loaded run reproduces.
    module = head.to_module()
    predictions = {}
    evaluated = {}
    scored_as_saved = dataclasses.replace(opts, quantize=None)
    for split in ("val", "test"):
        images = dataset.splits.get(split)
        if images is not None and len(images):
            evaluated[split] = _extract(backbone, images, scored_as_saved, split, dataset.name, progress, train_set).usable()
            with torch.inference_mode():
                scores = module(torch.as_tensor(np.asarray(evaluated[split][0])))
            predictions[split] = (evaluated[split][1], scores.argmax(1).numpy())
    history = _head_learning_curve(head, X, y, evaluated.get("val"), opts)
    timings = {
        "extract_seconds": extract_seconds,
        "train_seconds": train_seconds,
        "features_cached": train_features.hit,
        "skipped_images": len(train_features.failures),
        "chosen_C": getattr(head, "C_", None),
        "chosen_scaling": getattr(head, "scaling_", None),
    }
    return TrainedModel(backbone, module, head.layout_, opts.layer, opts.flip_tta), history, timings, predictions


def _head_learning_curve(head, X, y, val, opts) -> list[dict]:
    """Train and validation accuracy of the same head fitted on growing shares of the data."""
    from sklearn.base import clone

    Xv, yv = val if val is not None else (X[:0], y[:0])
    fixed = {"C": head.C_} if hasattr(head, "C_") else {}
    if hasattr(head, "scaling_"):
        fixed["scaling"] = head.scaling_
    history = []
    for share in (0.1, 0.25, 0.5, 1.0):
        rows = _stratified_rows(y, share, opts.seed)
        if len(np.unique(y[rows])) < 2:
            continue
        fitted = head if share == 1.0 else clone(head).set_params(**fixed).fit(X[rows], y[rows])
        history.append({"train_images": int(len(rows)), "train_acc": float(fitted.score(X[rows], y[rows])), "val_acc": float(fitted.score(Xv, yv)) if len(yv) else None})
    return history


def _stratified_rows(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    if share >= 1.0:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(y == c))[: max(1, round(share * np.sum(y == c)))] for c in np.unique(y)]
    return np.sort(np.concatenate(rows))


def _train_end_to_end(dataset, train_set, opts: TrainOptions, run_dir: Path, resume: bool, progress: bool):
    from transferkit.finetune import FitConfig, fit
    from transferkit.runs import TrainedModel

    backbone = _backbone(opts)
    inputs = {"train": (train_set.samples, train_set.labels), "val": (dataset.val.samples, dataset.val.labels)}
    extract_seconds, from_group, cached, skipped = 0.0, None, None, None
    if opts.cache_frozen:  # the frozen groups run once, here, through the feature cache
        from_group = len(backbone.spec.layer_groups) - int(opts.unfreeze)
        started = time.perf_counter()
        as_group = dataclasses.replace(opts, layer=f"group{from_group}", flip_tta=False, quantize=None)
        outputs = {split: _extract(backbone, images, as_group, split, dataset.name, progress, train_set) for split, images in (("train", train_set), ("val", dataset.val))}
        inputs = {split: entry.usable_rows() for split, entry in outputs.items()}
        cached, skipped = all(entry.hit for entry in outputs.values()), len(outputs["train"].failures)
        extract_seconds = time.perf_counter() - started
    config = FitConfig(
        strategy=opts.strategy, epochs=opts.epochs, lr=opts.lr, batch_size=opts.batch_size, weight_decay=opts.weight_decay,
        dropout=opts.dropout, label_smoothing=opts.label_smoothing, augment=opts.augment, patience=opts.patience,
        unfreeze=opts.unfreeze if opts.unfreeze == "all" else int(opts.unfreeze), backbone_lr_mult=opts.backbone_lr_mult,
        head_epochs=opts.head_epochs, gradual=opts.gradual, image_size=opts.image_size, balance=opts.balance, seed=opts.seed,
        devices=int(opts.devices) if str(opts.devices).isdigit() else opts.devices, num_nodes=opts.num_nodes,
        distributed=opts.distributed, precision=opts.precision, num_workers=opts.num_workers, from_group=from_group,
    )  # fmt: skip
    result = fit(backbone, inputs["train"], inputs["val"], len(dataset.classes), config, run_dir, resume=resume, progress=progress)
    trained = result.model
    if result.global_rank != 0:
        raise _NotRankZero
    timings = {
        "extract_seconds": extract_seconds,
        "features_cached": cached,
        "cached_layer": None if from_group is None else f"group{from_group}",
        "skipped_images": skipped,
        "train_seconds": result.seconds,
        "epochs_completed": result.epochs_completed,
        "best_epoch": result.best_epoch,
        "trainable_params": result.trainable_params,
    }
    return TrainedModel(trained, trained.classifier, result.head_layout, "penultimate"), result.history, timings


def _finish(run_dir: Path, dataset, train_set, model, history, timings, predictions, opts: TrainOptions, progress: bool) -> TrainResult:
    """Evaluate on val and test (unless ``predictions`` has them), save model, metrics, plots, report."""
    from transferkit.report import classification_metrics, plot_confusion, plot_curves, write_report
    from transferkit.runs import MODEL_META, Run, load_run, save_model, write_json

    image_size = model.backbone.spec.check_image_size(opts.image_size)
    # The weights first: their checksum names the ONNX export that scores val and test (eager
    # PyTorch is ~3x slower on a CPU); model.json, written last, marks the run finished.
    meta = save_model(run_dir, model, classes=list(dataset.classes), image_size=image_size, head_kind=opts.strategy)
    run = Run(run_dir, model.eval(), list(dataset.classes), image_size, meta)
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        images = dataset.splits.get(split)
        if split in predictions:
            metrics[split] = classification_metrics(*predictions[split], dataset.classes)
            continue
        if images is None or not len(images):
            continue
        probs, ok, _failures = run.scores(images.samples, batch_size=opts.batch_size, progress=f"evaluate {split}" if progress else False,
                                          engine=opts.engine, cache_dir=opts.cache_dir)
        metrics[split] = classification_metrics(images.labels[ok], probs[ok].argmax(1), dataset.classes)
    params = sum(p.numel() for p in model.parameters())
    summary = {
        "data": dataset.name,
        "model": opts.model,
        "strategy": opts.strategy,
        "layer": opts.layer,
        "train_images": len(train_set),
        "val_acc": metrics.get("val", {}).get("accuracy"),
        "test_acc": metrics.get("test", {}).get("accuracy"),
        **{k: v for k, v in timings.items() if v is not None},
        "params": params,
    }
    write_json(run_dir / "metrics.json", {"summary": summary, **metrics, "history": history})
    if history:
        x = "epoch" if "epoch" in history[0] else "train_images"
        plot_curves(history, run_dir / "curves.png", x, f"{opts.model} / {opts.strategy}")
        _write_csv(run_dir / ("metrics.csv" if x == "epoch" else "learning_curve.csv"), history)
    shown = "test" if "test" in metrics else "val"
    if shown in metrics:
        plot_confusion(metrics[shown]["confusion_matrix"], dataset.classes, run_dir / "confusion.png", f"{shown} confusion matrix")
    write_report(run_dir, f"{dataset.name}: {opts.model} / {opts.strategy}", summary, metrics, dataset.classes)
    write_json(run_dir / MODEL_META, {**meta, "summary": summary})
    return TrainResult(run_dir, {"summary": summary, **metrics}, load_run(run_dir))


def _write_csv(path: Path, rows: list[dict]) -> None:
    import csv

    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _train_on_bottleneck_features(features, opts: TrainOptions, out) -> TrainResult:
    """The lab's precomputed bottleneck pickles: a head on them, evaluated; no backbone to save."""
    from transferkit.heads import make_head
    from transferkit.report import classification_metrics
    from transferkit.runs import PRECOMPUTED_FEATURES, write_json

    if opts.strategy not in FEATURE_STRATEGIES:
        raise TransferkitError(f"{features.name} holds precomputed features: use --strategy {', '.join(FEATURE_STRATEGIES)}")
    X, y = features.splits["train"]
    head = make_head(opts.strategy, kernel=opts.kernel, seed=opts.seed, **_head_params(opts))
    started = time.perf_counter()
    head.fit(X, y)
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        if split in features.splits:
            Xs, ys = features.splits[split]
            metrics[split] = classification_metrics(ys, head.predict(Xs), features.classes)
    summary = {"data": features.name, "input": PRECOMPUTED_FEATURES, "strategy": opts.strategy, "train_images": len(y), "train_seconds": time.perf_counter() - started,
               "val_acc": metrics.get("val", {}).get("accuracy"), "test_acc": metrics.get("test", {}).get("accuracy")}  # fmt: skip
    run_dir = Path(out) if out else Path("runs") / f"{features.name}-{opts.strategy}"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "metrics.json", {"summary": summary, **metrics})
    return TrainResult(run_dir, {"summary": summary, **metrics}, None)
