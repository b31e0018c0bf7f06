"""``--strategy linear``: logistic regression on cached features (C and the scaling by cross-validation)."""

from transferkit.core.heads import LinearHead
from transferkit.training.strategies.base import HEAD_OPTIONS, Strategy, class_weight, head_check

STRATEGY = Strategy("linear", "features", "logistic regression on cached features", HEAD_OPTIONS, check=head_check,
                    head=lambda opts: LinearHead(random_state=opts.seed, class_weight=class_weight(opts)))  # fmt: skip
