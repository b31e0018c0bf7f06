"""Each way pretrained weights are found, and the clear error when none is."""

import pickle
from pathlib import Path

import pytest
import torch

from transferkit import TransferkitError, WeightsNotFoundError, build_backbone, get_spec
from transferkit.core.weights import availability, cache_path, save_state_dict


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_explicit_file_round_trip(tmp_path, fmt):
    original = build_backbone("resnet18", pretrained=False, seed=7)
    path = tmp_path / f"weights.{fmt}"
    if fmt == "safetensors":
        save_state_dict(original.state_dict(), path)  # Backbone key names: body.* / classifier.*
    else:
        torch.save({**{k: v for k, v in original.body.state_dict().items()}, **{f"fc.{k}": v for k, v in original.classifier.state_dict().items()}}, path)
    loaded = build_backbone("resnet18", weights=str(path), seed=0)
    assert _same(original, loaded)
    assert loaded.weights_source == f"file:{path.name}"
    assert len(loaded.weights_digest) == 16


def test_wrong_architecture_is_one_clear_line(tmp_path):
    path = tmp_path / "lenet.safetensors"
    save_state_dict(build_backbone("lenet", pretrained=False).state_dict(), path)
    with pytest.raises(TransferkitError, match=r"do not fit resnet18: \d+ missing"):
        build_backbone("resnet18", weights=str(path))


def test_embedded_weights():
    backbone = build_backbone("efficientnet_lite0")
    assert backbone.weights_source.startswith("embedded:")
    assert availability(get_spec("efficientnet_lite0")) == "embedded"
    random = build_backbone("efficientnet_lite0", pretrained=False)
    assert not torch.equal(backbone.body.conv_stem.weight, random.body.conv_stem.weight)


def test_library_cache_is_used(tmp_path):
    spec = get_spec("resnet18")
    path = cache_path(spec)
    assert str(path).startswith(str(Path(torch.hub.get_dir())))
    path.parent.mkdir(parents=True, exist_ok=True)
    source = build_backbone("resnet18", pretrained=False, seed=5)
    state = {**source.body.state_dict(), **{f"fc.{k}": v for k, v in source.classifier.state_dict().items()}}
    torch.save(state, path)
    assert availability(spec) == "cached"
    loaded = build_backbone("resnet18")
    assert loaded.weights_source == f"cache:{path.name}"
    assert _same(source, loaded)
    path.unlink()


def test_missing_weights_offline_is_one_clear_line():
    with pytest.raises(WeightsNotFoundError) as info:
        build_backbone("resnet50")
    message = str(info.value)
    assert "\n" not in message
    for expected in ("resnet50", "--weights FILE", "--no-pretrained", str(cache_path(get_spec("resnet50"))), "offline"):
        assert expected in message


def test_failed_download_is_reported(monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(WeightsNotFoundError, match=r"download failed \(OSError\)"):
        build_backbone("resnet18")


def test_no_pretrained_weights_exist_for_lenet():
    with pytest.raises(WeightsNotFoundError, match="--no-pretrained"):
        build_backbone("lenet")
    assert build_backbone("lenet", pretrained=False).weights_source.startswith("random")


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(_Exploit.target),))


def test_malicious_pickle_weights_do_not_run(tmp_path):
    _Exploit.target = str(tmp_path / "pwned")
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Exploit()}, f)
    with pytest.raises(TransferkitError, match="not a plain tensor checkpoint"):
        build_backbone("resnet18", weights=str(path))
    assert not (tmp_path / "pwned").exists()


def test_missing_weights_file(tmp_path):
    with pytest.raises(TransferkitError, match="does not exist"):
        build_backbone("resnet18", weights=str(tmp_path / "nope.safetensors"))


def test_bvlc_alexnet_npy_needs_trust(tmp_path):
    import numpy as np

    from transferkit.core.alexnet_bvlc import make_fake_bvlc_arrays

    path = tmp_path / "bvlc-alexnet.npy"
    np.save(path, make_fake_bvlc_arrays(), allow_pickle=True)
    with pytest.raises(TransferkitError, match="pickle.*--trust-pickle"):
        build_backbone("alexnet_bvlc", weights=str(path))
    backbone = build_backbone("alexnet_bvlc", weights=str(path), trust_pickle=True)
    assert backbone.weights_source == "file:bvlc-alexnet.npy"
    x = torch.randn(1, 3, 227, 227)
    with torch.inference_mode():
        assert backbone.forward_features(x).shape == (1, 4096)
        assert backbone(x).shape == (1, 1000)
    with pytest.raises(TransferkitError, match="only 227 px"):
        backbone.transform(224)
