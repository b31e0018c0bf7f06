"""``--strategy scratch``: the same network from random weights, every layer trained: the baseline."""

from transferkit.core.errors import TransferkitError
from transferkit.training.strategies.base import END_TO_END_OPTIONS, Strategy, augment_check


def _check(opts) -> None:
    augment_check(opts)
    if opts.pretrained:
        raise TransferkitError("--strategy scratch trains from random weights; to start from pretrained ones use --strategy finetune")


STRATEGY = Strategy("scratch", "end-to-end", "the same network with random weights", END_TO_END_OPTIONS - {"weights"}, {"dropout": 0.2, "pretrained": False}, _check)
