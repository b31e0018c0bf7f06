"""A trained run measured on labelled data."""

from __future__ import annotations

import numpy as np

from transferkit.core.errors import TransferkitError
from transferkit.core.report import classification_metrics
from transferkit.core.runs import Run, load_run


def evaluate_run(run_dir, data, *, split: str | None = None, trust_pickle: bool = False, batch_size: int = 32,
                 allow_outside_root: bool = False, engine: str = "auto", progress: bool | str = "evaluate",
                 return_scored: bool = False) -> dict:  # fmt: skip
    """Accuracy, per-class precision/recall and confusion matrix of ``run_dir`` on ``data``.

    ``allow_outside_root``: a CSV ``data`` may name images outside its own folder.
    ``progress``: the progress bar's label, or False for none.  ``return_scored``: also return
    ``"scored"``, the (samples, labels, probabilities) of the images read, for report.html.
    """
    from transferkit.core.data import ImageDataset, load_data

    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    dataset = data if isinstance(data, ImageDataset) else load_data(str(data), trust_pickle=trust_pickle, allow_outside_root=allow_outside_root)
    if not isinstance(dataset, ImageDataset):
        raise TransferkitError(f"{data} holds features, not images; a run evaluates images")
    split = split or ("test" if dataset.splits.get("test") is not None else "all")
    if split == "all":
        parts = [s for s in dataset.splits.values() if s is not None]
    elif dataset.splits.get(split) is not None:
        parts = [dataset.splits[split]]
    else:
        raise TransferkitError(f"{dataset.name} has no {split!r} split: choose from {', '.join(dataset.splits)} or all")
    unknown = sorted(set(dataset.classes) - set(run.classes))
    if unknown:
        raise TransferkitError(f"{dataset.name} has classes the run was not trained on: {', '.join(unknown[:5])}")
    to_run = np.array([run.classes.index(name) for name in dataset.classes])
    samples = [s for part in parts for s in part.samples]
    labels = to_run[np.concatenate([part.labels for part in parts])]
    probs, ok, failures = run.scores(samples, batch_size=batch_size, progress=progress, engine=engine)
    metrics = classification_metrics(labels[ok], probs[ok].argmax(1), run.classes)
    result = {"split": split, **metrics, "skipped": len(failures)}
    if return_scored:
        kept = np.flatnonzero(ok)
        result["scored"] = ([samples[i] for i in kept], labels[kept], probs[kept])
    return result
