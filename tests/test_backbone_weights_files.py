"""``--weights FILE`` over the whole registry: a valid file is loaded, a bad one refused in one line.

Every file here is built from the network itself at random init (or is plain garbage), so the
tests need no downloads; a bad file is refused before the network is initialised, so the
refusals stay fast even for VGG.
"""

import re

import pytest
import torch

from transferkit import REGISTRY, TransferkitError, build_backbone, get_spec
from transferkit.core.backbones import build_network
from transferkit.core.weights import save_state_dict

NAMES = sorted(REGISTRY)
WITH_LAYERS = [name for name in NAMES if get_spec(name).has_learned_layers]
BIG = {"vgg16", "vgg19", "resnet152"}  # 230-550 MB each to write and read back


def _shapes(name):
    with torch.device("meta"):
        return build_network(get_spec(name)).state_dict()


def _bad_files(folder, name):
    """(file, a regex for what the refusal must say) for each way a weights file can be wrong for ``name``."""
    cases = []
    for suffix in (".safetensors", ".pt"):
        empty = folder / f"empty{suffix}"
        empty.write_bytes(b"")
        zeros = folder / f"zeros{suffix}"
        zeros.write_bytes(bytes(64))
        cases += [(empty, r"is empty \(0 bytes\)"), (zeros, "not a valid safetensors file" if suffix == ".safetensors" else "neither a safetensors file nor a torch checkpoint")]
    wrong_keys = folder / "wrong_keys.safetensors"
    save_state_dict({"not_a_layer.weight": torch.zeros(3)}, wrong_keys)
    wrong_shapes = folder / "wrong_shapes.pt"
    torch.save({key: torch.zeros(1, 1, 1, 1, 1) for key in _shapes(name)}, wrong_shapes)  # no parameter is 5-d
    cases += [(wrong_keys, rf"do not fit {name}: \d+ missing .*1 unexpected \(e.g. not_a_layer.weight\)"), (wrong_shapes, rf"do not fit {name}: \d+ mismatched")]
    if name != "alexnet_bvlc":
        npy = folder / "bvlc-alexnet.npy"
        npy.write_bytes(b"\x93NUMPY not really")
        cases.append((npy, "only for --model alexnet_bvlc"))
    return cases


FIXES = ("save_file(model.state_dict(), FILE)", "pass the state dict of a")  # each refusal names one


@pytest.mark.parametrize("name", WITH_LAYERS)
def test_a_bad_weights_file_is_refused_in_one_line(name, tmp_path):
    for path, expected in _bad_files(tmp_path, name):
        with pytest.raises(TransferkitError) as info:
            build_backbone(name, weights=str(path), trust_pickle=True)  # trust: the .npy check must not rest on it
        message = str(info.value)
        assert "\n" not in message, message
        assert re.search(expected, message), (path.name, message)
        assert any(fix in message for fix in FIXES), message


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in WITH_LAYERS])
def test_a_valid_weights_file_is_loaded(name, tmp_path):
    saved = build_backbone(name, pretrained=False, seed=7).state_dict()
    path = tmp_path / f"{name}.safetensors"
    save_state_dict(saved, path)  # a saved Backbone's key names: body.* / classifier.*
    loaded = build_backbone(name, weights=path, seed=0)
    assert loaded.weights_source == f"file:{path.name}" and len(loaded.weights_digest) == 16
    assert loaded.state_dict().keys() == saved.keys()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_the_library_key_names_load_too(tmp_path):
    net = build_network(get_spec("lenet"))
    path = tmp_path / "lenet.pt"
    torch.save(net.state_dict(), path)
    loaded = build_backbone("lenet", weights=path)
    assert torch.equal(loaded.body.features[0].weight, net.features[0].weight)
    assert torch.equal(loaded.classifier.weight, net.classifier[4].weight)


def test_pixels_has_nothing_to_load(tmp_path):
    path = tmp_path / "pixels.safetensors"
    save_state_dict(build_backbone("pixels", pretrained=False).state_dict(), path)
    with pytest.raises(TransferkitError, match=f"^pixels has no learned layers to load weights into: drop --weights {path}$"):
        build_backbone("pixels", weights=path)


def test_weights_with_pretrained_false_is_a_contradiction(tmp_path):
    path = tmp_path / "lenet.safetensors"
    save_state_dict(build_backbone("lenet", pretrained=False).state_dict(), path)
    with pytest.raises(TransferkitError, match=r"^--weights .*lenet.safetensors loads that file and --no-pretrained \(pretrained=False\) asks for random weights: pass one of them$"):
        build_backbone("lenet", pretrained=False, weights=path)


def test_a_safetensors_file_under_another_name_is_read_by_its_content(tmp_path):
    path = tmp_path / "lenet.bin"
    save_state_dict(build_backbone("lenet", pretrained=False, seed=3).state_dict(), path)
    assert build_backbone("lenet", weights=path).weights_source == "file:lenet.bin"


def test_a_file_that_fits_no_network_never_initialises_one(tmp_path, monkeypatch):
    """The refusal comes before the real (seconds-long for VGG) build: only the meta-device one runs."""
    import transferkit.core.backbones as backbones

    built = []
    real = backbones.build_network
    monkeypatch.setattr(backbones, "build_network", lambda spec: built.append(torch.empty(0).device.type) or real(spec))
    path = tmp_path / "zeros.pt"
    path.write_bytes(bytes(64))
    with pytest.raises(TransferkitError):
        build_backbone("vgg19", weights=path)
    assert built == ["meta"]


def test_a_broken_bvlc_npy_is_refused_in_one_line(tmp_path):
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    with pytest.raises(TransferkitError, match=r"empty.npy is not a readable .npy file .*; pass the lab's bvlc-alexnet.npy") as info:
        build_backbone("alexnet_bvlc", weights=empty, trust_pickle=True)
    assert "\n" not in str(info.value) and str(info.value).count(str(empty)) == 1
