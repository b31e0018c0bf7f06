"""Know your data before you trust a score: damaged files, exact and near duplicates (above all
the copies shared by train and test), likely label errors and class balance.

Every function here is pure: files are only read, never written, moved or deleted.  The entry
point is :func:`check_images`; :func:`summary_lines` turns its report into one line a finding.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

from transferkit.core.errors import ImageError
from transferkit.core.images import is_image_file, load_image

MIN_SIDE = 32  # px: below this a backbone sees mostly upscaling blur
MIN_PER_CLASS = 10  # images of a class below which its validation accuracy is noise
EXAMPLES = 5  # paths kept per finding: enough to look at, short enough to read
EXIF_ORIENTATION = 0x0112
# Cosine similarity of EfficientNet-Lite0's pooled features at or above which two images are
# near copies.  Measured (200 JPEG photos each of devsuite's food101_10 and sun_scenes, 128 px):
# copies resized to 75%, re-encoded at JPEG q75 and q60, cropped to 95% and 90%, and all three
# at once are found with recall 0.95 (0.78 for the combined edit; 0.93 at 0.87, 0.90 at 0.88).
# False positives on the clean photos: 0.0% (food) and 8.2% (sun: mostly alike skies) of the
# images have a distinct image above it.  Images alike as a whole defeat it: 79% of brain MRI
# scans and 88% of steel textures do, and chain into groups of hundreds; see ALIKE.
# Centring the features first was measured too: it lowered copies' cosines more than others'.
NEAR_DUPLICATE_COSINE = 0.86
# Copies come in small groups, merely similar images chain into large ones: the share of images
# in near-duplicate groups of over CHAIN images ("alike") was 0% for food101_10 (0.6% with six
# copies of 200 of its images added), 6% sun_scenes, 64% brain MRI, 82% steel, 100% faces.
# From ALIKE on, the near-duplicate counts say little and the summary says so instead.
CHAIN, ALIKE = 10, 0.2


# --- files ---------------------------------------------------------------------------------


def file_checks(paths: Sequence, *, min_side: int = MIN_SIDE, decode: bool = True, examples: int = EXAMPLES) -> dict:
    """Unreadable files, non-images under image names, small images, pixel modes, EXIF rotation.

    Sizes, modes and orientation come from the headers; ``decode`` also decodes every file
    (with the loader's own :func:`load_image`) to catch truncated or corrupt ones.
    """
    found: dict[str, list] = {"unreadable": [], "not_image": [], "not_image_name": [], "small": [], "rotated": []}
    modes: Counter = Counter()
    mode_examples: dict[str, str] = {}
    for path in map(Path, paths):
        if not is_image_file(path):  # the data loader would skip it (hidden, or no image extension)
            found["not_image_name"].append(str(path))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # damaged metadata; the pixels decide
                with Image.open(path) as image:  # reads the header only
                    size, mode = image.size, image.mode
                    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
        except UnidentifiedImageError:  # a text file, .DS_Store, HTML error page... named .jpg
            empty = path.stat().st_size == 0  # an empty file is a damaged image, not another kind of file
            found["unreadable" if empty else "not_image"].append(f"{path}: empty file (0 bytes)" if empty else str(path))
            continue
        except Exception as err:  # missing, permission denied, a header that breaks the decoder
            found["unreadable"].append(f"{path}: {type(err).__name__}: {err}".splitlines()[0])
            continue
        if decode:
            try:
                load_image(path)
            except ImageError as err:
                found["unreadable"].append(str(err))
                continue
        modes[mode] += 1
        mode_examples.setdefault(mode, str(path))
        if min(size) < min_side:
            found["small"].append(str(path))
        if orientation not in (1, None):  # loaded upright here; other tools may not rotate it
            found["rotated"].append(str(path))
    report = {name: {"count": len(items), "examples": items[:examples]} for name, items in found.items()}
    return {**report, "modes": {"counts": dict(modes.most_common()), "examples": mode_examples}, "files": len(paths), "min_side": min_side}


# --- exact duplicates ----------------------------------------------------------------------


def file_hash(path) -> str | None:
    """SHA-256 of the file's bytes, or None when it cannot be read."""
    try:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def duplicate_groups(paths: Sequence, *, hashes: Sequence[str | None] | None = None) -> np.ndarray:
    """One group id per path; byte-identical files share an id (unreadable files are alone).

    Pass it as ``groups`` to the data loader's splits to keep every copy on one side.
    """
    hashes = [file_hash(p) for p in paths] if hashes is None else hashes
    ids: dict = {}
    return np.array([ids.setdefault(h if h is not None else ("unread", i), len(ids)) for i, h in enumerate(hashes)], dtype=np.int64)


def classify_groups(groups, split, labels, paths, *, examples: int = EXAMPLES) -> dict:
    """Groups of two or more rows (copies), sorted into within one class, conflicting labels
    (one image filed under two classes) and across splits (leakage), with counts per split.

    ``groups``, ``split`` (names), ``labels`` and ``paths`` have one entry per row of all the
    splits concatenated.
    """
    split, labels = np.asarray(split), np.asarray(labels)
    _, group, size = np.unique(np.asarray(groups).reshape(-1), return_inverse=True, return_counts=True)
    n_splits = _distinct_per_group(group, split)
    n_labels = _distinct_per_group(group, labels)
    copied = size[group] > 1
    conflict = copied & (n_labels[group] > 1)
    leak = copied & (n_splits[group] > 1)
    within = copied & ~conflict & ~leak

    def members(mask) -> list[list[str]]:
        chosen = np.unique(group[mask])[:examples]
        return [[str(paths[i]) for i in np.flatnonzero(group == g)] for g in chosen]

    names = list(dict.fromkeys(split.tolist()))
    return {
        "groups": len(np.unique(group[copied])),
        "files": int(copied.sum()),
        "within_class": {"groups": len(np.unique(group[within])), "extra_copies": int(within.sum() - len(np.unique(group[within]))), "examples": members(within)},
        "conflicting_labels": {"groups": len(np.unique(group[conflict])), "files": int(conflict.sum()), "examples": members(conflict)},
        "across_splits": {
            "groups": len(np.unique(group[leak])),
            "files": {s: int((leak & (split == s)).sum()) for s in names},  # files of s with a copy in another split
            "share": {s: round(float((leak & (split == s)).sum() / max(1, (split == s).sum())), 4) for s in names},
            "examples": members(leak),
        },
    }


def _distinct_per_group(group: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many distinct ``values`` each group holds."""
    _, codes = np.unique(values, return_inverse=True)
    pairs = np.unique(np.stack([group, codes.reshape(-1)], axis=1), axis=0)
    return np.bincount(pairs[:, 0], minlength=group.max(initial=-1) + 1)


# --- near duplicates -----------------------------------------------------------------------


def near_duplicate_pairs(embeddings, threshold: float = NEAR_DUPLICATE_COSINE, *, block: int = 1024):
    """``(i, j, cosine)``: every pair ``i < j`` of rows whose cosine similarity is >= ``threshold``.

    Rows are compared ``block`` at a time with the rows after them (the upper triangle), so
    memory is ``block x N`` floats, never ``N x N``.  Zero rows (images that failed) match nothing.
    """
    x = normalize(np.asarray(embeddings, dtype=np.float32))
    found = [[], [], []]
    for start in range(0, len(x), block):
        sims = x[start : start + block] @ x[start:].T
        rows, cols = np.nonzero(sims >= threshold)
        rows, cols = rows[cols > rows], cols[cols > rows]  # each pair once, no self-pairs
        for out, values in zip(found, (rows + start, cols + start, sims[rows, cols])):
            out.append(values)
    i, j, cos = (np.concatenate(v) if v else np.zeros(0) for v in found)
    return i.astype(np.int64), j.astype(np.int64), cos.astype(np.float32)


def pair_groups(n: int, i, j) -> np.ndarray:
    """Connected components of the pairs: one group id per row (chains of near copies join)."""
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


# --- label errors (confident learning) -----------------------------------------------------


def out_of_fold_probabilities(embeddings, labels, *, folds: int = 5, seed: int = 0, C: float = 0.1) -> np.ndarray:
    """N x K probabilities of a logistic-regression probe, each row from the fold that left it out.

    Columns are the classes ``0 .. max(labels)``; a class absent from a training fold gets 0.
    ``C`` = 0.1: with 5% of labels flipped it found as many flips as the best C for 64 pixels
    (digits: 0.1-1) and for 1280 Lite0 features (food101_10, brain MRI: 0.01-0.1), within a few %.
    """
    x, y = np.asarray(embeddings, dtype=np.float32), np.asarray(labels, dtype=np.int64)
    present, y_index = np.unique(y, return_inverse=True)
    folds = max(2, min(folds, np.bincount(y_index).max()))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    with warnings.catch_warnings():  # classes smaller than ``folds`` make sklearn warn; their rows still get probabilities
        warnings.simplefilter("ignore")
        oof = cross_val_predict(probe, x, y_index, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), method="predict_proba")
    probs = np.zeros((len(y), y.max(initial=0) + 1))
    probs[:, present] = oof
    return probs


def confident_joint(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """Confident learning's joint (Northcutt, Jiang & Chuang, 2021, "Confident Learning:
    Estimating Uncertainty in Dataset Labels", JAIR 70, eqs. 1-2): ``(C, likely)``.

    ``t_j``: the mean self-confidence ``p(j | x)`` of the examples labelled ``j``.  An example
    counts in row ``given`` and column ``likely``: the most probable class ``j`` with
    ``p(j | x) >= t_j``; one over no threshold counts nowhere (``likely`` = -1).
    Written here from the paper: the cleanlab package is AGPL-3.0, this project Apache-2.0.
    """
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    self_confidence = probs[np.arange(len(labels)), labels]
    counts = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=self_confidence, minlength=k)
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), np.inf)  # no example: no one passes
    above = probs >= thresholds
    likely = np.where(above.any(axis=1), np.where(above, probs, -1.0).argmax(axis=1), -1)
    joint = np.zeros((k, k), dtype=np.int64)
    counted = likely >= 0
    np.add.at(joint, (labels[counted], likely[counted]), 1)
    return joint, likely


def label_issues(labels, probs, *, rank_by: str = "self_confidence") -> np.ndarray:
    """Indices of likely label errors, the likeliest first: the examples off the confident
    joint's diagonal, ranked by self-confidence ``p(given | x)`` or by the normalised margin
    ``p(given | x) - max_{j != given} p(j | x)`` (lowest first; the paper's two rankings)."""
    labels, probs = np.asarray(labels, dtype=np.int64), np.asarray(probs, dtype=np.float64)
    _, likely = confident_joint(labels, probs)
    flagged = np.flatnonzero((likely >= 0) & (likely != labels))
    given = probs[flagged, labels[flagged]]
    if rank_by == "self_confidence":
        score = given
    elif rank_by == "normalized_margin":
        others = probs[flagged].copy()
        others[np.arange(len(flagged)), labels[flagged]] = -np.inf
        score = given - others.max(axis=1, initial=-np.inf)
    else:
        raise ValueError(f"rank_by must be 'self_confidence' or 'normalized_margin', not {rank_by!r}")
    return flagged[np.argsort(score, kind="stable")]


def confused_pairs(labels, probs, classes: Sequence[str], *, top: int = 3) -> list[dict]:
    """The class pairs the out-of-fold probe mixes up most, both directions counted."""
    k = len(classes)
    matrix = confusion_matrix(labels, np.asarray(probs).argmax(axis=1), labels=range(k))
    both = np.triu(matrix + matrix.T, 1)
    order = np.argsort(both, axis=None, kind="stable")[::-1][:top]
    pairs = []
    for a, b in zip(*np.unravel_index(order, both.shape)):
        if both[a, b]:
            share = both[a, b] / max(1, matrix[a].sum() + matrix[b].sum())
            pairs.append({"classes": [classes[a], classes[b]], "confused": int(both[a, b]), "share": round(float(share), 4)})
    return pairs


# --- balance -------------------------------------------------------------------------------


def class_balance(labels_by_split: dict, classes: Sequence[str], *, val_fraction: float = 0.2, min_per_class: int = MIN_PER_CLASS) -> dict:
    """Images per class and split, the largest/smallest ratio of the training split, and the
    classes too small to validate: fewer than ``min_per_class`` training images, or too few
    to put one in a validation split of ``val_fraction``."""
    counts = {s: np.bincount(np.asarray(y, dtype=np.int64), minlength=len(classes)) for s, y in labels_by_split.items()}
    train = counts.get("train", sum(counts.values()))
    floor = max(min_per_class, math.ceil(1 / val_fraction))
    nonzero = train[train > 0]
    return {
        "counts": {s: dict(zip(classes, map(int, c))) for s, c in counts.items()},
        "ratio": round(float(nonzero.max() / nonzero.min()), 2) if len(nonzero) else None,
        "too_few": {classes[c]: int(train[c]) for c in np.flatnonzero(train < floor)},
        "too_few_floor": floor,
        "missing": {s: [classes[c] for c in np.flatnonzero(n == 0)] for s, n in counts.items() if (n == 0).any()},
    }


# --- the whole check -----------------------------------------------------------------------


def check_images(
    splits: dict[str, tuple[Sequence, Sequence[int]]],
    classes: Sequence[str],
    embeddings: dict[str, np.ndarray] | None = None,
    *,
    min_side: int = MIN_SIDE,
    decode: bool = True,
    near_threshold: float = NEAR_DUPLICATE_COSINE,
    val_fraction: float = 0.2,
    folds: int = 5,
    seed: int = 0,
    examples: int = EXAMPLES,
) -> dict:
    """Check labelled image files: ``splits`` maps a split name to ``(paths, labels)`` (labels:
    indices into ``classes``); ``embeddings``, one N x D array a split in the same order (rows
    of zeros for images that failed), adds near duplicates and likely label errors.

    Returns a JSON-serialisable report; :func:`summary_lines` says it in one line a finding.
    """
    names = list(splits)
    paths = [str(p) for s in names for p in splits[s][0]]
    labels = np.concatenate([np.asarray(splits[s][1], dtype=np.int64).reshape(-1) for s in names])
    split = np.array([s for s in names for _ in splits[s][0]])
    if len(labels) != len(paths):
        raise ValueError("every split needs one label per path")
    exact = duplicate_groups(paths)
    report = {
        "splits": {s: int((split == s).sum()) for s in names},
        "classes": list(classes),
        "files": file_checks(paths, min_side=min_side, decode=decode, examples=examples),
        "exact_duplicates": classify_groups(exact, split, labels, paths, examples=examples),
        "balance": class_balance({s: splits[s][1] for s in names}, classes, val_fraction=val_fraction),
    }
    if embeddings is None:
        return report
    x = np.concatenate([np.asarray(embeddings[s], dtype=np.float32) for s in names])
    if len(x) != len(paths):
        raise ValueError(f"embeddings have {len(x)} rows for {len(paths)} paths")
    i, j, cosine = near_duplicate_pairs(x, near_threshold)
    near = exact[i] != exact[j]  # byte-identical copies are the exact check's
    i, j, cosine = i[near], j[near], cosine[near]
    groups = pair_groups(len(x), i, j)
    across = np.flatnonzero(split[i] != split[j])
    across = across[np.argsort(-cosine[across], kind="stable")][:examples]
    report["near_duplicates"] = {
        "threshold": near_threshold,
        "alike": round(float((np.bincount(groups)[groups] > CHAIN).mean()), 4) if len(x) else 0.0,  # share in groups over CHAIN
        "pairs": len(i),
        **classify_groups(groups, split, labels, paths, examples=examples),
        "closest_across_splits": [{"paths": [paths[i[p]], paths[j[p]]], "cosine": round(float(cosine[p]), 4)} for p in across],
    }
    ok = x.any(axis=1)  # an image that failed to decode has no features to judge its label by
    if len(np.unique(labels[ok])) >= 2:
        probs = out_of_fold_probabilities(x[ok], labels[ok], folds=folds, seed=seed)
        rows = np.flatnonzero(ok)
        issues = label_issues(labels[ok], probs)
        report["label_errors"] = {
            "count": len(issues),
            "by_split": {s: int((split[rows[issues]] == s).sum()) for s in names},
            "probe_accuracy": round(float((probs.argmax(axis=1) == labels[ok]).mean()), 4),
            "examples": [
                {"path": paths[rows[r]], "given": classes[labels[rows[r]]], "likely": classes[int(probs[r].argmax())], "self_confidence": round(float(probs[r, labels[rows[r]]]), 4)}
                for r in issues[:examples]
            ],
            "confused_pairs": confused_pairs(labels[ok], probs, classes),
        }
    return report


def summary_lines(report: dict) -> list[str]:
    """One short line a finding of :func:`check_images`' report; nothing found, one line too."""
    lines = []
    files = report.get("files")
    if files is None:  # images held in memory: no files were read
        return _balance_lines(report["balance"]) or [f"{sum(report['splits'].values())} images held in memory: no files to check; classes balanced"]
    for key, what in (
        ("unreadable", "unreadable: {n} file{s}, e.g. {e}"),
        ("not_image", "not images: {n} file{s} named as images, e.g. {e}"),
        ("not_image_name", "skipped names: {n} file{s} hidden or without an image extension, e.g. {e}"),
        ("small", f"small: {{n}} image{{s}} under {files['min_side']} px on a side, e.g. {{e}}"),
        ("rotated", "EXIF-rotated: {n} image{s} (loaded upright here, maybe not by other tools), e.g. {e}"),
    ):
        if files[key]["count"]:
            n = files[key]["count"]
            lines.append(what.format(n=n, s="" if n == 1 else "s", e=files[key]["examples"][0]))
    modes = files["modes"]["counts"]
    if len(modes) > 1:
        lines.append("mixed image modes: " + ", ".join(f"{m} {n}" for m, n in modes.items()) + " (all converted to RGB; a mode must not tell a class)")
    for kind, name in (("exact_duplicates", "exact duplicates"), ("near_duplicates", "near duplicates")):
        found = report.get(kind)
        if not found:
            continue
        if found.get("alike", 0) >= ALIKE:  # its groups would be chains of merely similar images
            closest = "".join(f"; closest across splits: {' = '.join(c['paths'])} ({c['cosine']})" for c in found["closest_across_splits"][:1])
            lines.append(f"near duplicates not told apart: {100 * found['alike']:.0f}% of images chain into groups of over {CHAIN} at cosine >= "
                         f"{found['threshold']} (images alike as a whole: scans, textures); rerun with --near-threshold 0.97-0.98{closest}")  # fmt: skip
            continue
        leak = found["across_splits"]
        for s, n in leak["files"].items():
            if n and s != "train":
                lines.append(f"{name}: {_count(n, 'file')} in {s} with a copy in another split ({100 * leak['share'][s]:.1f}% of {s}): accuracy on them measures memory")
        if found["conflicting_labels"]["files"]:
            c = found["conflicting_labels"]
            lines.append(f"label conflict ({name}): {_count(c['files'], 'file')} filed under two or more classes, e.g. {' = '.join(c['examples'][0][:2])}")
        if found["within_class"]["extra_copies"]:
            lines.append(f"{name} within a class: {_count(found['within_class']['extra_copies'], 'extra copy', 'extra copies')} (each weighs double in training)")
    errors = report.get("label_errors")
    if errors and errors["count"]:
        top = errors["examples"][0]
        share = errors["count"] / max(1, sum(report["splits"].values()))
        lines.append(f"likely label errors: {errors['count']} ({100 * share:.1f}%; top: {top['path']} filed as {top['given']}, looks like {top['likely']})")
    if errors and errors["confused_pairs"]:
        pair = errors["confused_pairs"][0]
        lines.append(f"most confused: {' / '.join(pair['classes'])}, {pair['confused']} images ({100 * pair['share']:.1f}%) by a linear probe")
    lines += _balance_lines(report["balance"])
    return lines or [f"no problem found in {files['files']} files"]


def _balance_lines(balance: dict) -> list[str]:
    lines = []
    if balance["ratio"] and balance["ratio"] >= 2:
        lines.append(f"class imbalance: largest / smallest class = {balance['ratio']:.1f}")
    if balance["too_few"]:
        few = ", ".join(f"{c} {n}" for c, n in balance["too_few"].items())
        lines.append(f"too few to validate (under {balance['too_few_floor']}): {few}")
    for s, missing in balance["missing"].items():
        lines.append(f"no {s} images of: {', '.join(missing)}")
    return lines


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def check_dataset(dataset, backbone=None, *, image_size: int | None = None, cache_dir=None, progress: bool = True, **options) -> dict:
    """:func:`check_images` of a loaded :class:`~transferkit.core.data.ImageDataset`; with a
    ``backbone``, its pooled features (from the feature cache, extracted once) are the embeddings.
    ``options`` go to :func:`check_images`."""
    if not all(isinstance(s, (str, os.PathLike)) for part in dataset.splits.values() for s in part.samples):
        # decoded arrays (digits, CIFAR's batches): no files to read, only the classes to count
        labels = {name: part.labels for name, part in dataset.splits.items()}
        balance = class_balance(labels, dataset.classes, val_fraction=options.get("val_fraction", 0.2))
        return {"data": dataset.name, "files_checked": False, "splits": {n: len(v) for n, v in labels.items()}, "classes": list(dataset.classes), "balance": balance}
    embeddings = None
    if backbone is not None:
        from transferkit.core.features import extract_features  # torch, only when embeddings are wanted

        embeddings = {
            name: np.asarray(extract_features(part.samples, part.labels, backbone, data_fingerprint=part.fingerprint(), image_size=image_size,
                                              cache_dir=cache_dir, progress=f"check {name}" if progress else False).features)
            for name, part in dataset.splits.items()
        }  # fmt: skip
    splits = {name: (part.samples, part.labels) for name, part in dataset.splits.items()}
    return {"data": dataset.name, **check_images(splits, dataset.classes, embeddings, **options)}


def metrics_without_copies(dataset, check: dict, scored: tuple, classes: list[str]) -> dict | None:
    """The metrics of the test images (``scored``: their samples, labels, probabilities) that have
    no byte-identical copy in train or val, where the check found such copies: the trainer's
    ``metrics["test_clean"]``, and the rebuilt report's."""
    from transferkit.core.report import classification_metrics

    leak = ((check.get("exact_duplicates") or {}).get("across_splits") or {}).get("files") or {}
    parts = [dataset.splits.get(s) for s in ("train", "val", "test")]
    if not leak.get("test") or any(part is None for part in parts) or not len(parts[2]):
        return None
    paths = [str(sample) for part in parts for sample in part.samples]
    groups = duplicate_groups(paths)
    n_test = len(parts[2])
    elsewhere = set(groups[:-n_test].tolist())
    shared = {paths[-n_test + i] for i, g in enumerate(groups[-n_test:]) if g in elsewhere}
    samples, labels, probs = scored
    clean = np.array([str(sample) not in shared for sample in samples], dtype=bool)
    if not len(clean):
        return None
    labels, predicted = np.asarray(labels)[clean], np.asarray(probs).argmax(1)[clean]
    return {**classification_metrics(labels, predicted, classes), "images_with_copies": int((~clean).sum())}
