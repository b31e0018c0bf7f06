"""``--strategy auto`` (the default): measure the data and this machine, then train the recipe
expected to be most accurate within the time budget, and say why.

Within the budget, on a sample of the training images (at most 100 a class, 1,000 in all) and
of the validation images, a run measures:

1. **augmentation**: whether the classes survive a mirror image, and how much of an image a
   random crop may drop (:func:`probes.measure_augmentation`);
2. **heads on features**: a linear probe's learning curve at each input size, extrapolated to
   the full training set (:func:`planner.extrapolate_accuracy`); raw pixels with a linear model and
   an RBF SVM, the baselines a network must beat;
3. **end-to-end training**: the last layer groups fine-tuned on cached inputs at the probe size,
   and the whole network at the smallest size, each trained on half the sample and on all of it
   and scored on the validation sample: their learning curves (one exponent, shared) extended to
   all the training images; at other sizes the error scales as the linear head's does;
4. **speed**: images/s of every workload here (:class:`throughput.ThroughputTable`, kept per machine).

Each candidate is priced (:class:`planner.CostModel`) and the most accurate that fits what is
left is trained (:func:`planner.choose`).  An end-to-end recipe gets the training time that is
left as a limit: its learning rate anneals by the deadline even where the machine turns out
slower than measured (a competing process), and training stops there.  The user's options stay
fixed throughout (:func:`planner.with_user_options`): the planner only searches the rest.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from transferkit.core.backbones import build_backbone
from transferkit.core.check import check_dataset, summary_lines
from transferkit.core.data import ImageDataset, load_data
from transferkit.core.errors import TransferkitError
from transferkit.core.throughput import ThroughputTable, Workload, split_cores
from transferkit.plan.advice import Advice, four_cases
from transferkit.plan.planner import (LAST_GROUPS_SCHEDULE, SAFETY, WHOLE_NETWORK_SCHEDULE, Candidate, CostModel, DataSizes, choose, extrapolate_accuracy,
                                      learning_curve_exponent, with_user_options)
from transferkit.plan.probes import layer_features, learning_curve, linear_probe, measure_augmentation, rbf_probe, views
from transferkit.training import trainer
from transferkit.training.options import DEFAULT_MODEL, STRATEGIES, TrainOptions, format_duration, parse_duration, resolve, used

SAMPLE_PER_CLASS, SAMPLE_IMAGES = 100, 1000  # the training sample the probes fit on (at most) ...
MIN_SAMPLE_IMAGES, SAMPLE_IMAGES_PER_S = 200, 3.5  # ... and at least, or 3.5 a second of the budget: 420 for 2 minutes
VAL_PER_CLASS = 50  # the validation sample they are scored on: half the training sample's images
PROBE_FIT_S = 3.0  # a linear probe's curve on the sample, per layer (C by 3-fold CV, two smaller shares)
PROBE_SHARE = 0.25  # of the budget, at most, for measuring; a probe that would overrun it is skipped
MEASURE_S = 0.5  # seconds per throughput figure (after a warm-up batch), kept per machine
PROBE_EPOCHS = 6  # a fine-tuning probe's epochs on the sample
MIRROR_VAL_IMAGES, MIRROR_VAL_PER_S = 2000, 4.0  # validation images the augmentation tests see: 4 a second of the budget, up to 2,000
# Epochs worth training on n images: two passes over CIFAR-10's 49,000 reached 91% (BENCHMARKS.md)
# and small sets need more passes; capped at ten, where the sample's validation curves flatten.
EPOCH_IMAGES, MAX_EPOCHS = 60_000, 10
# A recipe trained for e of its E epochs keeps (E / e) ** 0.25 of its error: a prior, not a
# measurement (on CIFAR-10, one epoch of a two-epoch cosine schedule reached 89.4% of 91%).
EPOCH_PENALTY = 0.25
# A head on frozen features saturates: its learning curve is extrapolated to at most ten times
# the images it was measured on (CIFAR-10: the linear probe's curve on 667 images, extended to
# 40,000 by the power law, promised 88%; to 6,670, 82%, what the full set gives). Fine-tuning
# keeps gaining with data (Kornblith et al. 2019; on CIFAR-10 91% against the head's 82%): its
# curve is extended to all the training images.
FROZEN_SATURATION = 10
SECONDS_PER_IMAGE = 0.025  # the default budget: 25 ms a training image, from 2 to 60 minutes
MIN_BUDGET_S, MAX_BUDGET_S = 120.0, 3600.0

END_TO_END_RECIPES = {"finetune-last-groups": {**LAST_GROUPS_SCHEDULE, "unfreeze": "2"}, "finetune-all": WHOLE_NETWORK_SCHEDULE}


def default_budget(n_train: int) -> float:
    """The budget when none is given: 25 ms a training image, from 2 to 60 minutes."""
    return float(np.clip(n_train * SECONDS_PER_IMAGE, MIN_BUDGET_S, MAX_BUDGET_S))


@dataclass
class Planned:
    """What auto decided: the options to train with, the end-to-end training's time limit, and the record for the report."""
    options: TrainOptions
    time_limit_s: float | None
    record: dict = field(default_factory=dict)


@dataclass
class _Searched:
    """A recipe with its expected accuracy, where that comes from, and any cost the model cannot price."""
    recipe: dict
    accuracy: float
    evidence: str
    extra_s: float = 0.0


class _Clock:
    def __init__(self, started: float, budget_s: float):
        self.started, self.budget_s = started, budget_s

    @property
    def spent(self) -> float:
        return time.monotonic() - self.started

    @property
    def left(self) -> float:
        return self.budget_s - self.spent


def plan(dataset, given: dict, *, started: float | None = None, progress: bool = True, say: Callable[[str], None] | None = None) -> Planned:
    """Measure ``dataset`` (an ImageDataset) and choose the options ``train`` runs with.

    ``given``: the options the user set (None: unset), kept fixed in every recipe; ``started``
    (``time.monotonic()``): when the user's call began, the budget counts from there; ``say``:
    where the plan's lines go (default: stderr, unless ``progress`` is off).
    """
    base = resolve({**given, "strategy": "auto"})
    train = dataset.train.per_class(base.per_class, seed=base.seed) if base.per_class else dataset.train
    n_classes = len(dataset.classes)
    sizes = DataSizes(len(train), len(dataset.val), len(dataset.test) if dataset.test is not None else 0)
    budget_s = parse_duration(base.time_budget) if base.time_budget else default_budget(sizes.train)
    clock = _Clock(time.monotonic() if started is None else started, budget_s)
    shout = say or (lambda line: print(line, file=sys.stderr) if progress else None)

    def say(line: str) -> None:
        shout(f"auto [{clock.spent:5.1f}s] {line}")

    say(f"planning within {format_duration(budget_s)}"
        + ("" if base.time_budget else f" (the default for {sizes.train:,} training images; set --time-budget)"))  # fmt: skip
    images = min(SAMPLE_IMAGES, max(MIN_SAMPLE_IMAGES, round(budget_s * SAMPLE_IMAGES_PER_S)))  # a small budget probes a smaller sample
    sample = train.per_class(max(2, min(SAMPLE_PER_CLASS, images // n_classes)), seed=base.seed)
    val_sample = dataset.val.per_class(max(2, min(VAL_PER_CLASS, images // 2 // n_classes)), seed=base.seed)
    context = _Context(base, given, dataset, sizes, sample, val_sample, clock, budget_s * PROBE_SHARE,
                       CostModel(_SizedRates(ThroughputTable(base.cache_dir, seconds=MEASURE_S).rate), workers=split_cores().workers), say)  # fmt: skip
    models = [base.model] if given.get("model") is not None else [DEFAULT_MODEL, "pixels"]
    searched: list[_Searched] = []
    for model in models:
        if model != "pixels":  # the user's network, or the default: what it refuses (a --layer it has not) is the user's to hear
            searched += _network_recipes(context, model)
            continue
        try:
            searched += _pixel_recipes(context)
        except TransferkitError as err:
            context.notes.append(f"{model}: not measured ({err})")
    candidates = []
    for found in searched:
        runnable, dropped = with_user_options([found.recipe], given)
        context.notes += dropped
        candidates += [c for c in (_priced(opts, found, context) for opts in runnable) if c is not None]
    if not candidates:
        raise TransferkitError("auto could not measure a recipe that honours the options you set: give --strategy, or fewer options")
    chosen = choose(candidates, budget_s, spent_s=clock.spent, safety=1.0)
    for row in chosen.table()[:5]:
        say(f"  {'->' if row['chosen'] else '  '} expected {row['expected_accuracy']:.1%} in about {row['cost_s']:.0f} s: {row['recipe']}")
    for line in chosen.notes:
        say(f"{line}")
    record = {
        "budget_s": round(budget_s, 1),
        "budget_given": base.time_budget is not None,
        "planning_s": round(clock.spent, 1),
        "chosen": chosen.chosen.name,
        "expected_accuracy": round(chosen.chosen.accuracy, 4),
        "training_time_limit_s": None if chosen.chosen.time_limit_s is None else round(chosen.chosen.time_limit_s, 1),
        "command": chosen.command(dataset.name),
        "case": _four_cases(train, n_classes, context.evidence),
        "augmentation": context.augmentation.report() if context.augmentation is not None else None,
        # the mirror test's decision and, per class, the class its mirror images were taken for (the report names mirror pairs among the confusions)
        "mirror": None if context.augmentation is None else {
            "decision": context.augmentation.mirror.decision, "layer": context.augmentation.layer,
            "classes": [{k: row[k] for k in ("class", "images", "mirrored_as", "mirrored_as_share", "breaks")} for row in context.augmentation.mirror.classes]},
        "evidence": context.evidence,
        "candidates": chosen.table(),
        "notes": chosen.notes + context.notes,
    }
    return Planned(chosen.chosen.options, chosen.chosen.time_limit_s, record)


@dataclass
class _Context:
    base: TrainOptions
    given: dict
    dataset: Any
    sizes: Any  # planner.DataSizes
    sample: Any  # LabelledImages
    val_sample: Any
    clock: _Clock
    probe_deadline: float  # seconds into the budget when measuring must end
    cost: Any  # planner.CostModel
    say: Callable[[str], None]
    notes: list[str] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)
    augmentation: Any = None  # probes.AugmentationProbe


def _network_recipes(c: _Context, model: str) -> list[_Searched]:
    """Heads on ``model``'s features at each probed size and layer, and the end-to-end recipes
    whose probe on the sample fitted the probing time."""
    opts = c.base.replace(model=model)
    backbone = trainer.backbone_for(opts)
    spec = backbone.spec
    if c.given.get("image_size"):
        probe_sizes = [spec.check_image_size(c.given["image_size"])]
    elif spec.fixed_input_size:
        probe_sizes = [spec.input_size]
    else:
        probe_sizes = sorted({s for s in (64, 128, spec.input_size) if s >= spec.min_input_size})
    probe_size = min(probe_sizes, key=lambda s: abs(s - 128))
    c.cost.rate.sizes[model] = probe_sizes  # speeds at other sizes: interpolated from these
    seed, y, y_val = c.base.seed, c.sample.labels, c.val_sample.labels
    c.say(f"measuring {model} on {len(c.sample)} training and {len(c.val_sample)} validation images")
    try:
        # The augmentation tests see more validation images than the other probes: a class turning
        # into its mirror partner needs a dozen or more images of each to show (GTSRB's signs at
        # 11 a class could not), and two passes through the network are cheap beside training.
        n_val = min(MIRROR_VAL_IMAGES, max(len(c.val_sample), round(c.clock.budget_s * MIRROR_VAL_PER_S)))
        probe_val = c.dataset.val.per_class(max(2, n_val // len(c.dataset.classes)), seed=seed)
        c.augmentation = measure_augmentation(backbone, c.sample, probe_val, image_size=probe_size, seed=seed)
        c.evidence["layer_accuracy"] = c.augmentation.layer_accuracy
        for line in c.augmentation.mirror.reasons + (c.augmentation.crops.reasons if c.augmentation.crops else []):
            c.say(f"{line}")
    except TransferkitError as err:
        c.notes.append(f"augmentation not probed ({err}): mirroring and crops as --augment light has them")
    mirror = c.augmentation is None or c.augmentation.mirror.mirror
    layers = [c.given["layer"]] if c.given.get("layer") else ["penultimate"]
    if not c.given.get("layer") and c.augmentation is not None and c.augmentation.layer != "penultimate":
        layers.append(c.augmentation.layer)
    found: list[_Searched] = []
    expected: dict[int, float] = {}  # the best layer's linear head on all the data, by size: what end-to-end training is set against
    on_val: dict[int, float] = {}  # the linear probe fitted on the sample, on the validation sample, by size
    flip_gain: dict[str, float] = {}  # by layer, at the probe size

    def linear_at(size: int) -> None:
        estimate = c.cost.seconds(len(c.sample) + len(c.val_sample), Workload(model, size)) + PROBE_FIT_S * len(layers)
        if size in expected or (expected and c.clock.spent + estimate > c.probe_deadline):
            if size not in expected and not any(note.startswith(f"linear probe at {size} px") for note in c.notes):
                c.notes.append(f"linear probe at {size} px not measured: about {estimate:.0f} s, past the {c.probe_deadline:.0f} s for measuring")
            return
        train_x = layer_features(backbone, c.sample.samples, spec.transform(size), layers, seed=seed)
        val_x = layer_features(backbone, c.val_sample.samples, spec.transform(size), layers, seed=seed)
        # --flip-tta's gain is measured at the probe size only (the mirror images cost a pass) and carried to the others
        mirrored = layer_features(backbone, c.val_sample.samples, views(spec, size, ())["mirrored"], layers, seed=seed) if mirror and size == probe_size else None
        for layer in layers:
            sizes, accuracies, probe = _fitted_on(*learning_curve(train_x[layer], y, seed=seed))
            full = extrapolate_accuracy(sizes, accuracies, min(c.sizes.train, FROZEN_SATURATION * sizes[-1]))
            score = float(probe.score(val_x[layer], y_val))
            c.evidence.setdefault("linear_probe", {})[f"{model} {layer} @{size}"] = {
                "curve": dict(zip(sizes, [round(a, 4) for a in accuracies])), "expected_full": round(full, 4), "val_sample": round(score, 4)}
            found.append(_Searched({"strategy": "linear", "model": model, "image_size": size, "layer": layer}, full,
                                   f"linear probe {accuracies[-1]:.1%} on {sizes[-1]} images (3-fold), extrapolated to {c.sizes.train:,}"))  # fmt: skip
            if mirrored is not None:  # --flip-tta: the same probe on each image's features averaged with its mirror image's
                flip_gain[layer] = float(probe.score((val_x[layer] + mirrored[layer]) / 2, y_val)) - score
                c.evidence.setdefault("flip_tta_gain", {})[f"{model} {layer} @{size}"] = round(flip_gain[layer], 4)
            gain = flip_gain.get(layer, 0.0)
            if gain > 0:
                found.append(_Searched({"strategy": "linear", "model": model, "image_size": size, "layer": layer, "flip_tta": True}, min(1.0, full + gain),
                                           f"linear probe extrapolated to {c.sizes.train:,}, plus {gain:.1%} from averaging with mirror images on the validation sample"))  # fmt: skip
            expected[size], on_val[size] = max(full, expected.get(size, 0.0)), max(score, on_val.get(size, 0.0))

    # Each step only while the time for measuring lasts: the linear probe at the probe size and at
    # the network's own, fine-tuning the last groups at the probe size, the linear probe at the
    # smallest size and the whole network there, then any other size.
    end_to_end = c.base.pretrained and bool(spec.has_pretrained or c.base.weights) and not (c.given.get("strategy") in STRATEGIES and STRATEGIES[c.given["strategy"]].kind == "features")
    curves: dict[str, tuple] = {}  # recipe name -> (sizes, accuracies, the size probed, the evidence)
    linear_at(probe_size)
    linear_at(probe_sizes[-1])  # the network's own size: how much larger inputs buy
    for name, size in (("finetune-last-groups", probe_size), ("finetune-all", probe_sizes[0])):
        linear_at(size)
        if end_to_end and size in on_val and (name != "finetune-last-groups" or len(spec.layer_groups) >= 3):
            measured = _probe_end_to_end(c, model, name, size, on_val[size])
            if measured is not None:
                curves[name] = measured
    for size in probe_sizes:
        linear_at(size)
    known = sorted(expected)
    sizes_for = {
        "finetune-last-groups": sorted({*known, 96, 160, 192} & set(range(spec.min_input_size, spec.input_size + 1))) if len(known) > 1 else known,
        # the whole network is not carried to larger sizes than its probe's: at 64 px it gains from
        # adapting early layers to small inputs that a larger size would not need (CIFAR-10)
        "finetune-all": [s for s in known if s <= probe_sizes[0]],
    }
    # Two points make a noisy exponent: the recipes share their mean, and each is extended from
    # its own accuracy on the whole sample, so the sample's order between them stands.
    exponents = [b for sizes, accuracies, _, _ in curves.values() if (b := learning_curve_exponent(sizes, accuracies)) is not None]
    shared = float(np.mean(exponents)) if exponents else None
    for name, (sizes, accuracies, probed, why) in curves.items():
        probed_full = extrapolate_accuracy(sizes, accuracies, c.sizes.train, exponent=shared)
        why += f", extended to {c.sizes.train:,} images: {probed_full:.1%}" + (f" (learning-curve exponent {shared:.2f}, shared)" if shared is not None else "")
        c.evidence["end_to_end_probe"][f"{name} @{probed}"]["expected_full"] = round(probed_full, 4)
        settings = {**END_TO_END_RECIPES[name], "model": model, **_augmentation(c, name == "finetune-all")}
        for size in sizes_for[name]:
            # Other sizes: the error scaled as the linear head's changes between the sizes.
            linear_full = float(np.interp(size, known, [expected[k] for k in known]))
            scale = (1 - linear_full) / max(1 - expected[probed], 1e-3)
            full = float(np.clip(1 - (1 - probed_full) * scale, 0.0, 1.0))
            found.append(_Searched({**settings, "image_size": size}, full, why if size == probed else f"{why}; at {size} px the error x{scale:.2f}, as the linear head's"))
    return found


def _augmentation(c: _Context, on_images: bool) -> dict:
    """The augmentation options the probes decided (the user's own are laid over them later:
    under the user's --augment none, mirroring and crops are not the probes' to set)."""
    if c.given.get("augment") == "none":
        return {}
    probe = c.augmentation
    mirror = probe.mirror.mirror if probe is not None else True
    crop = probe.crops.min_scale if probe is not None and probe.crops is not None else None
    if not on_images:  # cached feature maps: mirroring is their only augmentation
        return {"augment": "light" if mirror else "none"}
    if not mirror and (crop is None or crop >= 1.0):
        return {"augment": "none"}
    return {"augment": "light", "mirror": mirror, **({"crop_scale": crop} if crop is not None else {})}


def _probe_end_to_end(c: _Context, model: str, name: str, size: int, linear_on_val: float) -> tuple[list[int], list[float], int, str] | None:
    """Recipe ``name`` trained at ``size`` on half the sample and on all of it, scored on the
    validation sample: its learning curve (sizes, accuracies), the size and a line of evidence.
    None where it would overrun the time for measuring, or the user's options rule it out."""
    settings = {**END_TO_END_RECIPES[name], "model": model, "image_size": size, "epochs": PROBE_EPOCHS, **_augmentation(c, name == "finetune-all")}
    runnable, dropped = with_user_options([settings], c.given)
    if not runnable:
        c.notes += [f"{name} not probed: {line}" for line in dropped]
        return None
    opts = runnable[0]
    shares = (0.5, 1.0) if len(c.sample) < c.sizes.train else (1.0,)  # the sample is all the data: nothing to extrapolate
    estimate = sum(c.cost.cost(opts, sample) - c.cost.overhead(sample) for sample in (DataSizes(round(len(c.sample) * s), len(c.val_sample)) for s in shares))
    if c.clock.spent + estimate > c.probe_deadline:
        c.notes.append(f"{name} not probed: about {estimate:.0f} s on the sample, past the {c.probe_deadline:.0f} s for measuring")
        return None
    c.say(f"probing {name} at {size} px on the sample (about {estimate:.0f} s)")
    started = time.monotonic()
    sizes, accuracies = [], []
    for share in shares:
        train = c.sample.per_class(max(2, round(len(c.sample) * share / len(c.dataset.classes))), seed=c.base.seed) if share < 1 else c.sample
        sizes.append(len(train))
        accuracies.append(_probe_fit(opts, train, c))
    curve = ", ".join(f"{a:.1%} on {n}" for n, a in zip(sizes, accuracies))
    c.evidence.setdefault("end_to_end_probe", {})[f"{name} @{size}"] = {
        "curve": dict(zip(sizes, [round(a, 4) for a in accuracies])), "linear_val_sample": round(linear_on_val, 4),
        "seconds": round(time.monotonic() - started, 1), "estimated_s": round(estimate, 1)}  # fmt: skip
    c.say(f"{name} at {size} px: {curve} images (the linear probe {linear_on_val:.1%} on {len(c.sample)})")
    return sizes, accuracies, size, f"{name} at {size} px on the sample: {curve} images"


def _probe_fit(opts: TrainOptions, train, c: _Context) -> float:
    """Best validation-sample accuracy of ``opts`` trained end to end on ``train`` (a sample)."""
    subset = ImageDataset(f"{c.dataset.name}-probe", {"train": train, "val": c.val_sample}, list(c.dataset.classes))
    with tempfile.TemporaryDirectory(prefix="transferkit-probe-") as folder:
        _model, history, _timings = trainer.train_end_to_end(subset, train, opts, Path(folder), False, False)
    scores = [row["val_acc"] for row in history if row.get("val_acc") is not None]
    return max(scores) if scores else 0.0


def _pixel_recipes(c: _Context) -> list[_Searched]:
    """Raw pixels with a linear model and an RBF SVM: the baselines a network must beat (digits)."""
    pixels = build_backbone("pixels", pretrained=False)
    X = layer_features(pixels, c.sample.samples, pixels.spec.transform(), ["penultimate"], seed=c.base.seed)["penultimate"]
    found = []
    for kind, probe, recipe in (("linear", linear_probe, {"strategy": "linear"}), ("rbf", rbf_probe, {"strategy": "svm", "kernel": "rbf"})):
        started = time.monotonic()
        sizes, accuracies, _ = _fitted_on(*learning_curve(X, c.sample.labels, seed=c.base.seed, probe=probe))
        seconds = time.monotonic() - started
        full = extrapolate_accuracy(sizes, accuracies, min(c.sizes.train, FROZEN_SATURATION * sizes[-1]))
        c.evidence.setdefault("linear_probe" if kind == "linear" else "rbf_probe", {})["pixels"] = {
            "curve": dict(zip(sizes, [round(a, 4) for a in accuracies])), "expected_full": round(full, 4)}
        # An RBF SVM's fit grows with the square of the images: the curve's own time, scaled.
        extra = seconds * (c.sizes.train / max(sizes[-1], 1)) ** 2 / 4 if kind == "rbf" else 0.0
        found.append(_Searched({**recipe, "model": "pixels"}, full, f"{kind} probe on raw pixels {accuracies[-1]:.1%}, extrapolated to {c.sizes.train:,}", extra))
    return found


def _fitted_on(sizes: list[int], accuracies: list[float], fitted) -> tuple[list[int], list[float], Any]:
    """A learning curve's sizes as the images its models were fitted on: 3-fold cross-validation
    scores models fitted on two thirds of each share's rows."""
    return [round(n * 2 / 3) for n in sizes], accuracies, fitted


class _SizedRates:
    """Images/s of a workload at any input size from measurements at a few (``sizes``): log-linear
    in the size between the two nearest measured ones, as a network's work grows with its pixels.
    Forward passes are measured at one batch size: theirs changes little with it."""
    def __init__(self, rate: Callable):
        self.rate = rate
        self.sizes: dict[str, list[int]] = {}  # by model: the sizes measured (a model not here: every size measured)

    def __call__(self, workload) -> float:
        from dataclasses import replace

        if workload.trained == 0:
            workload = replace(workload, batch_size=32)
        sizes = self.sizes.get(workload.model, [])
        if workload.image_size in sizes or len(sizes) < 2:
            return self.rate(workload)
        below = [s for s in sizes if s < workload.image_size]
        above = [s for s in sizes if s > workload.image_size]
        low, high = (below[-1], above[0]) if below and above else ((sizes[-2], sizes[-1]) if below else (sizes[0], sizes[1]))
        r_low, r_high = self.rate(replace(workload, image_size=low)), self.rate(replace(workload, image_size=high))
        slope = math.log(r_high / r_low) / math.log(high / low)
        return r_low * (workload.image_size / low) ** slope


def _priced(opts: TrainOptions, found: _Searched, c: _Context):
    """A Candidate for ``opts``: a head at its estimated cost, with the planner's margin; an
    end-to-end recipe with as many epochs as fit what is left (up to the ones its data size is
    worth), its training held to that time, its expected accuracy lowered where fewer fit."""
    if STRATEGIES[opts.strategy].kind == "features":
        return Candidate(opts, (c.cost.cost(opts, c.sizes) + found.extra_s) * SAFETY, found.accuracy, found.evidence)
    one, two = c.cost.cost(opts.replace(epochs=1), c.sizes), c.cost.cost(opts.replace(epochs=2), c.sizes)
    per_epoch, fixed = two - one, 2 * one - two
    worth = c.given["epochs"] if c.given.get("epochs") else _epochs_for(c.sizes.train)
    epochs = min(worth, (c.clock.left - fixed * SAFETY) / max(per_epoch, 1e-9))
    if epochs < 0.5:
        c.notes.append(f"{_short(opts)}: half an epoch does not fit the {c.clock.left:.0f} s left")
        return None
    error = (1 - found.accuracy) * ((worth / epochs) ** EPOCH_PENALTY if epochs < worth else 1.0)
    why = found.evidence + (f"; {epochs:.1f} of {worth} epochs fit" if epochs < worth else f"; {worth} epochs")
    # The limit is all the training time the budget leaves, not the estimate of these epochs: a
    # machine slower than measured still trains every epoch where the budget has room, so the
    # outcome depends on the machine's speed only where the budget is tight.
    limit = max(epochs * per_epoch, c.clock.left - fixed * SAFETY)
    return Candidate(opts.replace(epochs=max(1, math.ceil(epochs))), fixed * SAFETY + epochs * per_epoch, 1 - error, why, time_limit_s=limit)


def _short(opts: TrainOptions) -> str:
    return f"{opts.strategy} {opts.model} at {opts.image_size} px"


def _epochs_for(n_train: int) -> int:
    """Epochs worth training on ``n_train`` images (see EPOCH_IMAGES)."""
    return int(np.clip(math.ceil(EPOCH_IMAGES / max(n_train, 1)), 2, MAX_EPOCHS))


def _four_cases(train, n_classes: int, evidence: dict) -> str:
    """The teaching guide's label (:func:`advice.four_cases`) from the probes' measurements."""
    median = int(np.median(np.bincount(train.labels, minlength=n_classes)))
    return four_cases(median, evidence.get("layer_accuracy") or {"penultimate": 0.0})[0]


def train(data, out=None, *, resume: bool = False, progress: bool = True, check: bool = True, **options):
    """`transferkit train`: the data's files checked (:func:`transferkit.core.check.check_dataset`,
    without embeddings: one line a finding), then with a strategy that strategy exactly
    (:func:`transferkit.training.trainer.train`); without, the recipe :func:`plan` chooses on the
    data, trained with its training time as a limit and the plan recorded for the report.
    ``resume`` continues a run with the options it recorded; ``check=False`` skips the check."""
    started = time.monotonic()  # --time-budget counts from here
    if resume and out is not None and (Path(out) / "config.json").is_file():
        return trainer.train(data, out, resume=resume, progress=progress, started=started, **options)
    opts = resolve({"strategy": "auto", **{k: v for k, v in options.items() if v is not None}})
    dataset = data if isinstance(data, ImageDataset) else load_data(
        str(data), trust_pickle=opts.trust_pickle, val_fraction=opts.val_fraction, seed=opts.seed, allow_outside_root=opts.allow_outside_root)
    if not isinstance(dataset, ImageDataset):  # precomputed features: the trainer says which strategies take them
        return trainer.train(dataset, out, resume=resume, progress=progress, started=started, **options)
    found = check_dataset(dataset, None, decode=False, val_fraction=opts.val_fraction, seed=opts.seed, progress=False) if check else None
    if found is not None and progress:
        for line in summary_lines(found):
            print(f"check: {line}", file=sys.stderr)
    if opts.strategy != "auto":
        return trainer.train(dataset, out, resume=resume, progress=progress, started=started, check=found, **options)
    planned = plan(dataset, options, started=started, progress=progress)
    return trainer.train(dataset, out, resume=resume, progress=progress, plan=planned.record, time_limit_s=planned.time_limit_s,
                          started=started, check=found, **used(planned.options))  # fmt: skip


def dry_run(name: str, dataset, given: dict, progress: bool = True) -> Advice:
    """The plan for ``dataset`` (called ``name`` in the command it prints) without training, as
    advice: its choice, the evidence, and the `train` command that trains it."""
    planned = plan(dataset, given, progress=progress)
    record, opts = planned.record, planned.options
    reasons = [f"expected {record['expected_accuracy']:.1%} in about {_seconds(record)} of the {record['budget_s']:.0f} s budget "
               f"({record['planning_s']:.0f} s of it measuring)"] + record["notes"]  # fmt: skip
    return Advice(dataset.name, opts.model, record["case"], opts.strategy, opts.layer, opts.image_size or 0, {}, record, reasons,
                  record["command"].replace(f"transferkit train {dataset.name} ", f"transferkit train {name} ", 1), used(opts))  # fmt: skip


def _seconds(record: dict) -> str:
    chosen = next((row for row in record["candidates"] if row["chosen"]), None)
    return f"{chosen['cost_s']:.0f} s" if chosen else "?"
