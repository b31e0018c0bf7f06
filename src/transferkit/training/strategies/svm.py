"""``--strategy svm``: a linear SVM on cached features, or an RBF one through a Nystroem map (``--kernel rbf``)."""

from transferkit.core.heads import SVMHead
from transferkit.training.strategies.base import HEAD_OPTIONS, Strategy, class_weight, head_check

STRATEGY = Strategy("svm", "features", "linear or RBF SVM on cached features", HEAD_OPTIONS | {"kernel"}, check=head_check,
                    head=lambda opts: SVMHead(kernel=opts.kernel, random_state=opts.seed, class_weight=class_weight(opts)))  # fmt: skip
