"""Batches of decoded, preprocessed images from DataLoader workers; bad files are reported, not fatal."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text
from torch.utils.data import DataLoader, Dataset

from transferkit.core.errors import ImageError
from transferkit.core.images import load_image, to_rgb
from transferkit.core.throughput import cpu_budget, split_cores

# A path, a PIL image, or a uint8 array (H x W or H x W x 3/4), as the data sources give them.
ImageSource = Union[str, os.PathLike, Image.Image, np.ndarray]


class DecodedImages(Dataset):
    """Item ``i`` is ``(tensor or None, i, error message)``; decoding runs in the worker."""

    def __init__(self, sources: Sequence[ImageSource], transform: Callable):
        self.sources = sources
        self.transform = transform

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int):
        source = self.sources[index]
        try:
            if isinstance(source, np.ndarray):
                source = Image.fromarray(source)
            image = to_rgb(source) if isinstance(source, Image.Image) else load_image(source)
            return self.transform(image), index, ""
        except ImageError as err:
            return None, index, str(err)


@dataclass
class Batch:
    images: torch.Tensor | None  # the good images, stacked
    indices: list[int]  # their positions in the source list
    failures: list[tuple[int, str]]  # (position, reason) of the files that could not be used


def _collate(items) -> Batch:
    good = [(tensor, index) for tensor, index, _ in items if tensor is not None]
    return Batch(
        images=torch.stack([t for t, _ in good]) if good else None,
        indices=[i for _, i in good],
        failures=[(index, error) for tensor, index, error in items if tensor is None],
    )


def share_cores(n_items: int, batch_size: int, *, gpu: bool | None = None, workers: int | None = None) -> int:
    """DataLoader workers for ``n_items`` images (``workers`` if given), with torch's threads set to
    the rest of the cores this process may use, so that threads + workers never exceed them.

    Oversubscribed, a competing process slowed a run several-fold rather than in proportion (torch's
    threads wait for each other at every parallel region): `make demo` took 6x its idle time beside
    one busy process.  On a CPU the split is throughput.split_cores's (2 cores: both threads, images
    decoded in the main process; 16: 14 and 2); a GPU (default: whether there is one) gets every
    core but one for decoding, up to 16, and torch's threads are left alone.
    """
    gpu = torch.cuda.is_available() if gpu is None else gpu
    split = split_cores(n_batches=-(-n_items // max(1, batch_size)), gpu=gpu)
    workers = split.workers if workers is None else workers
    if not gpu:
        torch.set_num_threads(max(1, cpu_budget() - workers))
    return workers


def iterate_batches(
    sources: Sequence[ImageSource],
    transform: Callable,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: bool | str = False,
) -> Iterator[Batch]:
    """Decode and preprocess ``sources`` in order, ``batch_size`` at a time."""
    workers = share_cores(len(sources), batch_size, workers=num_workers)
    loader = DataLoader(
        DecodedImages(sources, transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    with progress_bar(progress, len(sources)) as advance:
        for batch in loader:
            yield batch
            advance(len(batch.indices) + len(batch.failures))


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} img/s" if speed else "- img/s", style="progress.data.speed")


class progress_bar:
    """A rich progress bar on stderr counting images, with images/s; ``False`` shows nothing."""

    def __init__(self, description: bool | str, total: int):
        self.description = "images" if description is True else description
        self.total = total

    def __enter__(self) -> Callable[[int], None]:
        if not self.description:
            self.progress = None
            return lambda n: None
        from rich.console import Console

        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=Console(stderr=True),
        )  # fmt: skip
        self.progress.start()
        task = self.progress.add_task(str(self.description), total=self.total)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def expand_paths(items: Sequence[ImageSource]) -> list[ImageSource]:
    """Folders become their image files (sorted); everything else passes through unchanged."""
    from transferkit.core.images import list_images

    out: list[ImageSource] = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            found = list_images(Path(item))
            out.extend(found or [item])  # an empty folder is reported like any bad file
        else:
            out.append(item)
    return out
