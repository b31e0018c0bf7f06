"""``--strategy mlp``: one hidden layer with dropout on cached features, trained with AdamW on a one-cycle rate."""

from transferkit.core.heads import MLPHead
from transferkit.training.strategies.base import HEAD_OPTIONS, Strategy, class_weight, head_check


def _head(opts) -> MLPHead:
    return MLPHead(random_state=opts.seed, class_weight=class_weight(opts), dropout=opts.dropout, lr=opts.lr, epochs=opts.epochs,
                   weight_decay=opts.weight_decay)  # fmt: skip


STRATEGY = Strategy("mlp", "features", "a small MLP on cached features", HEAD_OPTIONS | {"dropout", "lr", "epochs", "weight_decay"}, {"dropout": 0.5},
                    head_check, _head)  # fmt: skip
