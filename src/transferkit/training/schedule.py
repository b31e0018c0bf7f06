"""The freeze schedule: which layer groups train, at which learning rate, at each step.

One object answers it for every part of end-to-end training that needs to know: the option
checks, the optimiser's parameter groups, the Freezer callback that unfreezes groups between
epochs, the learning rate at each step (so a resumed run follows an uninterrupted one), and
``--cache-frozen``, which runs the groups that never train once and caches their output.
Layer groups are numbered 1..n from the input; fine-tuning trains them from the output end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FreezeSchedule:
    """Built from a run's options (:meth:`of`): its fields are theirs, with no defaults of its own to drift."""

    strategy: str  # "frozen" (the head only), "finetune" (the head, then the last groups) or "scratch" (everything)
    n_groups: int
    unfreeze: int | str  # finetune: groups trained after the head phase, from the output end, or "all"
    head_epochs: int  # finetune: epochs of the head alone
    gradual: bool  # finetune: one more group each epoch after the head phase, up to ``unfreeze``
    epochs: int
    lr: float  # the head's peak learning rate (and the whole network's, from scratch)
    backbone_lr_mult: float  # fine-tuned groups' peak learning rate = lr x this

    @classmethod
    def of(cls, options: Any, n_groups: int) -> "FreezeSchedule":
        """The schedule of anything with the options' fields (TrainOptions, finetune.FitConfig)."""
        unfreeze = options.unfreeze if options.unfreeze == "all" else int(options.unfreeze)
        return cls(options.strategy, n_groups, unfreeze, options.head_epochs, options.gradual, options.epochs, options.lr, options.backbone_lr_mult)

    @property
    def trained_groups(self) -> int:
        """How many layer groups, from the output end, ever train."""
        if self.strategy == "frozen":
            return 0
        if self.strategy == "finetune" and self.unfreeze != "all":
            return min(int(self.unfreeze), self.n_groups)
        return self.n_groups

    @property
    def whole_body(self) -> bool:
        """Whether every parameter of the body trains from the first step, in layer groups or not (scratch)."""
        return self.strategy == "scratch"

    @property
    def first_trained_group(self) -> int:
        """The first group (1-based) that ever trains; the ones before it are fixed for the whole run
        and can run once, cached (``n_groups + 1``: none trains)."""
        return self.n_groups - self.trained_groups + 1

    def groups_at(self, epoch: int) -> int:
        """Groups training, from the output end, in ``epoch`` (0-based); the head always trains."""
        if self.strategy != "finetune":
            return self.trained_groups
        if epoch < self.head_epochs:
            return 0
        return min(self.trained_groups, epoch - self.head_epochs + 1) if self.gradual else self.trained_groups

    def phase(self, epoch: int) -> str:
        """What trains in ``epoch``: "frozen", "scratch", or "head" then "finetune"."""
        if self.strategy != "finetune":
            return self.strategy
        return "head" if epoch < self.head_epochs else "finetune"

    @property
    def group_lr(self) -> float:
        """Peak learning rate of a trained layer group (the head's is ``lr``)."""
        return self.lr if self.strategy == "scratch" else self.lr * self.backbone_lr_mult

    def lr_factor(self, epoch: int, batch: int, batches_per_epoch: int, time_share: float = 0.0) -> float:
        """Every group's share of its peak rate at a step: a cosine over the steps of all epochs, to
        near zero at the last (which a short run needs), from (epoch, batch) alone; or, where
        ``time_share`` (of a time limit spent) is further along, over the time: a run slower than
        planned anneals by its deadline instead of stopping at a high rate."""
        done = max((epoch + batch / max(1, batches_per_epoch)) / self.epochs, min(1.0, time_share))
        return 0.5 * (1 + math.cos(math.pi * done))

    def check(self, name: str) -> str | None:
        """Why this schedule cannot train ``name`` (a backbone), or None."""
        if self.strategy == "finetune" and self.unfreeze != "all" and not 1 <= int(self.unfreeze) <= self.n_groups:
            return f"{name} has {self.n_groups} layer groups: unfreeze must be 1..{self.n_groups} or 'all', got {self.unfreeze!r}"
        return None
