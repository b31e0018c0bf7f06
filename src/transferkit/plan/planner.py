"""Choosing a training recipe that fits a time budget, from measurements on this data and machine.

A :class:`Candidate` is a recipe (the :class:`~transferkit.training.options.TrainOptions` it trains with)
priced two ways: its cost in seconds, from the throughput measured on this machine
(:mod:`transferkit.core.throughput`) and the data's size (:class:`CostModel`); and its expected
accuracy, from cheap evidence on the data (linear probes on a sample, a learning curve
extrapolated to the full training set: :mod:`transferkit.plan.probes`, :func:`extrapolate_accuracy`).

The user's options are fixed: :func:`with_user_options` lays them over every searched recipe
and drops the recipes that cannot honour them, so the planner only searches the rest.
:func:`choose` takes the most accurate candidate whose cost fits what is left of the budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from transferkit.core.errors import TransferkitError
from transferkit.training.options import FIELDS, STRATEGIES, TrainOptions, flag, format_duration, resolve, used
from transferkit.core.throughput import Workload

# Estimated costs are multiplied by this before they are held against the budget: the issue's
# bound is the budget plus 5%, and a cost model from a few seconds of benchmark is rougher than that.
SAFETY = 1.15
# Building the network and writing the run (weights, reports with thumbnails of the scored
# images, plots): CIFAR-10's 60,000 images took about 90 s beyond extraction, training and
# scoring; a 320-image run, half a second.
OVERHEAD_S, OVERHEAD_S_PER_IMAGE = 2.0, 1.5e-3
# A head's fit on cached features per training image: LinearHead on CIFAR-10's 49,000 x 1280
# features took 55 s with its choice of C and about 30 s more for the learning curve (BENCHMARKS.md,
# linear_threads), 1.7 ms an image.  A probe that times the fit on the data replaces it.
HEAD_FIT_S_PER_IMAGE = 1.7e-3
PLANNER_OPTIONS = {"time_budget"}  # the planner's own: no recipe uses them

# The end-to-end schedules measured in issue 19, where the defaults lost up to 13 points: no
# head-only epoch, label smoothing 0.1; the last groups on cached inputs at a third of the head's
# rate, the whole network at the head's rate.  A learning-rate range test per dataset should replace them.
LAST_GROUPS_SCHEDULE = {"strategy": "finetune", "cache_frozen": True, "head_epochs": 0, "lr": 3e-3, "backbone_lr_mult": 0.33, "label_smoothing": 0.1,
                        "batch_size": 128}  # fmt: skip
WHOLE_NETWORK_SCHEDULE = {"strategy": "finetune", "unfreeze": "all", "head_epochs": 0, "lr": 1e-3, "backbone_lr_mult": 1.0, "label_smoothing": 0.1,
                          "dropout": 0.0, "batch_size": 64}  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Recipes and the user's options


def flags(opts: TrainOptions) -> list[str]:
    """The `train` flags that give ``opts``: every option its strategy uses and that differs from
    the strategy's default, as the user would type it."""
    defaults = resolve({"strategy": opts.strategy}) if opts.strategy != "auto" else TrainOptions()
    out = [f"--strategy {opts.strategy}"]
    for name, value in used(opts).items():
        if name == "strategy" or value == getattr(defaults, name):
            continue
        if isinstance(value, bool):  # a switch: the flag names the non-default side (--cache-frozen, --no-pretrained)
            out.append(flag(name))
        else:
            out.append(f"{flag(name)} {value}")
    return out


def describe(opts: TrainOptions) -> str:
    """A recipe in one line: ``finetune --model efficientnet_lite0 --image-size 192 --unfreeze 2 ...``."""
    shown = flags(opts)
    if not any(f.startswith("--model ") for f in shown):
        shown.insert(1, f"--model {opts.model}")
    return " ".join(shown)[len("--strategy ") :]


def with_user_options(searched: Iterable[Mapping[str, Any]], given: Mapping[str, Any]) -> tuple[list[TrainOptions], list[str]]:
    """The searched recipes under the user's options: (the runnable ones, why others were dropped).

    Every option in ``given`` (what the user set; None means not set) keeps the user's value in
    every recipe.  A recipe of another strategy than the user's ``--strategy`` (other than auto),
    one whose strategy does not use an option the user set, or one that :func:`options.resolve` or
    the network refuses with the user's values (an input size it cannot take), is dropped; recipes that the user's values make equal merge.
    """
    fixed = {name: value for name, value in given.items() if value is not None and name not in PLANNER_OPTIONS and not (name == "strategy" and value == "auto")}
    unknown = sorted(set(fixed) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown training option(s) {', '.join(unknown)}")
    kept: dict[str, TrainOptions] = {}
    dropped: list[str] = []
    for recipe in searched:
        strategy = fixed.get("strategy", recipe.get("strategy", "linear"))
        if recipe.get("strategy", strategy) != strategy:
            continue  # --strategy X means exactly X: the other strategies' recipes are not candidates
        unused = sorted(name for name in fixed if name not in STRATEGIES[strategy].options)
        if unused:
            dropped.append(f"{strategy}: does not use {', '.join(flag(n) for n in unused)}, which you set")
            continue
        try:
            opts = resolve({**recipe, **fixed})
            _check_network(opts)
        except TransferkitError as err:
            dropped.append(f"{strategy}: {err}")
            continue
        kept.setdefault(json.dumps(used(opts), sort_keys=True, default=str), opts)
    return list(kept.values()), dropped


def _check_network(opts: TrainOptions) -> None:
    """What a run would refuse only once it builds the network: an input size it cannot take, too many layer groups."""
    from transferkit.core.registry import get_spec
    from transferkit.training.schedule import FreezeSchedule

    spec = get_spec(opts.model)
    spec.check_image_size(opts.image_size)
    if STRATEGIES[opts.strategy].kind == "end-to-end":
        problem = FreezeSchedule.of(opts, len(spec.layer_groups)).check(opts.model)
        if problem:
            raise TransferkitError(problem)


# ---------------------------------------------------------------------------------------------
# Cost


@dataclass(frozen=True)
class DataSizes:
    """Images in each split, as a run will see them."""

    train: int
    val: int
    test: int = 0


@dataclass
class CostModel:
    """Seconds a `train` call with given options takes here, from images/s per :class:`Workload`.

    ``rate``: images/s of a workload (:meth:`ThroughputTable.rate`, or a table in a test);
    ``decode_s``: one image's decoding and preprocessing on one core, and ``workers`` the loader
    workers that share it (see :func:`throughput.split_cores`): a pass over image files is bound
    by the slower of the network and the decoding.  Passes over cached outputs decode nothing.
    """

    rate: Callable[[Workload], float]
    decode_s: float = 0.0
    workers: int = 0
    overhead_s: float = OVERHEAD_S
    overhead_s_per_image: float = OVERHEAD_S_PER_IMAGE
    head_fit_s_per_image: float = HEAD_FIT_S_PER_IMAGE

    def seconds(self, n: int, workload: Workload) -> float:
        """``n`` images through ``workload``."""
        if n <= 0:
            return 0.0
        network = 1.0 / self.rate(workload)
        if workload.from_group:
            return n * network
        per_image = max(network, self.decode_s / self.workers) if self.workers else network + self.decode_s
        return n * per_image

    def scored(self, n: int, opts: TrainOptions, size: int) -> float:
        """``n`` images through the network without gradients, as extraction and scoring run them:
        on ONNX Runtime where ``--engine`` resolves to it for ``n`` images (a CPU, 1,000 or more)."""
        from transferkit.core.engines import resolve_engine

        return self.seconds(n, Workload(opts.model, size, opts.batch_size, engine=resolve_engine(opts.engine, n)))

    def overhead(self, sizes: DataSizes) -> float:
        return self.overhead_s + self.overhead_s_per_image * (sizes.train + sizes.val + sizes.test)

    def cost(self, opts: TrainOptions, sizes: DataSizes) -> float:
        from transferkit.core.registry import get_spec

        spec = get_spec(opts.model)
        size = spec.check_image_size(opts.image_size)
        forward = Workload(opts.model, size, opts.batch_size)
        kind = STRATEGIES[opts.strategy].kind
        if kind == "features":
            passes = 2 if opts.flip_tta else 1  # the mirror image's forward too
            extraction = sum(self.scored(n, opts, size) for n in (sizes.train, sizes.val, sizes.test))
            return self.overhead(sizes) + passes * extraction + self.head_fit_s_per_image * sizes.train
        if kind != "end-to-end":
            raise TransferkitError(f"--strategy {opts.strategy} has no cost of its own: price the recipe it picks")
        n_groups = len(spec.layer_groups)
        head_epochs = min(opts.head_epochs, opts.epochs) if opts.strategy == "finetune" else (opts.epochs if opts.strategy == "frozen" else 0)
        trained: int | str = "all" if opts.strategy == "scratch" or opts.unfreeze == "all" else min(int(opts.unfreeze), n_groups)
        if opts.strategy == "frozen":
            trained = 0
        # The head alone trains on the frozen network's output: a forward pass's cost (its backward is a linear layer's).
        head_phase = head_epochs * self.seconds(sizes.train, forward)
        body_epochs = opts.epochs - head_epochs
        if opts.strategy == "finetune" and opts.cache_frozen:
            from_group = n_groups - int(trained) if trained != "all" else 0
            once = self.scored(sizes.train, opts, size) + self.scored(sizes.val, opts, size)  # the frozen groups, once (priced as the whole forward: an upper bound)
            step = Workload(opts.model, size, opts.batch_size, trained, from_group)
            val_pass = Workload(opts.model, size, opts.batch_size, 0, from_group)
            head_phase = head_epochs * self.seconds(sizes.train, val_pass)  # the head alone, on the cached output too
            return (self.overhead(sizes) + once + body_epochs * self.seconds(sizes.train, step) + head_phase
                    + opts.epochs * self.seconds(sizes.val, val_pass) + self.scored(sizes.test, opts, size))  # fmt: skip
        step = Workload(opts.model, size, opts.batch_size, trained)
        body = body_epochs * self.seconds(sizes.train, step) if trained else 0.0
        return self.overhead(sizes) + head_phase + body + opts.epochs * self.seconds(sizes.val, forward) + self.scored(sizes.test, opts, size)


# ---------------------------------------------------------------------------------------------
# Expected accuracy


def learning_curve_exponent(train_sizes: Sequence[int], accuracies: Sequence[float]) -> float | None:
    """``b`` of the power law ``err = a * size^-b`` fitted to a learning curve (least squares in
    log-log, held in [0, 1]); None with fewer than two sizes."""
    import numpy as np

    sizes = np.asarray(train_sizes, dtype=float)
    if len(np.unique(sizes)) < 2:
        return None
    errors = np.maximum(1.0 - np.clip(np.asarray(accuracies, dtype=float), 0.0, 1.0), 1e-4)
    slope, _ = np.polyfit(np.log(sizes), np.log(errors), 1)
    return float(np.clip(-slope, 0.0, 1.0))


def extrapolate_accuracy(train_sizes: Sequence[int], accuracies: Sequence[float], n: int, exponent: float | None = None) -> float:
    """Accuracy at ``n`` training images from a learning curve measured at ``train_sizes``.

    The error is fitted as a power law of the training size, ``err = a * size^-b`` (a straight
    line in log-log, by least squares; the shape learning curves take, Hestness et al. 2017),
    with ``b`` held in [0, 1], or ``exponent`` where given (one pooled from several curves); the
    answer is never below the best measured accuracy (more data does not hurt a probe) and never
    above 1.  One point (without ``exponent``), or ``n`` within the measured sizes, gives the
    measured figure.
    """
    if len(train_sizes) != len(accuracies) or not train_sizes:
        raise ValueError(f"a learning curve needs as many sizes as accuracies, at least one; got {len(train_sizes)} and {len(accuracies)}")
    import numpy as np

    order = np.argsort(np.asarray(train_sizes, dtype=float), kind="stable")
    sizes = np.asarray(train_sizes, dtype=float)[order]
    acc = np.clip(np.asarray(accuracies, dtype=float)[order], 0.0, 1.0)
    b = learning_curve_exponent(sizes, acc) if exponent is None else float(exponent)
    if n <= sizes[-1] or b is None:
        return float(np.interp(n, sizes, acc))
    # anchored at the largest measured size: the fit's offset cannot move the point measured on the most data
    predicted = 1.0 - max(1.0 - acc[-1], 1e-4) * (n / sizes[-1]) ** -b
    return float(min(1.0, max(acc.max(), predicted)))


# ---------------------------------------------------------------------------------------------
# Choosing


@dataclass(frozen=True)
class Candidate:
    """A recipe with its estimated cost (seconds of the whole `train` call) and expected accuracy."""

    options: TrainOptions
    cost_s: float
    accuracy: float
    evidence: str = ""  # where the accuracy figure comes from, for the report
    time_limit_s: float | None = None  # end to end: the training's share of the cost, held as a time limit

    @property
    def name(self) -> str:
        return describe(self.options)


@dataclass
class Plan:
    chosen: Candidate
    budget_s: float
    spent_s: float  # already gone (probing) when the choice was made
    fits: bool  # whether the chosen recipe fits what is left of the budget
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    safety: float = SAFETY  # what each cost was multiplied by before it was held against the budget

    @property
    def left_s(self) -> float:
        return self.budget_s - self.spent_s

    def table(self) -> list[dict[str, Any]]:
        """The cost table for the run's report: every candidate, most accurate first."""
        order = sorted(self.candidates, key=lambda c: (-c.accuracy, c.cost_s))
        return [{"recipe": c.name, "expected_accuracy": round(c.accuracy, 4), "cost_s": round(c.cost_s, 1),
                 "fits": c.cost_s * self.safety <= self.left_s, "chosen": c is self.chosen, "evidence": c.evidence} for c in order]  # fmt: skip

    def command(self, data: str) -> str:
        """The `train` command that reproduces the chosen recipe without the planner."""
        return f"transferkit train {data} " + " ".join(flags(self.chosen.options))


def choose(candidates: Sequence[Candidate], budget_s: float, *, spent_s: float = 0.0, safety: float = SAFETY) -> Plan:
    """The most accurate candidate whose cost (times ``safety``) fits the ``budget_s - spent_s`` left;
    of equally accurate ones the cheaper.  When none fits: the cheapest, with a note that says
    which budget would fit it.  The notes also say what more time would buy."""
    if not candidates:
        raise TransferkitError("no recipe can honour the options you set: drop one of them, or give --strategy")
    left = budget_s - spent_s
    fitting = [c for c in candidates if c.cost_s * safety <= left]
    best_overall = max(candidates, key=lambda c: (c.accuracy, -c.cost_s))
    notes = []
    if fitting:
        chosen = max(fitting, key=lambda c: (c.accuracy, -c.cost_s))
        notes.append(f"chose {chosen.name}: expected {chosen.accuracy:.1%} in about {format_duration(chosen.cost_s)} of the {format_duration(left)} left")
    else:
        chosen = min(candidates, key=lambda c: (c.cost_s, -c.accuracy))
        notes.append(f"nothing fits the {format_duration(left)} left of the {format_duration(budget_s)} budget: the cheapest recipe, {chosen.name}, "
                     f"needs about {format_duration(chosen.cost_s * safety)}; give --time-budget {format_duration(spent_s + chosen.cost_s * safety)} or more")  # fmt: skip
    if best_overall.accuracy > chosen.accuracy:
        notes.append(f"with --time-budget {format_duration(spent_s + best_overall.cost_s * safety)}: {best_overall.name}, expected {best_overall.accuracy:.1%}")
    return Plan(chosen, budget_s, spent_s, bool(fitting), list(candidates), notes, safety)


__all__ = ["SAFETY", "Candidate", "CostModel", "DataSizes", "Plan", "choose", "describe", "extrapolate_accuracy", "flags", "with_user_options"]
