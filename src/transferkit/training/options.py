"""Every option of `transferkit train`, declared once, and the strategies that use them.

:class:`TrainOptions` is the declaration: each field's default, help text, allowed values and
command-line flag.  :data:`STRATEGIES` (the strategies package: one module each) says which
options each strategy uses, what it defaults differently and what it checks.  The CLI's `train` command is generated from both (cli/train.py), the
Python API checks its keyword arguments against them, and :func:`resolve` turns what a user
set into the options a run uses: an option the chosen strategy does not use is refused with a
line that names it, and ``config.json`` records only the options that were used.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from transferkit.core.errors import TransferkitError
from transferkit.core.transforms import AUGMENTS
from transferkit.training.strategies import REGISTERED, Strategy

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


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(h|m|s)")


def parse_duration(text: str) -> float:
    """Seconds in ``"90s"``, ``"20m"``, ``"2h"`` or ``"1h30m"``; anything else is one line that says what to write."""
    spoken = str(text).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", spoken):
        raise TransferkitError(f"--time-budget {text} has no unit: write {spoken}s, {spoken}m or {spoken}h")
    parts = _DURATION.findall(spoken)
    if not parts or _DURATION.sub("", spoken).strip() or len({unit for _, unit in parts}) < len(parts):
        raise TransferkitError(f"--time-budget {text!r} is not a duration: write a number and a unit, such as 90s, 20m, 2h or 1h30m")
    seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise TransferkitError(f"--time-budget {text} leaves no time: give a duration above zero, such as 90s")
    return seconds


def format_duration(seconds: float) -> str:
    """``95`` -> ``"1m35s"``: as :func:`parse_duration` reads it back (whole seconds, rounded up)."""
    seconds = max(1, math.ceil(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n) or "0s"


def _duration_ok(value: Any) -> bool:
    try:
        return parse_duration(value) > 0
    except TransferkitError:
        return False


def _unfreeze_ok(value: Any) -> bool:
    return value == "all" or (str(value).isdigit() and int(value) >= 1)


@dataclass(frozen=True)
class TrainOptions:
    """Everything `transferkit train` takes; what a run used is saved as config.json."""

    strategy: str = option("auto", "How to train: a head on cached features (linear, svm, mlp, knn), end to end (frozen, finetune, scratch), or auto "
                           "(the default: the recipe that measures best within --time-budget).", allowed=tuple(REGISTERED), short="-s")  # fmt: skip
    time_budget: str | None = option(None, "auto: the whole call's time (probing, training, scoring, writing), such as 90s, 20m or 2h "
                                     "(default: sized to the data and printed at the start).", check=_duration_ok, expected="a duration such as 90s, 20m, 2h or 1h30m")  # fmt: skip
    model: str = option(DEFAULT_MODEL, "Backbone name (see `transferkit models`).", short="-m")
    # the data
    per_class: int | None = option(None, "Train on N images per class.", minimum=1)
    val_fraction: float = option(0.2, "Share held out for validation where DATA has no val split.", check=lambda v: 0 < v < 1, expected="between 0 and 1")
    seed: int = option(0, "Seed of the split, the initialisation and the shuffles.")
    trust_pickle: bool = option(False, "Allow loading pickle files you trust (they can run code).")
    allow_outside_root: bool = option(False, "CSV DATA: accept image paths outside the CSV's folder (absolute or ../).")
    dedupe: bool = option(False, "Train on one copy of each image: drop byte-identical copies from training, and training images with a copy in val or test.")
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


# The registry of strategies (one module each, in strategies/); auto uses every option there is.
STRATEGIES: dict[str, Strategy] = {name: s if s.kind != "auto" else dataclasses.replace(s, options=frozenset(FIELDS)) for name, s in REGISTERED.items()}
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
