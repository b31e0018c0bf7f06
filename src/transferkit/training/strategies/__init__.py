"""The strategies, one module each: a :class:`~transferkit.training.strategies.base.Strategy` that
carries the options it uses, its defaults, its checks and, for a head on features, the head.

Adding a strategy: a module here with its ``STRATEGY``, listed below, and a test.
"""

from transferkit.training.strategies import auto, finetune, frozen, knn, linear, mlp, scratch, svm
from transferkit.training.strategies.base import END_TO_END_OPTIONS, HEAD_OPTIONS, SHARED, Strategy

# In the order `transferkit train --help` lists them.
REGISTERED: dict[str, Strategy] = {s.STRATEGY.name: s.STRATEGY for s in (linear, svm, mlp, knn, frozen, finetune, scratch, auto)}

__all__ = ["END_TO_END_OPTIONS", "HEAD_OPTIONS", "REGISTERED", "SHARED", "Strategy"]
