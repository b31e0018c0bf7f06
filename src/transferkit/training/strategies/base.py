"""What a strategy is: the options it uses, its own defaults and checks, and how it trains.

Each strategy is one module of this package holding one :class:`Strategy`; the package's
``__init__`` lists them.  Option names here are :class:`~transferkit.training.options.TrainOptions`'
fields; this module imports nothing of options.py, which builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from transferkit.core.errors import TransferkitError

# Options every strategy uses; a head on cached features adds its own, end-to-end training its own.
SHARED = frozenset({"strategy", "model", "per_class", "val_fraction", "seed", "trust_pickle", "allow_outside_root", "dedupe", "pretrained", "weights",
                    "image_size", "batch_size", "num_workers", "engine", "cache_dir", "balance"})  # fmt: skip
HEAD_OPTIONS = SHARED | {"layer", "flip_tta", "quantize"}
END_TO_END_OPTIONS = SHARED | {"epochs", "lr", "weight_decay", "dropout", "label_smoothing", "augment", "mirror", "crop_scale", "patience", "devices",
                               "num_nodes", "distributed", "precision"}  # fmt: skip


@dataclass(frozen=True)
class Strategy:
    """A strategy: what it is, every option it uses (the shared ones included), its own defaults,
    the rules between its options, and, for a head on cached features, the head it fits."""

    name: str
    kind: str  # "features" (a head on cached features), "end-to-end" (Lightning) or "auto" (the planner)
    summary: str
    options: frozenset[str]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    check: Callable[[Any], None] | None = None  # rules between options, after each option's own
    head: Callable[[Any], Any] | None = None  # kind "features": the options -> an unfitted scikit-learn estimator with to_module() and layout_


def class_weight(opts) -> str | None:
    """scikit-learn's class weighting for ``--balance weights``."""
    return "balanced" if opts.balance == "weights" else None


def head_check(opts) -> None:
    if opts.balance == "sampler":
        raise TransferkitError(f"--balance sampler draws training batches, which --strategy {opts.strategy} does not have: use --balance weights")


def augment_check(opts) -> None:
    """``--no-mirror`` and ``--crop-scale`` shape an augmentation: with none they would be recorded and ignored."""
    if opts.augment == "none" and (not opts.mirror or opts.crop_scale is not None):
        given = " and ".join(name for name, on in (("--no-mirror", not opts.mirror), ("--crop-scale", opts.crop_scale is not None)) if on)
        raise TransferkitError(f"--augment none neither mirrors nor crops: drop {given}, or use --augment light")
