"""Training strategies, one entry point: labelled images in, a saved and evaluated run out.

Heads on cached features (``linear``, ``svm``, ``mlp``) are scikit-learn estimators folded
into a torch head; end-to-end strategies (``frozen``, ``finetune``, ``scratch``) run on
Lightning's Trainer (see finetune.py).  Every run writes the same artifacts (see runs.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.core.backbones import build_backbone
from transferkit.core.errors import TransferkitError
from transferkit.training.options import END_TO_END_STRATEGIES, FEATURE_STRATEGIES, STRATEGIES, TrainOptions, check_names, flag, from_config, resolve, used

__all__ = ["END_TO_END_STRATEGIES", "FEATURE_STRATEGIES", "STRATEGIES", "TrainOptions", "TrainResult", "train"]


class _NotRankZero(Exception):
    """This process is not DDP's rank 0."""


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    run: Any = field(repr=False, default=None)  # runs.Run, loaded and ready to predict


def train(data, out: str | Path | None = None, *, resume: bool = False, progress: bool = True, plan: dict | None = None,
          time_limit_s: float | None = None, started: float | None = None, check: dict | None = None, **options) -> TrainResult:  # fmt: skip
    """Train a classifier on ``data`` (a DATA string or a loaded ImageDataset) with one named strategy and save the run.

    ``options`` are those of `transferkit train`, by the names of :class:`options.TrainOptions`;
    an option the chosen strategy does not use is refused.  ``strategy="auto"`` is the planner's
    (transferkit.api.train plans, then calls this with the options it chose, the record of its
    plan for the report, and the training's ``time_limit_s``).  ``out`` is the run folder (default
    ``runs/<data>-<model>-<strategy>``); ``resume`` continues an interrupted end-to-end run from
    its last checkpoint, with the options it recorded; ``started`` (``time.monotonic()``): when
    the user's call began, for the wall time it reports; ``check``: the data check's report
    (transferkit.core.check), kept in metrics.json and the report, and where test images have
    copies in the other splits, the accuracy on the rest of the test set is reported beside.
    """
    from transferkit.core.data import BottleneckFeatures, ImageDataset, load_data

    started = time.monotonic() if started is None else started
    if resume and out is not None and (Path(out) / "config.json").is_file():
        opts = _resumed_options(Path(out), options)
    else:
        opts = resolve(options)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise TransferkitError(f"--out {out} is a file: a run is a folder; choose another --out")
    dataset = data if isinstance(data, (ImageDataset, BottleneckFeatures)) else load_data(
        str(data), trust_pickle=opts.trust_pickle, val_fraction=opts.val_fraction, seed=opts.seed,
        allow_outside_root=opts.allow_outside_root,
    )
    if not isinstance(dataset, ImageDataset):
        return _train_on_bottleneck_features(dataset, opts, out, given=options)
    if opts.strategy == "auto":
        raise TransferkitError("the trainer takes one named strategy: plan first (transferkit.train plans when no --strategy is given)")
    train_set = dataset.train.per_class(opts.per_class, seed=opts.seed) if opts.per_class else dataset.train
    if opts.dedupe:
        train_set = _one_copy_each(dataset, train_set, progress)
    missing = set(range(len(dataset.classes))) - set(np.unique(train_set.labels).tolist())
    if missing:
        raise TransferkitError(f"the training split has no images of class(es) {', '.join(dataset.classes[i] for i in sorted(missing))}")
    run_dir = Path(out) if out else Path("runs") / f"{dataset.name}-{opts.model}-{opts.strategy}"
    if not resume and (run_dir / "model.json").exists():
        raise TransferkitError(f"{run_dir} already holds a finished run; choose another --out or remove it")
    run_dir.mkdir(parents=True, exist_ok=True)
    from transferkit.core.runs import write_json

    write_json(run_dir / "config.json", {"data": dataset.name, "classes": dataset.classes, **used(opts)})
    if opts.strategy in FEATURE_STRATEGIES:
        model, history, timings, scored = _train_head(dataset, train_set, opts, progress)
    else:
        try:
            model, history, timings = train_end_to_end(dataset, train_set, opts, run_dir, resume, progress, time_limit_s)
        except _NotRankZero:  # DDP: rank 0 evaluates and writes the run; the other processes are done
            return TrainResult(run_dir, {"summary": {}}, None)
        scored = {}
    return _finish(run_dir, dataset, train_set, model, history, timings, scored, opts, progress, plan, started, check)


def _head(opts: TrainOptions):
    """The unfitted scikit-learn head of ``opts``' strategy."""
    return STRATEGIES[opts.strategy].head(opts)


def _resumed_options(run_dir: Path, given: dict) -> TrainOptions:
    """The options the interrupted run recorded; a given option that differs from them is refused."""
    check_names(given)
    recorded = from_config(json.loads((run_dir / "config.json").read_text()))
    differing = [f"{flag(k)} {v!r} (the run has {getattr(recorded, k)!r})" for k, v in given.items()
                 if hasattr(recorded, k) and _same_type(getattr(recorded, k), v) != getattr(recorded, k)]  # fmt: skip
    if differing:
        raise TransferkitError(f"--resume continues {run_dir} with the options in its config.json, but " + ", ".join(differing)
                               + ": drop them, or train a new run in another --out")  # fmt: skip
    return recorded


def _same_type(recorded: Any, value: Any) -> Any:
    return str(value) if isinstance(recorded, str) and value is not None and not isinstance(value, str) else value


def backbone_for(opts: TrainOptions):
    """The network a run with ``opts`` starts from."""
    from transferkit.core.backbones import get_spec

    # A --weights file is always loaded (or refused); baselines without pretrained weights (lenet,
    # pixels) are otherwise built at random, and scratch always is (its options refuse --weights).
    pretrained = opts.weights is not None or (opts.pretrained and get_spec(opts.model).has_pretrained)
    return build_backbone(opts.model, pretrained=pretrained, weights=opts.weights, trust_pickle=opts.trust_pickle, seed=opts.seed)


def _extract(backbone, images, opts: TrainOptions, split: str, dataset_name: str, progress: bool, train_set):
    """Features of ``images``; an int8 engine is calibrated on ``train_set``, whatever the split."""
    from transferkit.core.features import extract_features

    return extract_features(
        images.samples, images.labels, backbone, data_fingerprint=images.fingerprint(), layer=opts.layer,
        image_size=opts.image_size, batch_size=opts.batch_size, num_workers=opts.num_workers, cache_dir=opts.cache_dir,
        engine=opts.engine, progress=f"extract {split}" if progress else False, description={"dataset": dataset_name, "split": split},
        flip_tta=opts.flip_tta, quantize=opts.quantize, calibration=train_set,
    )  # fmt: skip


def _train_head(dataset, train_set, opts: TrainOptions, progress: bool):
    """Extract (or reuse) features, fit the scikit-learn head, fold it into the network."""
    from transferkit.core.runs import TrainedModel

    backbone = backbone_for(opts)
    started = time.perf_counter()
    train_features = _extract(backbone, train_set, opts, "train", dataset.name, progress, train_set)
    extract_seconds = time.perf_counter() - started
    X, y = train_features.usable()
    head = _head(opts)
    started = time.perf_counter()
    head.fit(X, y)
    train_seconds = time.perf_counter() - started
    # Validation and test images go through cached features and the folded head. The saved run
    # is the float32 network, so an int8 run is scored on float32 features too: the accuracy it
    # records is the one the loaded run reproduces.
    module = head.to_module()
    scored, evaluated = {}, {}
    scored_as_saved = opts.replace(quantize=None)
    for split in ("val", "test"):
        images = dataset.splits.get(split)
        if images is not None and len(images):
            features = _extract(backbone, images, scored_as_saved, split, dataset.name, progress, train_set)
            evaluated[split] = features.usable()
            with torch.inference_mode():
                probs = module(torch.as_tensor(np.asarray(evaluated[split][0]))).softmax(1).numpy()
            scored[split] = ([images.samples[i] for i in np.flatnonzero(features.ok)], evaluated[split][1], probs)
    history = _head_learning_curve(head, X, y, evaluated.get("val"), opts)
    timings = {
        "extract_seconds": extract_seconds,
        "train_seconds": train_seconds,
        "features_cached": train_features.hit,
        "skipped_images": len(train_features.failures),
        "chosen_C": getattr(head, "C_", None),
        "chosen_scaling": getattr(head, "scaling_", None),
    }
    return TrainedModel(backbone, module, head.layout_, opts.layer, opts.flip_tta), history, timings, scored


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


def _one_copy_each(dataset, train_set, progress: bool):
    """``train_set`` without byte-identical copies: the first of each kept, none of an image that val or test holds."""
    from transferkit.core.check import duplicate_groups

    if not all(isinstance(s, (str, os.PathLike)) for s in train_set.samples):
        raise TransferkitError(f"--dedupe compares image files, and {dataset.name} holds its images in memory: drop --dedupe")
    held_out = [s for name, part in dataset.splits.items() if name != "train" for s in part.samples]
    groups = duplicate_groups([*train_set.samples, *held_out])
    elsewhere, seen, keep = set(groups[len(train_set):].tolist()), set(), []
    for i, g in enumerate(groups[: len(train_set)].tolist()):
        if g not in elsewhere and g not in seen:
            keep.append(i)
        seen.add(g)
    if progress and len(keep) < len(train_set):
        print(f"--dedupe: training on {len(keep):,} of {len(train_set):,} images ({len(train_set) - len(keep):,} copies dropped)", file=sys.stderr)
    return train_set.subset(keep)


def _stratified_rows(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    if share >= 1.0:
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(y == c))[: max(1, round(share * np.sum(y == c)))] for c in np.unique(y)]
    return np.sort(np.concatenate(rows))


def train_end_to_end(dataset, train_set, opts: TrainOptions, run_dir: Path, resume: bool, progress: bool, time_limit_s: float | None = None):
    """Fit ``opts``' end-to-end strategy on Lightning's Trainer: (the trained model, its history, its timings)."""
    from transferkit.training.finetune import FitConfig, fit
    from transferkit.core.runs import TrainedModel
    from transferkit.training.schedule import FreezeSchedule

    backbone = backbone_for(opts)
    inputs = {"train": (train_set.samples, train_set.labels), "val": (dataset.val.samples, dataset.val.labels)}
    extract_seconds, from_group, cached, skipped = 0.0, None, None, None
    if opts.cache_frozen:  # the groups that never train run once, here, through the feature cache
        from_group = FreezeSchedule.of(opts, len(backbone.spec.layer_groups)).first_trained_group - 1
        started = time.perf_counter()
        as_group = opts.replace(layer=f"group{from_group}", flip_tta=False, quantize=None)
        outputs = {split: _extract(backbone, images, as_group, split, dataset.name, progress, train_set) for split, images in (("train", train_set), ("val", dataset.val))}
        inputs = {split: entry.usable_rows() for split, entry in outputs.items()}
        cached, skipped = all(entry.hit for entry in outputs.values()), len(outputs["train"].failures)
        extract_seconds = time.perf_counter() - started
    config = FitConfig.of(opts, from_group=from_group, time_limit_s=time_limit_s)
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


def _finish(run_dir: Path, dataset, train_set, model, history, timings, scored, opts: TrainOptions, progress: bool, plan: dict | None = None,
            started: float | None = None, check: dict | None = None) -> TrainResult:  # fmt: skip
    """Score val and test (unless ``scored`` has them: (samples, labels, probabilities) per split),
    save model, metrics, plots, reports (``plan``: how auto chose the options, for the report;
    ``started``: when the call began, for the wall time)."""
    from transferkit.core.html_report import write_html_report
    from transferkit.core.report import classification_metrics, plot_confusion, plot_curves, write_report
    from transferkit.core.check import metrics_without_copies
    from transferkit.core.runs import MODEL_META, Run, load_run, save_model, write_csv, write_json

    image_size = model.backbone.spec.check_image_size(opts.image_size)
    # The weights first: their checksum names the ONNX export that scores val and test (eager
    # PyTorch is ~3x slower on a CPU); model.json, written last, marks the run finished.
    meta = save_model(run_dir, model, classes=list(dataset.classes), image_size=image_size, head_kind=opts.strategy)
    run = Run(run_dir, model.eval(), list(dataset.classes), image_size, meta)
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        images = dataset.splits.get(split)
        if split not in scored and images is not None and len(images):
            probs, ok, _failures = run.scores(images.samples, batch_size=opts.batch_size, progress=f"evaluate {split}" if progress else False,
                                              engine=opts.engine, cache_dir=opts.cache_dir)
            scored[split] = ([images.samples[i] for i in np.flatnonzero(ok)], images.labels[ok], probs[ok])
        if split in scored:
            metrics[split] = classification_metrics(scored[split][1], scored[split][2].argmax(1), dataset.classes)
    if check and "test" in scored:
        # Test images with a byte-identical copy in train or val score memory: the rest is the honest figure.
        clean = metrics_without_copies(dataset, check, scored["test"], list(dataset.classes))
        if clean is not None:
            metrics["test_clean"] = clean
            if progress:
                n, kept = len(scored["test"][1]), len(scored["test"][1]) - clean["images_with_copies"]
                print(f"warning: {clean['images_with_copies']} of {n} test images have a copy in train or val; test accuracy "
                      f"{metrics['test']['accuracy']:.2%}, on the other {kept}: {clean['accuracy']:.2%}", file=sys.stderr)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    summary = {
        "data": dataset.name,
        "model": opts.model,
        "strategy": opts.strategy,
        "layer": opts.layer,
        "image_size": image_size,
        "train_images": len(train_set),
        "val_acc": metrics.get("val", {}).get("accuracy"),
        "test_acc": metrics.get("test", {}).get("accuracy"),
        **({"test_acc_without_copies": metrics["test_clean"]["accuracy"], "test_images_with_copies": metrics["test_clean"]["images_with_copies"]} if "test_clean" in metrics else {}),
        **{k: v for k, v in timings.items() if v is not None},
        "params": params,
    }
    if plan is not None:
        summary["planned_by"] = "auto"
    if started is not None:
        summary["wall_seconds"] = round(time.monotonic() - started, 1)  # up to here: the reports and model.json follow in a second
    write_json(run_dir / "metrics.json", {"summary": summary, **metrics, "history": history, **({"plan": plan} if plan else {}), **({"check": check} if check else {})})
    if history:
        x = "epoch" if "epoch" in history[0] else "train_images"
        plot_curves(history, run_dir / "curves.png", x, f"{opts.model} / {opts.strategy}")
        if x == "train_images":  # an end-to-end run's metrics.csv is the training loop's (finetune.fit)
            write_csv(run_dir / "learning_curve.csv", history)
    shown = "test" if "test" in metrics else "val"
    if shown in metrics:
        plot_confusion(metrics[shown]["confusion_matrix"], dataset.classes, run_dir / "confusion.png", f"{shown} confusion matrix")
    title = f"{dataset.name}: {opts.model} / {opts.strategy}"
    write_report(run_dir, title, summary, metrics, dataset.classes)
    write_html_report(run_dir, title=title, summary=summary, metrics=metrics, classes=list(dataset.classes), history=history, scored=scored, plan=plan,
                      check=check)
    write_json(run_dir / MODEL_META, {**meta, "summary": summary})
    return TrainResult(run_dir, {"summary": summary, **metrics}, load_run(run_dir))


# What a head on precomputed features uses: no network, no images, no extraction.
BOTTLENECK_OPTIONS = {"strategy", "seed", "trust_pickle", "allow_outside_root", "val_fraction", "balance", "kernel", "dropout", "lr", "epochs", "weight_decay"}


def _train_on_bottleneck_features(features, opts: TrainOptions, out, given: dict) -> TrainResult:
    """The lab's precomputed bottleneck pickles: a head on them, evaluated; no backbone to save."""
    from transferkit.core.report import classification_metrics
    from transferkit.core.runs import PRECOMPUTED_FEATURES, write_json

    if opts.strategy not in FEATURE_STRATEGIES:
        raise TransferkitError(f"{features.name} holds precomputed features: use --strategy {', '.join(FEATURE_STRATEGIES)}")
    unused = [flag(name) for name, value in given.items() if name not in BOTTLENECK_OPTIONS and value is not None]
    if unused:
        raise TransferkitError(f"{features.name} holds precomputed features, with no network or images: {', '.join(unused)} do not apply; drop them")
    X, y = features.splits["train"]
    head = _head(opts)
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
