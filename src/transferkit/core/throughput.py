"""How fast this machine runs each network, measured in seconds and kept per machine; and the
cores a run may use, split between torch's threads and the loader's workers.

The planner (:mod:`transferkit.plan.planner`) prices a recipe from these figures: images per second
of a forward pass (extraction, scoring) and of a training step, per network, input size, batch
size and trained layer groups.  Each figure is measured once on random weights and random
inputs (speed does not depend on the weights) for a couple of seconds, and kept in
``throughput.json`` beside the feature cache, under a key that names the machine: CPU model,
the cores this process may use, torch's version and threads, and the GPU.  A run that times
itself as it goes can :meth:`ThroughputTable.observe` what it saw, so the next plan on a loaded
machine prices with the speed it really gets.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import torch
import torch.nn.functional as F

from transferkit.core.errors import TransferkitError

FILE = "throughput.json"
MEASURE_SECONDS = 2.0  # per figure: enough batches for a stable rate, little of a budget


def cpu_budget() -> int:
    """The cores this process may use: its CPU affinity (a container's or a `taskset`'s share),
    else every core the OS reports."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CoreSplit:
    """How a run shares its cores: ``torch_threads + workers <= cores``."""

    torch_threads: int
    workers: int  # DataLoader worker processes decoding images (0: the main process decodes)


# Decoding and preprocessing one image on one core, over one image through the network on one
# core, where neither was measured.  Kept low on purpose: below it a 2-core CPU decodes in the
# main process and gives both cores to the network; 16 cores get 2 workers.
DEFAULT_DECODE_RATIO = 0.1


def split_cores(cores: int | None = None, *, decode_s: float | None = None, network_s: float | None = None, gpu: bool = False,
                n_batches: int = 2, max_workers: int = 16) -> CoreSplit:  # fmt: skip
    """Split ``cores`` (default :func:`cpu_budget`) between torch threads and loader workers, so
    that their sum never exceeds it: oversubscribed cores make a competing process slow a run
    several-fold (torch's threads wait for each other at every parallel region), not in proportion.

    On a CPU the split minimises the modelled time per image: with ``w`` workers the network runs
    on ``cores - w`` threads while the workers decode in parallel, ``max(network_s / (cores - w),
    decode_s / w)``; with none the main process decodes between batches, ``network_s / cores +
    decode_s``.  ``decode_s`` and ``network_s`` are one image's seconds on one core (their ratio
    is what counts; unmeasured: :data:`DEFAULT_DECODE_RATIO`).  A single batch (``n_batches``
    <= 1) is decoded in the main process.  On a GPU the network does not need the CPU: every
    core but one decodes, up to ``max_workers``.
    """
    cores = max(1, cpu_budget() if cores is None else int(cores))
    if n_batches <= 1 or cores == 1:
        return CoreSplit(cores, 0)
    if gpu:
        workers = min(max_workers, cores - 1)
        return CoreSplit(max(1, cores - workers), workers)
    if decode_s is None or network_s is None or network_s <= 0:
        decode_s, network_s = DEFAULT_DECODE_RATIO, 1.0

    def seconds(w: int) -> float:
        return network_s / cores + decode_s if w == 0 else max(network_s / (cores - w), decode_s / w)

    workers = min(range(min(max_workers, cores - 1) + 1), key=lambda w: (seconds(w), w))
    return CoreSplit(cores - workers, workers)


def machine_key() -> str:
    """What makes a speed figure this machine's: CPU model, usable cores, torch version and threads, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu} | {cpu_budget()} cores | torch {torch.__version__} | {torch.get_num_threads()} threads | {gpu}"


@dataclass(frozen=True)
class Workload:
    """One kind of batch a run processes: ``trained`` layer groups from the output end train
    (0: a forward pass without gradients, as extraction and scoring; "all": the whole network),
    on images, or from ``from_group``'s cached output (``--cache-frozen``: the earlier groups
    never run)."""

    model: str
    image_size: int
    batch_size: int = 32
    trained: int | str = 0
    from_group: int = 0  # 0: from images
    engine: str = "torch"  # a forward pass from images: "onnxruntime" where extraction and scoring use it (engines.resolve_engine)

    @property
    def key(self) -> str:
        source = f"from group{self.from_group}" if self.from_group else "from images"
        work = "forward" if self.trained == 0 else f"train {self.trained} groups"
        return f"{self.model}@{self.image_size} bs{self.batch_size} {work} {source}" + ("" if self.engine == "torch" else f" {self.engine}")


def measure(workload: Workload, *, seconds: float = MEASURE_SECONDS) -> float:
    """Images per second of ``workload`` on this machine's default device, timed for about ``seconds``
    after one warm-up batch, on a random-init network and random inputs."""
    from transferkit.core.backbones import build_backbone

    backbone = build_backbone(workload.model, pretrained=False, num_classes=10)
    spec, size, batch = backbone.spec, workload.image_size, workload.batch_size
    spec.check_image_size(size)
    n_groups = len(spec.layer_groups)
    trained = n_groups if workload.trained == "all" else int(workload.trained)
    if trained and not n_groups:
        raise TransferkitError(f"{workload.model} has no layers to train: measure its forward pass (trained=0)")
    if workload.from_group and not 1 <= workload.from_group <= n_groups - trained:
        raise TransferkitError(f"{workload.model}: from_group must be 1..{n_groups - trained} to train {trained} groups, got {workload.from_group}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    layout = torch.channels_last if spec.channels_last else torch.contiguous_format
    backbone.to(device, memory_format=layout)
    images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=layout)
    labels = torch.randint(0, 10, (batch,), device=device)
    if workload.from_group:
        with torch.inference_mode():
            images = backbone.group_output(images, workload.from_group).clone()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return backbone.forward_from(x, workload.from_group, size) if workload.from_group else backbone(x)

    if workload.engine == "onnxruntime":
        if trained or workload.from_group or device.type != "cpu":
            raise TransferkitError("ONNX Runtime runs forward passes from images on the CPU: measure other workloads with engine='torch'")
        import tempfile
        from pathlib import Path

        from transferkit.core.engines import LayerFeatures, OnnxEngine

        with tempfile.TemporaryDirectory(prefix="transferkit-throughput-") as folder:
            engine = OnnxEngine(LayerFeatures(backbone.to(memory_format=torch.contiguous_format), "penultimate"), size, Path(folder) / "network.onnx")
        images = images.contiguous()

        def step() -> None:
            engine(images)
    elif trained:
        backbone.requires_grad_(False)
        for group in backbone.layer_groups()[n_groups - trained :]:
            for module in group:
                module.requires_grad_(True).train()
        backbone.classifier.requires_grad_(True)
        optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-4)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(forward(images), labels).backward()
            optimizer.step()
    else:
        def step() -> None:
            with torch.inference_mode():
                forward(images)

    step()  # warm-up: allocations, oneDNN's kernel choices
    done, started = 0, time.perf_counter()
    while done < 1 or time.perf_counter() - started < seconds:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        done += 1
    return done * batch / (time.perf_counter() - started)


class ThroughputTable:
    """Measured images/s per :class:`Workload`, kept per machine in ``throughput.json`` beside the
    feature cache (``cache_dir``, else $TRANSFERKIT_CACHE, else the user cache folder)."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, machine: str | None = None, seconds: float = MEASURE_SECONDS):
        from transferkit.core.feature_store import cache_root

        self.path = cache_root(cache_dir).parent / FILE
        self.machine = machine or machine_key()
        self.seconds = seconds

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or damaged: measure again rather than fail a run
            return {}

    def _write(self, key: str, images_per_s: float, how: str) -> None:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            table = self._read()
            table.setdefault(self.machine, {})[key] = {"images_per_s": images_per_s, "how": how,
                                                       "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
            partial = self.path.with_suffix(".json.partial")
            partial.write_text(json.dumps(table, indent=1, sort_keys=True))
            os.replace(partial, self.path)

    def known(self, workload: Workload) -> float | None:
        entry = self._read().get(self.machine, {}).get(workload.key)
        return None if entry is None else float(entry["images_per_s"])

    def rate(self, workload: Workload) -> float:
        """Images/s of ``workload``: the kept figure, else measured now (a few seconds) and kept."""
        known = self.known(workload)
        if known is not None:
            return known
        images_per_s = measure(workload, seconds=self.seconds)
        self._write(workload.key, images_per_s, "benchmark")
        return images_per_s

    def observe(self, workload: Workload, images: int, seconds: float) -> float:
        """Keep the speed a run saw (``images`` in ``seconds``) in place of the benchmark's: the
        next plan prices with what this machine gives now, loaded or not."""
        if images <= 0 or seconds <= 0:
            raise ValueError(f"an observation needs images and seconds above 0, got {images} images in {seconds} s")
        self._write(workload.key, images / seconds, "observed")
        return images / seconds

    def entries(self) -> dict[str, dict]:
        """This machine's figures, by workload key."""
        return dict(self._read().get(self.machine, {}))


__all__ = ["CoreSplit", "ThroughputTable", "Workload", "cpu_budget", "machine_key", "measure", "split_cores"]
