"""Heads trained on cached features, as scikit-learn estimators.

Each head also folds itself into a small torch module (``to_module``) that maps raw features
to class scores, so a trained run is one network (backbone + head) that saves as safetensors
and exports to ONNX or TorchScript like any other.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits
import torch.nn.functional as F
from torch import nn

# A head's layout, recorded in model.json, is what builds its module, when trained and when loaded:
# type -> what ``dims`` lists.
LAYOUTS = {
    "linear": "in, classes",
    "power-l2-linear": "in, classes",
    "dropout-linear": "in, classes (and 'dropout')",
    "mlp": "in, hidden, classes",
    "power-l2-mlp": "in, hidden, classes",
    "rbf": "in, landmarks, classes",
    "knn": "in, references, classes (and 'k')",
}


def head_module(layout: dict) -> nn.Module:
    """The (untrained) head network ``layout`` describes: the one place a head's shape becomes layers."""
    kind, dims = layout.get("type"), layout.get("dims")
    if kind not in LAYOUTS:
        raise ValueError(f"unknown head type {kind!r}: expected one of {', '.join(LAYOUTS)}")
    if kind == "linear":
        return nn.Linear(dims[0], dims[1])
    if kind == "power-l2-linear":
        return nn.Sequential(PowerL2Norm(), nn.Linear(dims[0], dims[1]))
    if kind == "dropout-linear":
        return nn.Sequential(nn.Dropout(layout.get("dropout", 0.0)), nn.Linear(dims[0], dims[1]))
    if kind == "rbf":
        return nn.Sequential(RBFFeatures(dims[0], dims[1]), nn.Linear(dims[1], dims[2]))
    if kind == "knn":
        return NearestNeighbours(*dims, k=layout["k"])
    mlp = [nn.Linear(dims[0], dims[1]), nn.ReLU(), nn.Linear(dims[1], dims[2])]
    return nn.Sequential(PowerL2Norm(), *mlp) if kind == "power-l2-mlp" else nn.Sequential(*mlp)


def _two_rows_if_binary(coef: np.ndarray, intercept: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn keeps one row of a binary linear model (the positive class's score); a network
    needs one output per class.  ``scale`` 0.5 gives logits (-z/2, z/2), whose softmax is exactly
    sigmoid(z) (logistic regression's probabilities); 1 gives (-z, z), an SVM's decision function."""
    if coef.shape[0] != 1:
        return coef, intercept
    return np.concatenate([-scale * coef, scale * coef]), np.concatenate([-scale * intercept, scale * intercept])


def _copy_linear(layer: nn.Linear, weight: np.ndarray, bias: np.ndarray) -> None:
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))


def _unstandardised(scaler: StandardScaler, coef: np.ndarray, intercept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``coef @ ((x - mean) / scale) + intercept`` as one affine map on raw features."""
    weight = coef / scaler.scale_
    return weight, intercept - weight @ scaler.mean_


def _last_linear(module: nn.Module) -> nn.Linear:
    return [m for m in module.modules() if isinstance(m, nn.Linear)][-1]


def pick_c(estimator, X, y, grid, cv_max_samples, seed) -> tuple[float, float]:
    """Choose C by stratified cross-validation on at most ``cv_max_samples`` rows: (C, its score).
    The one C search of the package: the heads and the planner's probes use it.

    Estimators that can warm-start (logistic regression) fit each fold along ascending C, each
    fit starting from the previous solution: a warm full-CIFAR-10 linear `train` call went from
    176 s to 150 s with it, for the same choice (BENCHMARKS.md).
    """
    if len(X) > cv_max_samples:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(X), cv_max_samples, replace=False))
        X, y = X[rows], y[rows]
    folds = min(3, int(np.bincount(y).min()))
    if folds < 2:
        return grid[len(grid) // 2], float("-inf")
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    if "warm_start" not in estimator.get_params():
        search = GridSearchCV(estimator, {"C": grid}, cv=cv, n_jobs=1).fit(X, y)
        return search.best_params_["C"], search.best_score_
    grid = sorted(grid)
    scores = np.zeros(len(grid))
    for train, test in cv.split(X, y):
        model = clone(estimator).set_params(warm_start=True)
        for i, C in enumerate(grid):
            scores[i] += model.set_params(C=C).fit(X[train], y[train]).score(X[test], y[test]) / folds
    best = int(np.argmax(scores))
    return grid[best], float(scores[best])


class PowerL2Norm(nn.Module):
    """Signed square root, then unit L2 norm per row: "power normalisation" of pooled features.

    It evens out the few large activations that dominate pooled post-ReLU features; on
    EfficientNet-Lite0 features of CIFAR-10 a logistic regression gains about a point from it
    over standardisation.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x.sign() * x.abs().sqrt(), dim=1)


def power_l2(X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return PowerL2Norm()(torch.as_tensor(X, dtype=torch.float32)).numpy()


SCALINGS = ("standard", "power-l2")


class LinearHead(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression on scaled features; C and the scaling chosen by CV.

    ``scaling`` is "standard" (standardised features) or "power-l2" (:class:`PowerL2Norm`);
    None lets cross-validation choose it with C, each over its own grid of C.
    """

    C_GRIDS = {"standard": (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 1.0), "power-l2": (1.0, 3.0, 10.0, 30.0, 100.0)}

    def __init__(self, C: float | None = None, scaling: str | None = None, max_iter: int = 1000, cv_max_samples: int = 5000, random_state: int = 0,
                 blas_threads: int | None = 1, class_weight: str | None = None):  # fmt: skip
        self.C = C
        self.class_weight = class_weight  # "balanced": classes weighted inversely to their frequency
        self.scaling = scaling
        self.max_iter = max_iter
        self.cv_max_samples = cv_max_samples
        self.random_state = random_state
        self.blas_threads = blas_threads

    def _scale(self, X, scaling: str | None = None):
        X = np.asarray(X, dtype=np.float32)
        return self.scaler_.transform(X) if (scaling or self.scaling_) == "standard" else power_l2(X)

    def fit(self, X, y):
        # ``blas_threads`` (None: the BLAS pool's default): L-BFGS interleaves short serial steps with
        # BLAS calls, and on 2 cores the pool's hand-offs cost more than its second thread gains on
        # these thin products: one thread fitted full CIFAR-10 features in 0.47x the time, with the
        # same choice of C (benchmarks/linear_threads.py). Machines with more cores are unmeasured.
        with threadpool_limits(self.blas_threads, user_api="blas"):
            return self._fit(X, y)

    def _fit(self, X, y):
        if self.scaling not in (None, *SCALINGS):
            raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        X = np.asarray(X, dtype=np.float32)
        scalings = [self.scaling] if self.scaling else list(SCALINGS) if self.C is None else ["standard"]
        self.scaler_ = StandardScaler().fit(X)
        scaled = {name: self._scale(X, name) for name in scalings}
        model = LogisticRegression(max_iter=self.max_iter, class_weight=self.class_weight)
        if self.C is not None:
            self.scaling_, self.C_ = scalings[0], self.C
        else:  # the best cross-validated score over every (scaling, C)
            scores = {name: pick_c(model, scaled[name], y, list(self.C_GRIDS[name]), self.cv_max_samples, self.random_state) for name in scalings}
            self.scaling_ = max(scalings, key=lambda name: scores[name][1])
            self.C_ = scores[self.scaling_][0]
        self.model_ = model.set_params(C=self.C_).fit(scaled[self.scaling_], y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        return self.model_.predict_proba(self._scale(X))

    def predict(self, X):
        best = self.predict_proba(X).argmax(1)
        return self.classes_[best]

    @property
    def layout_(self) -> dict:
        check_is_fitted(self)
        dims = [self.model_.coef_.shape[1], len(self.classes_)]
        return {"type": "linear" if self.scaling_ == "standard" else "power-l2-linear", "dims": dims}

    def to_module(self) -> nn.Module:
        """The head as a network on raw features; its softmax is ``predict_proba``, two classes included."""
        module = head_module(self.layout_)
        coef, intercept = _two_rows_if_binary(self.model_.coef_, self.model_.intercept_, 0.5)
        if self.scaling_ == "standard":
            coef, intercept = _unstandardised(self.scaler_, coef, intercept)
        _copy_linear(_last_linear(module), coef, intercept)
        return module


class SVMHead(ClassifierMixin, BaseEstimator):
    """A linear SVM on standardised features, or an RBF SVM through a Nystroem kernel map.

    The RBF kernel is approximated with ``n_components`` landmark points (scikit-learn's
    ``Nystroem``), which keeps training linear in the number of images and lets the head
    run inside the network as a small torch module.
    """

    def __init__(self, kernel: str = "linear", C: float | None = None, c_grid=(1e-3, 1e-2, 1e-1, 1.0), n_components: int = 1000, cv_max_samples: int = 5000, random_state: int = 0,
                 class_weight: str | None = None):  # fmt: skip
        self.kernel = kernel
        self.class_weight = class_weight
        self.C = C
        self.c_grid = c_grid
        self.n_components = n_components
        self.cv_max_samples = cv_max_samples
        self.random_state = random_state

    def _map(self, X):
        Z = self.scaler_.transform(np.asarray(X, dtype=np.float32))
        return self.kernel_map_.transform(Z) if self.kernel == "rbf" else Z

    def fit(self, X, y):
        if self.kernel not in ("linear", "rbf"):
            raise ValueError(f"kernel must be 'linear' or 'rbf', got {self.kernel!r}")
        X = np.asarray(X, dtype=np.float32)
        self.scaler_ = StandardScaler().fit(X)
        if self.kernel == "rbf":
            n = min(self.n_components, len(X))
            self.kernel_map_ = Nystroem(gamma=1.0 / X.shape[1], n_components=n, random_state=self.random_state)
            self.kernel_map_.fit(self.scaler_.transform(X))
        Z = self._map(X)
        model = LinearSVC(dual="auto", max_iter=5000, class_weight=self.class_weight)
        self.C_ = self.C if self.C is not None else pick_c(model, Z, y, list(self.c_grid), self.cv_max_samples, self.random_state)[0]
        self.model_ = model.set_params(C=self.C_).fit(Z, y)
        self.classes_ = self.model_.classes_
        return self

    def decision_function(self, X):
        check_is_fitted(self)
        scores = self.model_.decision_function(self._map(X))
        return scores if scores.ndim == 2 else np.stack([-scores, scores], 1)

    def predict(self, X):
        best = self.decision_function(X).argmax(1)
        return self.classes_[best]

    @property
    def layout_(self) -> dict:
        check_is_fitted(self)
        if self.kernel == "linear":
            return {"type": "linear", "dims": [self.scaler_.mean_.shape[0], len(self.classes_)]}
        return {"type": "rbf", "dims": [self.scaler_.mean_.shape[0], self.kernel_map_.components_.shape[0], len(self.classes_)]}

    def to_module(self) -> nn.Module:
        """The head as a network on raw features; its outputs are ``decision_function``'s."""
        module = head_module(self.layout_)
        coef, intercept = _two_rows_if_binary(self.model_.coef_, self.model_.intercept_, 1.0)
        if self.kernel == "linear":
            coef, intercept = _unstandardised(self.scaler_, coef, intercept)
        else:
            module[0].load_sklearn(self.scaler_, self.kernel_map_)
        _copy_linear(_last_linear(module), coef, intercept)
        return module


class RBFFeatures(nn.Module):
    """Standardise, then scikit-learn's Nystroem RBF feature map, in torch."""

    def __init__(self, in_dim: int, n_components: int):
        super().__init__()
        self.in_dim, self.n_components = in_dim, n_components
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(in_dim))
        self.register_buffer("landmarks", torch.zeros(n_components, in_dim))
        self.register_buffer("normalization", torch.eye(n_components))
        self.register_buffer("gamma", torch.tensor(1.0))

    @torch.no_grad()
    def load_sklearn(self, scaler: StandardScaler, kernel_map: Nystroem) -> None:
        for name, value in (("mean", scaler.mean_), ("scale", scaler.scale_), ("landmarks", kernel_map.components_), ("normalization", kernel_map.normalization_), ("gamma", kernel_map.gamma)):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.scale
        distance = (z * z).sum(1, keepdim=True) - 2 * z @ self.landmarks.T + (self.landmarks**2).sum(1)
        return torch.exp(-self.gamma * distance.clamp_min(0)) @ self.normalization.T


class NearestNeighbours(nn.Module):
    """k-nearest-neighbour vote by cosine similarity to stored reference features: the share of
    the ``k`` most similar references in each class, returned as log-probabilities (a softmax of
    them gives the shares back, so a run scores it like any head)."""

    def __init__(self, in_features: int, references: int, classes: int, k: int):
        super().__init__()
        self.k = k
        self.register_buffer("references", torch.zeros(references, in_features))  # unit length, one row per training image
        self.register_buffer("votes", torch.zeros(references, classes))  # one-hot labels of the references

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        similarity = F.normalize(x, dim=1) @ self.references.T
        nearest = similarity.topk(self.k, dim=1).indices
        shares = self.votes[nearest].mean(1)
        return torch.log(shares + 1e-6)


class NumpyDropout(nn.Dropout):
    """``nn.Dropout`` whose masks NumPy's generator draws: torch's CPU Bernoulli sampling took
    30% of an MLP head's training step (BENCHMARKS.md)."""

    def __init__(self, p: float, rng: np.random.Generator):
        super().__init__(p)
        self.rng = rng

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.from_numpy(self.rng.random(tuple(x.shape), dtype=np.float32) >= self.p)
        return x * keep / (1 - self.p)


class MLPHead(ClassifierMixin, BaseEstimator):
    """A hidden layer with dropout on scaled features, trained with AdamW on a one-cycle schedule.

    ``scaling`` is "power-l2" (:class:`PowerL2Norm`, then standardised) or "standard". 10 epochs,
    at least ``min_steps`` steps (small sets still get enough of them). On all CIFAR-10 training
    images' flip features it reaches 83.88% / 83.94% test accuracy (two seeds) in a 47-49 s
    `train` call (the previous head, standardised inputs at a constant learning rate, 82.93% /
    82.48%; BENCHMARKS.md).
    """

    def __init__(self, hidden: int = 512, dropout: float = 0.5, lr: float = 1e-3, weight_decay: float = 1e-4, epochs: int = 10, batch_size: int = 256,
                 min_steps: int = 500, scaling: str = "power-l2", random_state: int = 0, class_weight: str | None = None):  # fmt: skip
        self.hidden = hidden
        self.class_weight = class_weight
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.min_steps = min_steps
        self.scaling = scaling
        self.random_state = random_state

    def _normalised(self, X):
        X = np.asarray(X, dtype=np.float32)
        return power_l2(X) if self.scaling == "power-l2" else X

    def _scale(self, X):
        return self.scaler_.transform(self._normalised(X))

    def fit(self, X, y):
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        normalised = self._normalised(X)  # once: it is the whole training matrix
        self.classes_ = np.unique(y)
        targets = torch.as_tensor(np.searchsorted(self.classes_, y))
        weights = None
        if self.class_weight is not None:
            weights = torch.as_tensor(compute_class_weight(self.class_weight, classes=self.classes_, y=y), dtype=torch.float32)
        self.scaler_ = StandardScaler().fit(normalised)
        inputs = torch.as_tensor(self.scaler_.transform(normalised), dtype=torch.float32)
        generator = torch.Generator().manual_seed(self.random_state)
        torch.manual_seed(self.random_state)
        masks = np.random.default_rng(self.random_state)
        net = nn.Sequential(NumpyDropout(0.1, masks), nn.Linear(normalised.shape[1], self.hidden), nn.ReLU(), NumpyDropout(self.dropout, masks), nn.Linear(self.hidden, len(self.classes_)))
        # The fused AdamW kernel: the per-tensor one took a fifth of a step on the CPU.
        optimiser = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True)
        per_epoch = -(-len(inputs) // self.batch_size)
        # OneCycleLR's 10% warm-up needs two steps or more: 20 steps at the least.
        epochs = max(self.epochs, -(-max(self.min_steps, 20) // per_epoch))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=self.lr, total_steps=epochs * per_epoch, pct_start=0.1)
        net.train()
        for _ in range(epochs):
            for rows in torch.randperm(len(inputs), generator=generator).split(self.batch_size):
                optimiser.zero_grad()
                nn.functional.cross_entropy(net(inputs[rows]), targets[rows], weight=weights).backward()
                optimiser.step()
                schedule.step()
        self.net_ = net.eval()
        return self

    def predict_proba(self, X):
        check_is_fitted(self)
        with torch.no_grad():
            return self.net_(torch.as_tensor(self._scale(X), dtype=torch.float32)).softmax(1).numpy()

    def predict(self, X):
        best = self.predict_proba(X).argmax(1)
        return self.classes_[best]

    @property
    def layout_(self) -> dict:
        check_is_fitted(self)
        first, last = self.net_[1], self.net_[4]
        return {"type": "power-l2-mlp" if self.scaling == "power-l2" else "mlp", "dims": [first.in_features, first.out_features, last.out_features]}

    def to_module(self) -> nn.Module:
        """The head as a network on raw features (the scaler folded into the first layer); its softmax is ``predict_proba``."""
        module = head_module(self.layout_)
        first, last = self.net_[1], self.net_[4]
        linears = [m for m in module if isinstance(m, nn.Linear)]
        _copy_linear(linears[0], *_unstandardised(self.scaler_, first.weight.detach().numpy(), first.bias.detach().numpy()))
        _copy_linear(linears[1], last.weight.detach().numpy(), last.bias.detach().numpy())
        return module
