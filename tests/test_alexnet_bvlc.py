"""BvlcAlexNet and the bvlc-alexnet.npy converter, checked against TF-layout reference computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transferkit.core.alexnet_bvlc import BvlcAlexNet, bvlc_state_dict, load_bvlc_npy, make_fake_bvlc_arrays


@pytest.fixture(scope="module")
def arrays():
    return make_fake_bvlc_arrays(seed=0, scale=0.02)


@pytest.fixture(scope="module")
def model(arrays, tmp_path_factory):
    """The module loaded strictly from a real .npy file written the way the lab wrote it."""
    path = tmp_path_factory.mktemp("bvlc") / "bvlc-alexnet.npy"
    np.save(path, arrays, allow_pickle=True)
    with torch.device("meta"):  # skip the random init of 61M parameters; loading assigns them all
        net = BvlcAlexNet()
    net.load_state_dict(load_bvlc_npy(path), strict=True, assign=True)
    return net.eval()


def tf_conv(x_nhwc: torch.Tensor, w_hwio: np.ndarray, b: np.ndarray, stride: int, pad: int, groups: int) -> torch.Tensor:
    """The lab's conv: split input and kernel into groups, convolve each, concatenate channels (NHWC)."""
    outs = []
    for xg, wg in zip(x_nhwc.chunk(groups, dim=3), np.split(w_hwio, groups, axis=3)):
        w = torch.from_numpy(np.ascontiguousarray(wg.transpose(3, 2, 0, 1)))
        outs.append(F.conv2d(xg.permute(0, 3, 1, 2), w, stride=stride, padding=pad).permute(0, 2, 3, 1))
    return torch.cat(outs, dim=3) + torch.from_numpy(b)


def tf_lrn(x_nhwc: torch.Tensor) -> torch.Tensor:
    """tf.nn.local_response_normalization(depth_radius=2, alpha=2e-05, beta=0.75, bias=1.0)."""
    sq = F.pad(x_nhwc**2, (2, 2))
    sqr_sum = sum(sq[..., i : i + x_nhwc.shape[3]] for i in range(5))
    return x_nhwc / (1.0 + 2e-05 * sqr_sum) ** 0.75


def tf_pool(x_nhwc: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x_nhwc.permute(0, 3, 1, 2), 3, 2).permute(0, 2, 3, 1)


def tf_forward(a: dict, rgb_nchw: torch.Tensor) -> torch.Tensor:
    """The whole network as the lab ran it: BGR NHWC input, HWIO kernels, HWC flatten before fc6."""
    x = rgb_nchw.flip(1).permute(0, 2, 3, 1)  # RGB NCHW -> BGR NHWC
    x = tf_pool(tf_lrn(F.relu(tf_conv(x, *a["conv1"], stride=4, pad=0, groups=1))))
    x = tf_pool(tf_lrn(F.relu(tf_conv(x, *a["conv2"], stride=1, pad=2, groups=2))))
    x = F.relu(tf_conv(x, *a["conv3"], stride=1, pad=1, groups=1))
    x = F.relu(tf_conv(x, *a["conv4"], stride=1, pad=1, groups=2))
    x = tf_pool(F.relu(tf_conv(x, *a["conv5"], stride=1, pad=1, groups=2)))
    x = x.reshape(x.shape[0], -1)  # HWC flatten, 9216
    for name in ("fc6", "fc7", "fc8"):
        w, b = (torch.from_numpy(t) for t in a[name])
        x = x @ w + b
        x = F.relu(x) if name != "fc8" else x
    return x


def test_shapes_and_penultimate_features(model):
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        pool5 = model.features(x)
        feats = model.classifier[:-1](torch.flatten(pool5, 1))
        logits = model(x)
    assert pool5.shape == (2, 256, 6, 6) and logits.shape == (2, 1000)
    assert feats.shape == (2, 4096) and (feats >= 0).all()
    torch.testing.assert_close(model.classifier[-1](feats), logits)
    assert isinstance(model.classifier[-1], torch.nn.Linear) and model.classifier[-1].in_features == 4096
    with torch.device("meta"):
        assert BvlcAlexNet(num_classes=7)(x.to("meta")).shape == (2, 7)


def test_wrong_input_size_is_refused(model):
    with pytest.raises(ValueError, match="227x227"):
        model(torch.randn(1, 3, 224, 224))


def test_conv1_matches_hwio_bgr_reference_at_positions(model, arrays):
    rgb = torch.randn(1, 3, 227, 227) * 50
    with torch.no_grad():
        out = model.features[0](rgb)  # (1, 96, 55, 55)
    bgr_hwc = rgb[0].flip(0).permute(1, 2, 0).numpy().astype(np.float64)  # the lab fed BGR
    w, b = arrays["conv1"]
    for i, j, o in [(0, 0, 0), (3, 17, 5), (54, 54, 95), (27, 8, 40)]:
        patch = bgr_hwc[4 * i : 4 * i + 11, 4 * j : 4 * j + 11, :]  # VALID, stride 4
        ref = np.einsum("hwc,hwc->", patch, w[:, :, :, o].astype(np.float64)) + b[o]
        assert np.isclose(out[0, o, i, j].item(), ref, rtol=1e-4, atol=1e-3)


def test_fc6_rows_permuted_from_hwc_to_chw(model, arrays):
    pool5 = torch.randn(3, 256, 6, 6)  # PyTorch layout
    w, b = (torch.from_numpy(t) for t in arrays["fc6"])
    ref = pool5.permute(0, 2, 3, 1).reshape(3, 9216) @ w + b  # TF: flatten NHWC, x @ W
    with torch.no_grad():
        out = model.classifier[0](pool5.flatten(1))  # PyTorch: flatten NCHW
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_lrn_matches_tf_formula(model):
    x = torch.randn(2, 96, 5, 5) * 300  # large enough that the normalisation matters
    ref = tf_lrn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    assert not torch.allclose(ref, x, rtol=1e-2)
    for idx in (2, 6):
        torch.testing.assert_close(model.features[idx](x), ref, rtol=1e-5, atol=1e-5)


def test_whole_network_matches_tf_layout_reference(model, arrays):
    rgb = torch.randn(2, 3, 227, 227) * 60
    with torch.no_grad():
        out, ref = model(rgb), tf_forward(arrays, rgb)
    assert ref.abs().max() > 1e-3  # the fake weights keep signal alive to the logits
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())


def test_grouped_convs(model):
    conv2 = model.features[4]
    assert conv2.weight.shape == (256, 48, 5, 5) and conv2.groups == 2
    assert model.features[10].groups == 2 and model.features[12].groups == 2
    assert model.features[8].groups == 1 and model.features[0].groups == 1


def test_custom_head_loads_without_fc8(arrays):
    with torch.device("meta"):
        net = BvlcAlexNet(num_classes=10)
    result = net.load_state_dict(bvlc_state_dict(arrays, include_fc8=False), strict=False, assign=True)
    assert set(result.missing_keys) == {"classifier.6.weight", "classifier.6.bias"} and not result.unexpected_keys


def test_wrong_shape_names_the_layer(arrays):
    bad = dict(arrays, conv4=[np.zeros((3, 3, 384, 384), np.float32), arrays["conv4"][1]])
    with pytest.raises(ValueError, match=r"conv4.*\(3, 3, 192, 384\).*\(3, 3, 384, 384\)"):
        bvlc_state_dict(bad)
    bad = dict(arrays, fc7=[arrays["fc7"][0], np.zeros(10, np.float32)])
    with pytest.raises(ValueError, match="fc7: biases"):
        bvlc_state_dict(bad)


def test_missing_layer(arrays):
    with pytest.raises(ValueError, match="missing layer.*fc7"):
        bvlc_state_dict({k: v for k, v in arrays.items() if k != "fc7"})


@pytest.mark.parametrize("kind", ["plain-array", "not-a-dict", "bad-entry", "not-npy"])
def test_bad_files_raise_one_line_value_error(tmp_path, kind):
    content = {
        "plain-array": np.zeros((2, 3), np.float32),
        "not-a-dict": np.array([1, "a"], dtype=object),
        "bad-entry": {name: "not weights" for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")},
        "not-npy": "garbage\nmore garbage",
    }[kind]
    path = tmp_path / "bvlc-alexnet.npy"
    if isinstance(content, str):
        path.write_text(content)
    else:
        np.save(path, content, allow_pickle=True)
    with pytest.raises(ValueError) as info:
        load_bvlc_npy(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
