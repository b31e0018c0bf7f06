"""``--strategy knn``: k-nearest neighbours on the cached features by cosine similarity, k chosen by
cross-validation: the few-shot baseline.  No training beyond storing the training features, so it
is the head to try first with a handful of images a class.  The saved run holds every training
image's features (N x D floats in model.safetensors): it suits small sets, not CIFAR-10's 50,000."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils.validation import check_is_fitted

from transferkit.core.errors import TransferkitError
from transferkit.core.heads import head_module
from transferkit.training.strategies.base import HEAD_OPTIONS, Strategy

K_GRID = (1, 3, 5, 7, 11, 15, 21)


class KNNHead(ClassifierMixin, BaseEstimator):
    """Cosine k-NN with uniform votes; ``k=None`` chooses it from K_GRID by stratified CV (up to 5 folds)."""

    def __init__(self, k: int | None = None, random_state: int = 0):
        self.k = k
        self.random_state = random_state

    def fit(self, X, y):
        X, y = np.asarray(X, dtype=np.float32), np.asarray(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        smallest = int(np.bincount(encoded).min())
        folds = min(5, smallest)
        if self.k is not None:
            self.k_ = self.k
        elif folds < 2:  # a class with one image: nothing to cross-validate, the nearest one decides
            self.k_ = 1
        else:
            # the fewest references a fold can train with (stratified folds round per class): a larger k scores nan
            fold_train = len(y) - math.ceil(len(y) / folds) - len(self.classes_)
            grid = [k for k in K_GRID if k <= max(1, fold_train)]
            knn = KNeighborsClassifier(metric="cosine", algorithm="brute")
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            self.k_ = int(GridSearchCV(knn, {"n_neighbors": grid}, cv=cv).fit(X, encoded).best_params_["n_neighbors"])
        if self.k_ > len(y):
            raise TransferkitError(f"--strategy knn with k={self.k_} needs at least {self.k_} training images, got {len(y)}")
        self.references_ = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
        self.labels_ = encoded
        return self

    @property
    def layout_(self) -> dict:
        check_is_fitted(self)
        return {"type": "knn", "dims": [self.references_.shape[1], len(self.references_), len(self.classes_)], "k": self.k_}

    def to_module(self) -> torch.nn.Module:
        """The vote as a network on raw features (core.heads.NearestNeighbours)."""
        module = head_module(self.layout_)
        module.references.copy_(torch.from_numpy(self.references_))
        module.votes.copy_(torch.nn.functional.one_hot(torch.from_numpy(self.labels_), len(self.classes_)).float())
        return module

    def predict_proba(self, X) -> np.ndarray:
        with torch.inference_mode():
            return self.to_module()(torch.as_tensor(np.asarray(X, dtype=np.float32))).softmax(1).numpy()

    def predict(self, X) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


# Votes are not weighted: --balance is refused rather than recorded and ignored.
STRATEGY = Strategy("knn", "features", "k-nearest neighbours (cosine) on cached features, k by cross-validation", HEAD_OPTIONS - {"balance"},
                    head=lambda opts: KNNHead(random_state=opts.seed))  # fmt: skip
