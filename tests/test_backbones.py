"""Contract tests over every registered backbone, at random init and small inputs."""

import pytest
import torch
from PIL import Image

from transferkit import REGISTRY, TransferkitError, build_backbone, get_spec, list_models

NAMES = sorted(REGISTRY)
TEACHING_AND_MODERN = {
    "alexnet", "vgg16", "vgg19", "googlenet", "inception_v3", "resnet18", "resnet50", "resnet152",
    "efficientnet_lite0", "mobilenet_v3_large", "convnext_tiny", "lenet", "alexnet_bvlc",
}  # fmt: skip


def test_registry_covers_the_zoo():
    assert TEACHING_AND_MODERN <= set(NAMES)
    assert list_models("resnet*") == ["resnet18", "resnet50", "resnet152"]


@pytest.mark.parametrize("name", NAMES)
def test_backbone_contract(name):
    spec = get_spec(name)
    backbone = build_backbone(name, pretrained=False)
    size = spec.input_size if spec.fixed_input_size else max(spec.min_input_size, 32)
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        features = backbone.forward_features(x)
        assert features.shape == (2, spec.feature_dim)
        assert backbone(x).shape == (2, spec.num_classes)
        stage_dims = [backbone.features(x, f"stage{i}").shape for i in range(1, len(spec.stages) + 1)]
    assert all(s[0] == 2 and s[1] > 0 for s in stage_dims)

    backbone.reset_classifier(3)
    with torch.inference_mode():
        logits = backbone(x)
        assert logits.shape == (2, 3)
        # From any layer group's output on, the rest of the network gives the same logits (--cache-frozen).
        for group in range(1, len(spec.layer_groups) + 1):
            output = backbone.group_output(x, group)
            kept = output.clone()
            assert torch.allclose(backbone.forward_from(output, group, size), logits, atol=1e-5), group
            assert torch.equal(output, kept), group  # in-place glue (ReLU) left the caller's tensor alone

    # Layer groups cover every body parameter exactly once, from input to output.
    grouped = [n for group in spec.layer_groups for path in group for n, _ in backbone.body.get_submodule(path).named_parameters(prefix=path)]
    assert sorted(grouped) == sorted(n for n, _ in backbone.body.named_parameters())
    assert len(grouped) == len(set(grouped))

    # The parameter count matches the library's statement (less the aux heads we drop).
    count = sum(p.numel() for p in build_backbone(name, pretrained=False).parameters())
    if spec.params is not None:
        assert count == spec.params if not spec.drop_keys else count <= spec.params

    image = Image.new("RGB", (97, 61), (120, 30, 200))
    assert spec.transform()(image).shape == (3, spec.input_size, spec.input_size)


def test_random_init_is_seeded():
    a = build_backbone("resnet18", pretrained=False, seed=3)
    b = build_backbone("resnet18", pretrained=False, seed=3)
    assert torch.equal(a.body.conv1.weight, b.body.conv1.weight)


def test_unknown_model_and_layer_are_clear():
    with pytest.raises(TransferkitError, match="unknown model 'resnet51'.*did you mean resnet50"):
        get_spec("resnet51")
    backbone = build_backbone("lenet", pretrained=False)
    with pytest.raises(TransferkitError, match="stage1..stage2"):
        backbone.features(torch.randn(1, 3, 32, 32), "stage9")


def test_image_size_override_scales_resize():
    spec = get_spec("efficientnet_lite0")
    assert spec.preprocessing(64)["resize_size"] == round(64 / 0.875)
    assert spec.transform(64)(Image.new("RGB", (32, 32))).shape == (3, 64, 64)


def test_embedded_lite0_preprocessing_is_tensorflow_style():
    spec = get_spec("efficientnet_lite0")
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)
    assert spec.interpolation == "bicubic"


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])  # TensorFlow's and ImageNet's mean and std
def test_uint8_transform_then_normalize_equals_the_float_transform(name):
    import numpy as np

    spec = get_spec(name)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    raw = spec.transform(64, uint8=True)(image)
    assert raw.dtype == torch.uint8 and raw.shape == (3, 64, 64)
    torch.testing.assert_close(spec.normalize(raw[None])[0], spec.transform(64)(image), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if get_spec(n).source == "timm"])
def test_timm_specs_state_timms_pretrained_config(name):
    """The timm entries write timm's pretrained config out (timm stays off the import path): they must agree."""
    from timm.models import get_pretrained_cfg

    spec = get_spec(name)
    cfg = get_pretrained_cfg(spec.weights)
    assert (3, spec.input_size, spec.input_size) == cfg.input_size
    assert spec.resize_size == int(spec.input_size / cfg.crop_pct)  # timm's eval transform floors the scale size
    assert (spec.interpolation, spec.mean, spec.std) == (cfg.interpolation, tuple(cfg.mean), tuple(cfg.std))
    assert spec.classifier == cfg.classifier


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0"])  # bilinear and bicubic
def test_one_factory_builds_the_evaluation_and_the_training_pipelines(name):
    import numpy as np

    spec = get_spec(name)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8))
    evaluation = spec.transform(64)
    assert spec.transform(64, is_training=True, augment="none")(image).equal(evaluation(image))
    for augment in ("light", "strong"):
        torch.manual_seed(0)
        for _ in range(20):  # RandAugment draws its operations: the geometric ones too
            out = spec.transform(64, is_training=True, augment=augment)(image)
            assert out.shape == (3, 64, 64) and out.dtype == torch.float32
            raw = spec.transform(64, uint8=True, is_training=True, augment=augment)(image)
            assert raw.shape == (3, 64, 64) and raw.dtype == torch.uint8
    torch.manual_seed(1)
    crops = {spec.transform(64, is_training=True)(image).sum().item() for _ in range(5)}
    assert len(crops) > 1  # random crops and flips: not the evaluation pipeline
    with pytest.raises(TransferkitError, match="unknown augment 'wild': use none, light, strong"):
        spec.transform(64, is_training=True, augment="wild")
    with pytest.raises(TransferkitError, match="only 227 px"):
        get_spec("alexnet_bvlc").transform(224, is_training=True)
