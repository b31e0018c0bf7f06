"""A trained run exported to ONNX or TorchScript, checked against PyTorch's own outputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from transferkit.core.errors import TransferkitError
from transferkit.core.runs import load_run

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}


def export_run(run_dir, format: str = "onnx", out: str | Path | None = None, *, atol: float = 1e-3) -> dict:
    """Write the run's network as ``format``; returns the path and the parity check's figures.

    The exported model takes a normalised float batch (N x 3 x S x S, the run's preprocessing)
    and returns class scores; the preprocessing and class names are written beside it.
    """
    if format not in FORMATS:
        raise TransferkitError(f"unknown export format {format!r}: use {' or '.join(FORMATS)}")
    run = load_run(run_dir)
    model = run.model.eval()
    path = Path(out) if out else Path(run_dir) / FORMATS[format]
    if path.is_dir():
        raise TransferkitError(f"--out {path} is a folder: name the file to write, e.g. {path / FORMATS[format]}")
    if not path.parent.is_dir():
        raise TransferkitError(f"the folder of --out {path} does not exist; create it or choose another --out")
    size = run.image_size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    check = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))  # another batch size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if format == "onnx":
            exported = _onnx(model, example, check, path, run.classes)
        else:
            exported = _torchscript(model, example, check, path)
    with torch.inference_mode():
        expected = model(check).numpy()
    difference = float(np.abs(exported - expected).max())
    if difference > atol:
        raise TransferkitError(f"the exported {format} model differs from PyTorch by {difference:.2e} (> {atol}); please report this")
    sidecar = path.with_name(path.name + ".json")
    sidecar.write_text(json.dumps({"classes": run.classes, "preprocessing": run.meta["preprocessing"], "input": "float32 N x 3 x H x W, normalised", "output": "class scores (logits)"}, indent=2))
    return {"path": str(path), "format": format, "max_abs_difference": difference, "classes": len(run.classes)}


def _onnx(model, example, check, path: Path, classes) -> np.ndarray:
    try:
        import onnxruntime
    except ImportError:
        raise TransferkitError("ONNX export needs onnx and onnxruntime: pip install 'transferkit[onnx]'") from None
    from transferkit.core.engines import export_onnx

    export_onnx(model, example, path, input_name="images", output_name="scores")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": check.numpy()})[0]


def _torchscript(model, example, check, path: Path) -> np.ndarray:
    traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    with torch.inference_mode():
        return loaded(check).numpy()
