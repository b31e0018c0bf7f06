"""--strategy knn: cosine k-nearest neighbours on cached features, k by cross-validation, folded
into a torch layer so the saved run is one network (its outcome floors are in test_outcomes.py)."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from transferkit.core.errors import TransferkitError
from transferkit.core.heads import head_module
from transferkit.training.options import resolve
from transferkit.training.strategies.knn import KNNHead


def blobs(n_per_class: int, classes: int, seed: int = 0, spread: float = 1.5):
    """Gaussian blobs around the same class centres whatever the ``seed`` of the samples."""
    centres = np.random.default_rng(100).normal(scale=3.0, size=(classes, 16))
    rng = np.random.default_rng(seed)
    X = np.concatenate([c + rng.normal(scale=spread, size=(n_per_class, 16)) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(classes), n_per_class)


@pytest.mark.parametrize("classes", [2, 5])
def test_the_folded_vote_predicts_what_scikit_learn_s_knn_does(classes):
    X, y = blobs(30, classes)
    Xt, yt = blobs(20, classes, seed=1)
    head = KNNHead().fit(X, y)
    reference = KNeighborsClassifier(head.k_, metric="cosine", algorithm="brute").fit(X, y)
    agree = np.mean(head.predict(Xt) == reference.predict(Xt))
    assert agree >= 0.97  # ties between equally near neighbours may break either way
    assert head.score(Xt, yt) >= 0.8
    module = head.to_module()
    probs = module(torch.as_tensor(Xt)).softmax(1).detach().numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, head.predict_proba(Xt), atol=1e-6)


def test_k_comes_from_cross_validation():
    X, y = blobs(40, 3, spread=3.5)  # overlapping classes: one neighbour is noisy, more vote better
    assert KNNHead().fit(X, y).k_ > 1
    assert KNNHead(k=3).fit(X, y).k_ == 3
    one_each = KNNHead().fit(X[[0, 40, 80]], y[[0, 40, 80]])
    assert one_each.k_ == 1 and list(one_each.predict(X[[0, 40, 80]])) == [0, 1, 2]


def test_a_saved_layout_rebuilds_the_same_network():
    X, y = blobs(10, 3)
    head = KNNHead().fit(X, y)
    rebuilt = head_module(head.layout_)
    rebuilt.load_state_dict(head.to_module().state_dict())
    np.testing.assert_allclose(rebuilt(torch.as_tensor(X)).detach().numpy(), head.to_module()(torch.as_tensor(X)).detach().numpy())
    assert head.layout_ == {"type": "knn", "dims": [16, 30, 3], "k": head.k_}


def test_knn_takes_the_head_options_and_refuses_balance():
    assert resolve({"strategy": "knn", "layer": "stage3", "flip_tta": True}).strategy == "knn"
    with pytest.raises(TransferkitError, match="--strategy knn does not use --balance"):
        resolve({"strategy": "knn", "balance": "weights"})
    with pytest.raises(TransferkitError, match="knn does not use --epochs"):
        resolve({"strategy": "knn", "epochs": 3})
