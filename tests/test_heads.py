"""Heads on features: scikit-learn estimators whose torch form gives the same answers."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold

from hypothesis import given, settings
from hypothesis import strategies as st

from transferkit.core.heads import SCALINGS, pick_c, LinearHead, MLPHead, NumpyDropout, PowerL2Norm, SVMHead, head_module, power_l2


@pytest.fixture(scope="module")
def blobs():
    X, y = make_classification(n_samples=300, n_features=20, n_informative=8, n_classes=3, random_state=0)
    return (X * 5 + 3).astype(np.float32), y


@pytest.mark.parametrize(
    "head",
    [LinearHead(scaling="standard"), LinearHead(scaling="power-l2"), SVMHead(), SVMHead(kernel="rbf", n_components=100),
     MLPHead(hidden=32, epochs=30), MLPHead(hidden=32, epochs=30, scaling="standard")],
    ids=["linear", "linear-power-l2", "svm", "svm-rbf", "mlp", "mlp-standard"],
)
def test_head_learns_and_folds_into_torch(blobs, head):
    X, y = blobs
    head = clone(head).fit(X[:200], y[:200])
    assert head.score(X[200:], y[200:]) > 0.6
    with torch.no_grad():
        scores = head.to_module()(torch.as_tensor(X[200:])).numpy()
    reference = head.decision_function(X[200:]) if isinstance(head, SVMHead) else head.predict_proba(X[200:])
    if isinstance(head, SVMHead):
        np.testing.assert_allclose(scores, reference, atol=1e-3, rtol=1e-3)
    else:
        np.testing.assert_allclose(torch.as_tensor(scores).softmax(1).numpy(), reference, atol=1e-4)


def test_binary_svm_module_has_two_outputs(blobs):
    X, y = blobs
    keep = y < 2
    head = SVMHead(C=1.0).fit(X[keep], y[keep])
    assert head.to_module()(torch.as_tensor(X[:4])).shape == (4, 2)


def test_unfitted_head_raises():
    with pytest.raises(NotFittedError):
        LinearHead().predict(np.zeros((1, 3)))


def test_cross_validation_picks_scaling_and_c(blobs):
    X, y = blobs
    head = LinearHead().fit(X, y)
    assert head.scaling_ in SCALINGS and head.C_ in LinearHead.C_GRIDS[head.scaling_]
    head = LinearHead(scaling="power-l2").fit(X, y)
    assert head.scaling_ == "power-l2" and head.C_ in LinearHead.C_GRIDS["power-l2"]
    head = LinearHead(C=0.5).fit(X, y)
    assert (head.C_, head.scaling_) == (0.5, "standard")
    for head in (LinearHead(scaling="minmax"), MLPHead(scaling="minmax")):
        with pytest.raises(ValueError, match="scaling must be one of"):
            head.fit(X, y)


def test_power_l2_norm_matches_numpy():
    X = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    np.testing.assert_allclose(PowerL2Norm()(torch.as_tensor(X)).numpy(), power_l2(X), atol=1e-6)
    assert np.allclose(np.linalg.norm(power_l2(X), axis=1), 1)


def test_unknown_head_layout():
    with pytest.raises(ValueError, match="unknown head type"):
        head_module({"type": "tree", "dims": [4, 2]})


def test_warm_started_c_path_chooses_as_a_grid_search_does(blobs):
    X, y = blobs
    grid = [10.0, 1e-3, 0.1, 1e-2, 1.0]  # any order: the path sorts it
    chosen, score = pick_c(LogisticRegression(max_iter=1000), X, y, grid, cv_max_samples=5000, seed=0)
    search = GridSearchCV(LogisticRegression(max_iter=1000), {"C": grid}, cv=StratifiedKFold(3, shuffle=True, random_state=0)).fit(X, y)
    assert chosen == search.best_params_["C"]
    assert score == pytest.approx(search.best_score_, abs=0.01)


def test_numpy_dropout_drops_at_rate_p_and_keeps_the_mean():
    x = torch.ones(400, 500)
    dropout = NumpyDropout(0.3, np.random.default_rng(0))
    out = dropout(x)
    assert abs((out == 0).float().mean().item() - 0.3) < 0.01
    assert abs(out.mean().item() - 1.0) < 0.02
    assert torch.equal(out[out != 0], torch.full_like(out[out != 0], 1 / 0.7))
    assert torch.equal(dropout.eval()(x), x)
    assert torch.equal(NumpyDropout(0.3, np.random.default_rng(0))(x), out)  # a seeded generator repeats its masks


def test_mlp_head_is_reproducible_for_a_seed(blobs):
    X, y = blobs
    first, second, other = (MLPHead(hidden=16, epochs=3, min_steps=10, random_state=seed).fit(X, y) for seed in (0, 0, 1))
    assert np.array_equal(first.predict_proba(X), second.predict_proba(X))
    assert not np.array_equal(first.predict_proba(X), other.predict_proba(X))


def test_linear_head_fits_with_one_blas_thread_and_gives_the_pool_back(monkeypatch):
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}

    before, seen = blas_threads(), []
    original = LinearHead._fit
    monkeypatch.setattr(LinearHead, "_fit", lambda self, X, y: seen.append(blas_threads()) or original(self, X, y))
    X, y = np.random.default_rng(0).normal(size=(60, 5)), np.arange(60) % 3
    LinearHead(C=1.0).fit(X, y)
    LinearHead(C=1.0, blas_threads=None).fit(X, y)
    assert seen == [{1}, before] and blas_threads() == before


HEAD_FACTORIES = {
    "linear": lambda seed, weight: LinearHead(C=1.0, scaling="standard", random_state=seed, class_weight=weight),
    "linear-power-l2": lambda seed, weight: LinearHead(C=10.0, scaling="power-l2", random_state=seed, class_weight=weight),
    "svm": lambda seed, weight: SVMHead(C=0.1, random_state=seed, class_weight=weight),
    "svm-rbf": lambda seed, weight: SVMHead(kernel="rbf", C=1.0, n_components=40, random_state=seed, class_weight=weight),
    "mlp": lambda seed, weight: MLPHead(hidden=16, epochs=3, min_steps=20, random_state=seed, class_weight=weight),
}


@pytest.mark.parametrize("name", list(HEAD_FACTORIES))
@settings(max_examples=8, deadline=None, derandomize=True)
@given(n_classes=st.integers(2, 7), imbalance=st.sampled_from([1, 3]), balanced_weights=st.booleans(), seed=st.integers(0, 3))
def test_folded_head_gives_the_estimators_answers(name, n_classes, imbalance, balanced_weights, seed):
    """For any number of classes, two included, balanced or not: the torch module predicts what the
    estimator predicts, with the same probabilities for probabilistic heads, and the layout it records
    rebuilds a module that takes its weights."""
    rng = np.random.default_rng(seed)
    counts = [12 * (imbalance if c == 0 else 1) for c in range(n_classes)]
    y = np.repeat(np.arange(n_classes), counts)
    X = (rng.normal(size=(len(y), 10)) + 1.5 * rng.normal(size=(n_classes, 10))[y] * 2 + 4).astype(np.float32)
    head = HEAD_FACTORIES[name](seed, "balanced" if balanced_weights else None).fit(X, y)
    module = head.to_module().eval()
    with torch.no_grad():
        scores = module(torch.as_tensor(X)).numpy()
    assert scores.shape == (len(X), n_classes)
    np.testing.assert_array_equal(head.classes_[scores.argmax(1)], head.predict(X))
    if hasattr(head, "predict_proba"):
        np.testing.assert_allclose(torch.as_tensor(scores).softmax(1).numpy(), head.predict_proba(X), atol=1e-5)
    else:
        np.testing.assert_allclose(scores, head.decision_function(X), atol=1e-4, rtol=1e-4)
    rebuilt = head_module(head.layout_)
    rebuilt.load_state_dict(module.state_dict())
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt.eval()(torch.as_tensor(X)).numpy(), scores, atol=1e-6)


def test_two_class_linear_head_is_not_a_constant():
    """The bug a 348-test suite missed: a binary logistic regression folded into one output made
    argmax answer class 0 for every image."""
    X, y = make_classification(n_samples=200, n_features=12, n_informative=6, n_classes=2, class_sep=2.0, random_state=1)
    head = LinearHead().fit(X[:150], y[:150])
    with torch.no_grad():
        predicted = head.to_module()(torch.as_tensor(X[150:], dtype=torch.float32)).argmax(1).numpy()
    assert head.layout_["dims"][-1] == 2
    assert set(predicted) == {0, 1} and (predicted == y[150:]).mean() > 0.8


def test_class_weight_balanced_moves_the_minority_recall():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], [300, 30])
    X = (rng.normal(size=(330, 5)) + 0.8 * y[:, None]).astype(np.float32)
    recall = {weight: (LinearHead(C=1.0, scaling="standard", class_weight=weight).fit(X, y).predict(X[y == 1]) == 1).mean() for weight in (None, "balanced")}
    assert recall["balanced"] > recall[None] + 0.2
