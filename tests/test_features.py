"""The bottleneck-feature cache: hits, layers, resume after SIGKILL, damage detection."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from transferkit import TransferkitError, build_backbone
from transferkit.core.features import extract_features, list_entries, read_entry, remove_entries


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (36, 36, 3), dtype=np.uint8) for _ in range(45)], rng.integers(0, 3, 45)


@pytest.fixture(scope="module")
def resnet():
    return build_backbone("resnet18", pretrained=False, seed=1)


def _extract(images, backbone, cache, **kwargs):
    samples, labels = images
    kwargs = {"image_size": 40, "batch_size": 8, "chunk_batches": 2, "cache_dir": cache, "data_fingerprint": "fp", **kwargs}
    return extract_features(samples, labels, backbone, **kwargs)


def test_features_match_the_backbone_and_second_run_hits(tmp_path, images, resnet):
    first = _extract(images, resnet, tmp_path)
    assert not first.hit and first.features.shape == (45, 512) and first.ok.all()
    transform = resnet.transform(40)
    with torch.inference_mode():
        direct = resnet.forward_features(torch.stack([transform(torch.as_tensor(im).permute(2, 0, 1)) for im in images[0][:5]]))
    np.testing.assert_allclose(first.features[:5], direct.numpy(), rtol=1e-4, atol=1e-4)
    second = _extract(images, resnet, tmp_path)
    assert second.hit and np.array_equal(first.features, second.features)
    assert isinstance(second.features, np.memmap)


def test_everything_that_changes_numbers_changes_the_key(tmp_path, images, resnet):
    _extract(images, resnet, tmp_path)
    stage = _extract(images, resnet, tmp_path, layer="stage2")
    assert stage.features.shape == (45, 128) and not stage.hit
    assert not _extract(images, resnet, tmp_path, image_size=48).hit
    assert not _extract(images, resnet, tmp_path, data_fingerprint="other").hit
    assert not _extract(images, build_backbone("resnet18", pretrained=False, seed=2), tmp_path).hit
    assert not _extract(images, resnet, tmp_path, flip_tta=True).hit
    assert len(list_entries(tmp_path)) == 6


def test_bad_images_are_skipped_and_reported(tmp_path, resnet):
    good = np.full((36, 36, 3), 100, np.uint8)
    missing = tmp_path / "missing.png"
    result = extract_features([good, missing, good], [0, 1, 0], resnet, data_fingerprint="b", image_size=40, cache_dir=tmp_path)
    assert result.ok.tolist() == [True, False, True]
    assert result.failures[0]["index"] == 1 and "no such file" in result.failures[0]["reason"]
    assert not result.features[1].any()
    X, y = result.usable()
    assert X.shape == (2, 512) and y.tolist() == [0, 0]


def test_damaged_entry_is_detected(tmp_path, images, resnet):
    entry = _extract(images, resnet, tmp_path)
    with open(entry.path / "features.npy", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(TransferkitError, match="damaged.*cache remove"):
        _extract(images, resnet, tmp_path)
    remove_entries([entry.path.name[:8]], tmp_path)
    assert not _extract(images, resnet, tmp_path).hit


def test_incomplete_entry_is_never_used(tmp_path, images, resnet):
    entry = _extract(images, resnet, tmp_path)
    (entry.path / "meta.json").unlink()  # as if killed while finalising
    assert read_entry(entry.path) is None
    assert not list_entries(tmp_path)[0]["complete"]
    again = _extract(images, resnet, tmp_path)
    assert not again.hit and np.array_equal(again.features, entry.features)


def test_bad_layer_and_size_are_clear(tmp_path, images, resnet):
    with pytest.raises(TransferkitError, match="stage1..stage4"):
        _extract(images, resnet, tmp_path, layer="stage7")
    with pytest.raises(TransferkitError, match="too small"):
        _extract(images, resnet, tmp_path, image_size=8)


SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from transferkit import build_backbone
    from transferkit.core.features import extract_features
    rng = np.random.default_rng(0)
    samples = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(96)]
    backbone = build_backbone("efficientnet_lite0")
    result = extract_features(samples, np.arange(96) % 4, backbone, data_fingerprint="kill", batch_size=8,
                              chunk_batches=1, num_workers=0, cache_dir=sys.argv[1], engine="torch", progress=True)
    print("hit" if result.hit else "computed")
    """
)


def _run(script, cache):
    return subprocess.Popen([sys.executable, str(script), str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_extraction_killed_part_way_resumes_to_identical_features(tmp_path):
    script = tmp_path / "extract.py"
    script.write_text(SCRIPT)
    reference = _run(script, tmp_path / "reference")
    assert reference.wait(timeout=300) == 0

    killed = tmp_path / "killed"
    process = _run(script, killed)
    deadline = time.time() + 240
    chunks = []
    while time.time() < deadline and len(chunks) < 3 and process.poll() is None:
        chunks = list(killed.glob("features/*/partial/chunk-*.npz"))
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 3 <= len(chunks) < 12, "the run should have been killed part-way"
    assert not list(killed.glob("features/*/meta.json"))

    resumed = _run(script, killed)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and stdout.strip() == "computed"
    assert "resuming after" in stderr  # the cached chunks were reused, not recomputed
    a = read_entry(next((tmp_path / "reference").glob("features/*/")))
    b = read_entry(next(killed.glob("features/*/")))
    assert np.array_equal(a.features, b.features) and np.array_equal(a.labels, b.labels)
    meta = json.loads((b.path / "meta.json").read_text())
    assert meta["count"] == 96 and meta["backbone"] == "efficientnet_lite0"


def test_onnxruntime_engine_matches_pytorch(tmp_path, images, resnet):
    torch_features = _extract(images, resnet, tmp_path, engine="torch")
    ort_features = _extract(images, resnet, tmp_path, engine="onnxruntime")
    assert not ort_features.hit  # a different engine is a different cache entry
    np.testing.assert_allclose(ort_features.features, torch_features.features, atol=1e-3)
    assert list((tmp_path / "engines").glob("resnet18-*-penultimate-40.onnx"))
    stage = _extract(images, resnet, tmp_path, engine="onnxruntime", layer="stage3")
    np.testing.assert_allclose(stage.features, _extract(images, resnet, tmp_path, engine="torch", layer="stage3").features, atol=1e-3)
    flipped = _extract(images, resnet, tmp_path, engine="onnxruntime", flip_tta=True)  # batches of 8 and 5
    np.testing.assert_allclose(flipped.features, _extract(images, resnet, tmp_path, engine="torch", flip_tta=True).features, atol=1e-3)


def test_engines_agree_to_a_thousandth_of_the_outputs_scale():
    from transferkit.core.engines import parity_error

    small = np.array([[0.5, -0.25]], dtype=np.float32)
    assert parity_error(small + 2e-4, small) == pytest.approx(2e-4, rel=1e-3)  # absolute below 1
    assert parity_error(small * 1e6 + 8, small * 1e6) == pytest.approx(8 / 5e5, rel=1e-3)  # relative above
    assert parity_error(small[:, :1], small) == float("inf")


def test_a_stale_onnx_export_is_exported_again(tmp_path, images, resnet):
    from transferkit.core.engines import LayerFeatures, export_onnx

    expected = _extract(images, resnet, tmp_path / "reference", engine="torch").features
    first = _extract(images, resnet, tmp_path, engine="onnxruntime", layer="stage3")
    (stale,) = (tmp_path / "engines").glob("resnet18-*-stage3-40.onnx")
    penultimate = stale.with_name(stale.name.replace("stage3", "penultimate"))
    # The file the penultimate-layer engine will find holds another network (the stage3 layer).
    export_onnx(LayerFeatures(resnet, "stage3"), torch.randn(2, 3, 40, 40), penultimate, input_name="images", output_name="outputs")
    ort_features = _extract(images, resnet, tmp_path, engine="onnxruntime")
    np.testing.assert_allclose(ort_features.features, expected, atol=1e-3)
    assert first.features.shape != expected.shape and penultimate.is_file()
    # The same for the float export an int8 engine is quantised from.
    export_onnx(LayerFeatures(resnet, "stage3"), torch.randn(2, 3, 40, 40), penultimate, input_name="images", output_name="outputs")
    int8 = _extract(images, resnet, tmp_path, quantize="int8")
    assert int8.features.shape == expected.shape and _mean_cosine(int8.features, expected) > 0.9


def test_an_engine_that_disagrees_with_pytorch_is_refused_after_one_fresh_export(tmp_path, images, resnet, monkeypatch):
    import transferkit.core.engines as engines

    _extract(images, resnet, tmp_path, engine="onnxruntime")  # leaves a good export in the cache
    monkeypatch.setattr(engines, "PARITY_ATOL", -1.0)  # nothing agrees now
    with pytest.raises(TransferkitError, match="differ from PyTorch's.*use --engine torch"):
        _extract(images, resnet, tmp_path, engine="onnxruntime", data_fingerprint="not cached")
    assert not list((tmp_path / "engines").glob("*.onnx"))
    monkeypatch.setattr(engines, "INT8_MIN_COSINE", 2.0)
    with pytest.raises(TransferkitError, match="int8 quantisation changes the features"):
        _extract(images, resnet, tmp_path, quantize="int8")


def _mean_cosine(a, b):
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def test_int8_extraction_agrees_with_float32_and_is_keyed_by_its_calibration(tmp_path, images, resnet):
    from transferkit.core.data import LabelledImages
    from transferkit.core.features import cache_key

    float32 = _extract(images, resnet, tmp_path, engine="torch")
    int8 = _extract(images, resnet, tmp_path, quantize="int8")  # auto means ONNX Runtime here, whatever the count
    assert not int8.hit and int8.features.shape == float32.features.shape
    assert not np.allclose(int8.features, float32.features, atol=1e-3)  # really quantised...
    assert _mean_cosine(int8.features, float32.features) > 0.9  # ...and still the same features
    assert len(list((tmp_path / "engines").glob("resnet18-*-penultimate-40-int8-*.onnx"))) == 1
    assert _extract(images, resnet, tmp_path, quantize="int8").hit
    # Calibrated on other images (the training split, for a val split), it is another network and another entry.
    other = LabelledImages(images[0][:20], images[1][:20], ["a", "b", "c"])
    recalibrated = _extract(images, resnet, tmp_path, quantize="int8", calibration=other)
    assert not recalibrated.hit and len(list((tmp_path / "engines").glob("resnet18-*-int8-*.onnx"))) == 2
    assert "quantize" not in cache_key(resnet, "penultimate", 40, "fp")[1]  # float32 entries keep their keys


def test_int8_needs_onnxruntime_and_a_known_precision(tmp_path, images, resnet):
    with pytest.raises(TransferkitError, match="ONNX Runtime"):
        _extract(images, resnet, tmp_path, engine="torch", quantize="int8")
    with pytest.raises(TransferkitError, match="unknown --quantize"):
        _extract(images, resnet, tmp_path, quantize="int4")


def test_unknown_engine(tmp_path, images, resnet):
    with pytest.raises(TransferkitError, match="unknown engine"):
        _extract(images, resnet, tmp_path, engine="tensorrt")


def test_engines_run_on_the_gpu_where_there_is_one_and_onnxruntime_on_the_cpu(tmp_path, resnet, monkeypatch):
    from transferkit.core import engines
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert engines.default_device().type == "cpu"
    assert engines.make_engine("torch", resnet, "penultimate", 40, tmp_path).device.type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert engines.default_device().type == "cuda"
    placed = []
    monkeypatch.setattr(engines.TorchEngine, "__init__", lambda self, model, device=None, *args: placed.append(device))
    engines.make_engine("torch", resnet, "penultimate", 40, tmp_path)
    assert placed[-1].type == "cuda"
    built = []
    monkeypatch.setattr(engines.OnnxEngine, "__init__", lambda self, *args, **kwargs: built.append(args))
    engines.make_engine("onnxruntime", resnet, "penultimate", 40, tmp_path)  # ONNX Runtime's CPU build, even beside a GPU
    assert len(built) == 1
    with pytest.raises(TransferkitError, match="ONNX Runtime on the CPU"):
        engines.make_engine("onnxruntime", resnet, "penultimate", 40, tmp_path, device="cuda", int8=object())


def test_torch_engine_normalises_uint8_images_itself(resnet):
    from transferkit.core.engines import LayerFeatures, TorchEngine

    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    engine = TorchEngine(LayerFeatures(resnet, "penultimate"), "cpu", normalize=resnet.spec.normalize)
    raw, scaled = resnet.transform(40, uint8=True)(image)[None], resnet.transform(40)(image)[None]
    np.testing.assert_allclose(engine(raw), engine(scaled), atol=1e-5)


def test_float32_convolutions_switch_cudnn_from_tf32_and_back():
    from transferkit.core.engines import float32_convolutions

    before = torch.backends.cudnn.allow_tf32
    with float32_convolutions():
        assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cudnn.allow_tf32 == before
    cudnn = torch.backends.cudnn
    if not hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        return  # torch < 2.9: no per-operator flags
    conv, rnn = cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision
    try:  # a user's per-operator flags set apart make the legacy flag unreadable: the conv flag is used
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = "tf32", "ieee"
        with float32_convolutions():
            assert cudnn.conv.fp32_precision == "ieee"
        assert (cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision) == ("tf32", "ieee")
    finally:
        cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision = conv, rnn
    assert torch.backends.cudnn.allow_tf32 == before


def test_a_gpu_engine_gets_uint8_images_and_onnxruntime_is_not_imported_for_it(tmp_path, images, resnet, monkeypatch):
    from transferkit.core import engines
    seen = []

    class GpuEngine:  # what make_engine gives beside a GPU, without needing one
        device = torch.device("cuda")

        def __call__(self, batch):
            seen.append(batch.dtype)
            return np.zeros((len(batch), 4), np.float32)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(engines, "onnxruntime_available", lambda: pytest.fail("ONNX Runtime looked for beside a GPU"))
    assert engines.resolve_engine("auto", 5000) == "torch"
    monkeypatch.setattr(engines, "make_engine", lambda *args, **kwargs: GpuEngine())
    _extract(images, resnet, tmp_path, engine="auto")
    assert seen and set(seen) == {torch.uint8}
