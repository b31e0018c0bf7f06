"""Every option of `transferkit train`, declared once, and the strategies that use them.

:class:`TrainOptions` is the declaration: each field's default, help text, allowed values and
command-line flag.  :data:`STRATEGIES` says which options each strategy uses and what it
defaults differently.  The CLI's `train` command is generated from both (cli/train.py), the
Python API checks its keyword arguments against them, and :func:`resolve` turns what a user
set into the options a run uses: an option the chosen strategy does not use is refused with a
line that names it, and ``config.json`` records only the options that were used.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from transferkit.errors import TransferkitError
from transferkit.transforms import AUGMENTS

DEFAULT_MODEL = "efficientnet_lite0"


def option(default: Any, help: str, *, allowed: tuple | None = None, check: Callable[[Any], bool] | None = None,
           expected: str = "", flag: str | None = None, short: str | None = None, minimum: float | None = None) -> Any:  # fmt: skip
    """A field of :class:`TrainOptions`: its default and how the command line shows and checks it.

    ``allowed``: the values it takes (None always allowed); ``minimum``: the least number;
    ``check`` + ``expected``: any other rule, and the words that say it.  ``flag``: the
    command-line name when it is not ``--name-with-dashes``.
    """
    return field(default=default, metadata={"help": help, "allowed": allowed, "check": check, "expected": expected, "flag": flag,
                                            "short": short, "minimum": minimum})  # fmt: skip


def _duration_ok(value: Any) -> bool:
    from transferkit.planner import parse_duration

    try:
        return parse_duration(value) > 0
    except TransferkitError:
        return False


def _unfreeze_ok(value: Any) -> bool:
    return value == "all" or (str(value).isdigit() and int(value) >= 1)


@dataclass(frozen=True)
class TrainOptions:
    """Everything `transferkit train` takes; what a run used is saved as config.json."""

    strategy: str = option("auto", "How to train: a head on cached features (linear, svm, mlp), end to end (frozen, finetune, scratch), or auto "
                           "(the default: the recipe that measures best within --time-budget).", allowed=("linear", "svm", "mlp", "frozen", "finetune", "scratch", "auto"), short="-s")  # fmt: skip
    time_budget: str | None = option(None, "auto: the whole call's time (probing, training, scoring, writing), such as 90s, 20m or 2h "
                                     "(default: sized to the data and printed at the start).", check=_duration_ok, expected="a duration such as 90s, 20m, 2h or 1h30m")  # fmt: skip
    model: str = option(DEFAULT_MODEL, "Backbone name (see `transferkit models`).", short="-m")
    # the data
    per_class: int | None = option(None, "Train on N images per class.", minimum=1)
    val_fraction: float = option(0.2, "Share held out for validation where DATA has no val split.", check=lambda v: 0 < v < 1, expected="between 0 and 1")
    seed: int = option(0, "Seed of the split, the initialisation and the shuffles.")
    trust_pickle: bool = option(False, "Allow loading pickle files you trust (they can run code).")
    allow_outside_root: bool = option(False, "CSV DATA: accept image paths outside the CSV's folder (absolute or ../).")
    # the backbone and its inputs
    pretrained: bool = option(True, "Use random weights instead of pretrained ones.", flag="--no-pretrained")
    weights: str | None = option(None, "Pretrained weights file (safetensors, or a state dict read with weights_only=True).")
    image_size: int | None = option(None, "Input size (default: the backbone's; each network says its minimum).")
    batch_size: int = option(32, "Images per batch (extraction, training and scoring).", minimum=1)
    num_workers: int | None = option(None, "DataLoader workers decoding images (default: from the cores this process may use).", flag="--workers", minimum=0)
    engine: str = option("auto", "auto | torch | onnxruntime: how features are extracted and val/test scored (auto: ONNX Runtime on a CPU for 1,000 images or more).",
                         allowed=("auto", "torch", "onnxruntime"))  # fmt: skip
    cache_dir: str | None = option(None, "Feature cache folder (default: $TRANSFERKIT_CACHE or the user cache).")
    # heads on features
    layer: str = option("penultimate", "Heads on features: penultimate, or stageN for pooled features of an earlier stage.")
    flip_tta: bool = option(False, "Heads on features: average each image's features with its mirror image's.")
    quantize: str | None = option(None, "Heads on features: int8 extracts the training split with ONNX Runtime's static int8 quantisation.", allowed=("int8",))
    kernel: str = option("linear", "svm: linear or rbf.", allowed=("linear", "rbf"))
    balance: str | None = option(None, "weights (class-weighted loss; every strategy) or sampler (balanced draws; end to end), for imbalanced classes.",
                                 allowed=("weights", "sampler"))  # fmt: skip
    # training
    epochs: int = option(10, "Epochs (mlp and end-to-end strategies).", minimum=1)
    lr: float = option(1e-3, "Peak learning rate of the head (mlp and end to end; AdamW).", minimum=0)
    weight_decay: float = option(1e-4, "AdamW weight decay (mlp and end to end).", minimum=0)
    dropout: float | None = option(None, "Dropout before an end-to-end head (default 0.2); in the mlp head's hidden layer (default 0.5).",
                                   check=lambda v: 0 <= v < 1, expected="in [0, 1)")  # fmt: skip
    label_smoothing: float = option(0.0, "End to end: label smoothing of the training loss.", check=lambda v: 0 <= v < 1, expected="in [0, 1)")
    augment: str = option("light", "End to end: none, light (random crops and mirroring) or strong (+ colour jitter, RandAugment, erasing).",
                          allowed=AUGMENTS)  # fmt: skip
    mirror: bool = option(True, "End to end, --augment light or strong: do not mirror training images (for classes a mirror image changes: arrows, text, signs).",
                          flag="--no-mirror")  # fmt: skip
    crop_scale: float | None = option(None, "End to end on images, --augment light or strong: the least share of an image's area a random crop keeps (1: no cropping; "
                                      "default 0.35 light, 0.25 strong).", check=lambda v: 0 < v <= 1, expected="in (0, 1]")  # fmt: skip
    patience: int | None = option(None, "End to end: stop after this many epochs without val improvement (best checkpoint kept).", minimum=0)
    # fine-tuning
    unfreeze: str = option("all", "finetune: layer groups to train, counted from the output end, or all.", check=_unfreeze_ok, expected="a number of layer groups (1 or more) or 'all'")
    backbone_lr_mult: float = option(0.1, "finetune: backbone learning rate = lr x this.", minimum=0)
    head_epochs: int = option(1, "finetune: epochs training the head alone first.", minimum=0)
    gradual: bool = option(False, "finetune: unfreeze one more group per epoch.")
    cache_frozen: bool = option(False, "finetune --unfreeze N: run the frozen layers once and train on their cached output (fast on a CPU).")
    # where training runs
    devices: str = option("auto", "Lightning devices: auto (one: a GPU when there is one) or a number.", check=lambda v: v == "auto" or str(v).isdigit(), expected="auto or a number")
    num_nodes: int = option(1, "Machines (Lightning DDP; launch as docs/scale-out.md says).", minimum=1)
    distributed: str = option("auto", "Lightning strategy: auto or ddp.", allowed=("auto", "ddp"))
    precision: str = option("auto", "auto (bf16-mixed on a GPU with bfloat16, else 32-true), 32-true, 16-mixed or bf16-mixed.",
                            allowed=("auto", "32-true", "16-mixed", "bf16-mixed", "64-true", "bf16-true"))  # fmt: skip

    def replace(self, **changes: Any) -> "TrainOptions":
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(TrainOptions)}
TYPES = typing.get_type_hints(TrainOptions)


def flag(name: str) -> str:
    """The command-line flag of option ``name``."""
    return FIELDS[name].metadata["flag"] or "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Strategy:
    """A strategy: what it is, every option it uses (the shared ones included), and its own defaults."""

    name: str
    kind: str  # "features" (a head on cached features), "end-to-end" (Lightning) or "auto"
    summary: str
    options: frozenset[str]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[TrainOptions], None] | None = None  # rules between options, after each option's own


SHARED = frozenset({"strategy", "model", "per_class", "val_fraction", "seed", "trust_pickle", "allow_outside_root", "pretrained", "weights",
                    "image_size", "batch_size", "num_workers", "engine", "cache_dir", "balance"})  # fmt: skip
HEAD_OPTIONS = SHARED | {"layer", "flip_tta", "quantize"}
END_TO_END_OPTIONS = SHARED | {"epochs", "lr", "weight_decay", "dropout", "label_smoothing", "augment", "mirror", "crop_scale", "patience", "devices", "num_nodes", "distributed", "precision"}


def _head_check(opts: TrainOptions) -> None:
    if opts.balance == "sampler":
        raise TransferkitError(f"--balance sampler draws training batches, which --strategy {opts.strategy} does not have: use --balance weights")


def _augment_check(opts: TrainOptions) -> None:
    """``--no-mirror`` and ``--crop-scale`` shape an augmentation: with none they would be recorded and ignored."""
    if opts.augment == "none" and (not opts.mirror or opts.crop_scale is not None):
        given = " and ".join(name for name, on in (("--no-mirror", not opts.mirror), ("--crop-scale", opts.crop_scale is not None)) if on)
        raise TransferkitError(f"--augment none neither mirrors nor crops: drop {given}, or use --augment light")


def _finetune_check(opts: TrainOptions) -> None:
    _augment_check(opts)
    if not opts.cache_frozen:
        return
    from transferkit.backbones import get_spec
    from transferkit.schedule import FreezeSchedule

    if opts.unfreeze == "all":
        raise TransferkitError("--cache-frozen needs frozen layers: give --unfreeze N (the layer groups that train, from the output end)")
    schedule = FreezeSchedule.of(opts, len(get_spec(opts.model).layer_groups))
    if schedule.first_trained_group <= 1:
        raise TransferkitError(f"--cache-frozen needs a frozen layer group: {opts.model} has {schedule.n_groups}, so --unfreeze at most {schedule.n_groups - 1}")
    if opts.augment == "strong":
        raise TransferkitError("--cache-frozen augments the cached feature maps (mirroring, with --augment light): use --augment light or none")
    if opts.crop_scale is not None:
        raise TransferkitError("--cache-frozen trains on cached feature maps, which are not cropped: drop --crop-scale")


def _scratch_check(opts: TrainOptions) -> None:
    _augment_check(opts)
    if opts.pretrained:
        raise TransferkitError("--strategy scratch trains from random weights; to start from pretrained ones use --strategy finetune")


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("linear", "features", "logistic regression on cached features", HEAD_OPTIONS, check=_head_check),
        Strategy("svm", "features", "linear or RBF SVM on cached features", HEAD_OPTIONS | {"kernel"}, check=_head_check),
        Strategy("mlp", "features", "a small MLP on cached features", HEAD_OPTIONS | {"dropout", "lr", "epochs", "weight_decay"}, {"dropout": 0.5}, _head_check),
        Strategy("frozen", "end-to-end", "a new head trained end to end on a frozen backbone", END_TO_END_OPTIONS, {"dropout": 0.2}, _augment_check),
        Strategy("finetune", "end-to-end", "the head, then the last layer groups at a lower learning rate",
                 END_TO_END_OPTIONS | {"unfreeze", "backbone_lr_mult", "head_epochs", "gradual", "cache_frozen"}, {"dropout": 0.2}, _finetune_check),
        Strategy("scratch", "end-to-end", "the same network with random weights", END_TO_END_OPTIONS - {"weights"}, {"dropout": 0.2, "pretrained": False}, _scratch_check),
        Strategy("auto", "auto", "the recipe that measures best on this data within --time-budget", frozenset(FIELDS)),
    )
}  # fmt: skip
FEATURE_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if s.kind == "features")
END_TO_END_STRATEGIES = tuple(name for name, s in STRATEGIES.items() if s.kind == "end-to-end")


def check_value(name: str, value: Any) -> None:
    """Refuse a value option ``name`` does not take, with one line."""
    meta = FIELDS[name].metadata
    if value is None:
        return
    allowed, minimum = meta["allowed"], meta["minimum"]
    if allowed is not None and value not in allowed:
        raise TransferkitError(f"{flag(name)} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    if minimum is not None and value < minimum:
        raise TransferkitError(f"{flag(name)} must be at least {minimum:g}, got {value}")
    if meta["check"] is not None and not meta["check"](value):
        raise TransferkitError(f"{flag(name)} must be {meta['expected']}, got {value!r}")


def value_type(name: str) -> type:
    """Option ``name``'s type without its ``| None``: int, float, str or bool."""
    kind = TYPES[name]
    return next((t for t in typing.get_args(kind) if t is not type(None)), kind)


def _coerce(name: str, value: Any) -> Any:
    """Values as their field's type: the command line gives ``--unfreeze 2`` as text, Python may give 2."""
    if value is None:
        return None
    base = value_type(name)
    if base is str and isinstance(value, (int, float, bytes)) or base is str and hasattr(value, "__fspath__"):
        return str(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def check_names(given: Mapping[str, Any]) -> None:
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise TypeError(f"unknown training option(s) {', '.join(unknown)}; the options are {', '.join(FIELDS)}")


def resolve(given: Mapping[str, Any], *, chosen_by: str | None = None, warn: Callable[[str], None] | None = None) -> TrainOptions:
    """The options a run uses: ``given`` (what the user set), then the strategy's defaults, then the declared ones.

    An option the strategy does not use is an error that names it; where ``chosen_by`` says the
    strategy was picked for the user (``auto``), it is reported through ``warn`` and dropped
    instead, since the user could not know which strategy would use it.
    """
    check_names(given)
    given = {name: _coerce(name, value) for name, value in given.items() if value is not None}  # None: not set
    strategy = STRATEGIES.get(given.get("strategy", FIELDS["strategy"].default))
    if strategy is None:
        raise TransferkitError(f"unknown strategy {given['strategy']!r}: use one of {', '.join(STRATEGIES)}")
    unused = sorted(name for name in given if name not in strategy.options)
    if unused and chosen_by is None:
        raise TransferkitError(_unused_message(strategy, unused))
    if unused and warn is not None:
        warn(f"{chosen_by} chose --strategy {strategy.name}, which does not use " + ", ".join(f"{flag(n)} {given[n]}" for n in unused) + ": ignored")
    given = {name: value for name, value in given.items() if name not in unused}
    for name, value in given.items():
        check_value(name, value)
    if given.get("weights") and given.get("pretrained") is False:
        raise TransferkitError("--weights FILE and --no-pretrained contradict each other: drop one")
    opts = TrainOptions(**{**strategy.defaults, **given})
    if strategy.check is not None:
        strategy.check(opts)
    return opts


def _unused_message(strategy: Strategy, unused: list[str]) -> str:
    users = sorted({s.name for s in STRATEGIES.values() if s.kind != "auto" and all(n in s.options for n in unused)})
    where = f"; it is an option of --strategy {' | '.join(users)}" if users else ""
    names = ", ".join(flag(n) for n in unused)
    return f"--strategy {strategy.name} does not use {names}: drop {'it' if len(unused) == 1 else 'them'}{where}"


def used(opts: TrainOptions) -> dict[str, Any]:
    """The options ``opts.strategy`` uses, as config.json records them."""
    return {name: getattr(opts, name) for name in FIELDS if name in STRATEGIES[opts.strategy].options}


def from_config(config: Mapping[str, Any]) -> TrainOptions:
    """The options a run recorded in config.json (older runs recorded every option: the unused are dropped)."""
    strategy = STRATEGIES.get(config.get("strategy"), STRATEGIES["linear"])
    return TrainOptions(**{name: config[name] for name in FIELDS if name in config and name in strategy.options})
