"""The DATA argument: one string resolves to labelled images with train/val(/test) splits.

Accepted forms: an image folder (``ROOT/<class>/*`` or ``ROOT/{train,val,test}/<class>/*``),
a ``path,label[,split]`` CSV, ``cifar10[:ROOT]``, ``gtsrb[:ROOT]``, a lab pickle (``file.p``,
only with trust_pickle) and ``digits``.  Images are only listed here, never decoded: a bad
file is reported later by the loader.  Every problem with the input is one TransferkitError.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from transferkit.core.check import duplicate_groups
from transferkit.core.errors import TransferkitError
from transferkit.core.images import is_image_file
from transferkit.core.loader import ImageSource

FORMS = "an image folder, file.csv, cifar10[:ROOT], gtsrb[:ROOT], file.p with --trust-pickle, or digits"
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class LabelledImages:
    samples: Sequence[ImageSource]  # pathlib.Paths, or uint8 arrays (one stacked ndarray or a list)
    labels: np.ndarray  # int64 indices into classes
    classes: list[str]
    groups: np.ndarray | None = None  # samples of one group (e.g. a GTSRB track) never straddle a split
    root: Path | None = None  # fingerprints use paths relative to it, so a moved dataset keeps them

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> LabelledImages:
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64).reshape(-1)
        samples = self.samples[idx] if isinstance(self.samples, np.ndarray) else [self.samples[i] for i in idx]
        groups = None if self.groups is None else self.groups[idx]
        return LabelledImages(samples, self.labels[idx], list(self.classes), groups, self.root)

    def per_class(self, n: int, seed: int = 0) -> LabelledImages:
        """``n`` random samples of each class (all if fewer), in their original order."""
        rng = np.random.default_rng(seed)
        chosen = []
        for c in range(len(self.classes)):
            members = np.flatnonzero(self.labels == c)
            chosen.append(members if len(members) <= n else rng.choice(members, n, replace=False))
        return self.subset(np.sort(np.concatenate(chosen)) if chosen else [])

    def fingerprint(self) -> str:
        """Identifies the data (files by relative path, size and mtime; arrays by content)."""
        h = hashlib.sha256(json.dumps(self.classes).encode())
        h.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        for sample in self.samples:  # a stacked array and a list of its rows print the same
            if isinstance(sample, (str, os.PathLike)):
                name = Path(os.path.relpath(sample, self.root) if self.root else sample).as_posix()
                try:
                    stat = os.stat(sample)
                    size, mtime = stat.st_size, stat.st_mtime_ns
                except OSError:  # a missing file is the loader's to report; it still changes the print
                    size = mtime = -1
                h.update(f"{name}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))  # names need not be UTF-8
            else:
                array = np.ascontiguousarray(np.asarray(sample))
                h.update(repr((array.shape, array.dtype.str)).encode() + array.tobytes())
        return h.hexdigest()[:16]

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(k) for name, k in zip(self.classes, counts)}


@dataclass
class ImageDataset:
    """DATA resolved: its labelled images by split, and the class names (the DataLoader reads them
    through finetune.DecodedLabelledImages or loader.DecodedImages, the torch datasets)."""

    name: str
    splits: dict[str, LabelledImages]  # "train" and "val" always, "test" where the source has one
    classes: list[str]

    @property
    def train(self) -> LabelledImages:
        return self.splits["train"]

    @property
    def val(self) -> LabelledImages:
        return self.splits["val"]

    @property
    def test(self) -> LabelledImages | None:
        return self.splits.get("test")


@dataclass
class BottleneckFeatures:
    """Precomputed features (the teaching lab's pickles): heads train on them, no backbone needed."""

    name: str
    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (N x D float32 features, N int64 labels)
    classes: list[str]


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """Which source ``spec`` names, and its argument (a path, or a root for the named datasets)."""
    text = str(spec).strip()
    name, _, arg = text.partition(":")
    if name.lower() in ("cifar10", "gtsrb"):
        return name.lower(), arg or None
    if text.lower() == "digits":
        return "digits", None
    suffix = Path(text).suffix.lower()
    if suffix == ".csv":
        return "csv", text
    if suffix in (".p", ".pickle"):
        return ("bottleneck" if "bottleneck" in Path(text).name.lower() else "pickle"), text
    if text and (os.path.isdir(text) or (not os.path.exists(text) and ("/" in text or os.sep in text or text[0] in ".~"))):
        return "folder", text  # a path that does not exist is reported as missing when loaded
    what = "a file of another kind" if text and os.path.exists(text) else "not a known form"
    raise TransferkitError(f"DATA {text!r} is {what}: expected {FORMS}")


def load_data(spec: str, *, trust_pickle: bool = False, val_fraction: float = 0.2, seed: int = 0,
              data_root: str | None = None, allow_outside_root: bool = False) -> ImageDataset | BottleneckFeatures:  # fmt: skip
    """Resolve DATA into an ImageDataset (or BottleneckFeatures for a bottleneck pickle)."""
    kind, arg = parse_data_spec(spec)
    try:
        if kind in ("cifar10", "gtsrb"):
            root = _expand(arg or data_root or os.environ.get("TRANSFERKIT_DATA") or _default_root())
            return (_cifar10 if kind == "cifar10" else _gtsrb)(root, val_fraction, seed)
        if kind == "digits":
            return _digits(val_fraction, seed)
        path = _expand(arg).absolute()
        if not path.exists():
            raise TransferkitError(f"{path} does not exist; check the path")
        if kind == "folder":
            return _folder(path, val_fraction, seed)
        if path.is_dir():
            raise TransferkitError(f"{path} is a folder, not a {'CSV' if kind == 'csv' else 'pickle'} file: expected {FORMS}")
        if kind == "csv":
            return _csv(path, val_fraction, seed, allow_outside_root)
        return _pickle(path, trust_pickle, val_fraction, seed)
    except PermissionError as err:
        raise TransferkitError(f"{err.filename or spec}: permission denied; make it readable and try again") from None
    except OSError as err:
        raise TransferkitError(f"{err.filename or spec}: cannot be read ({err.strerror or err})") from None


def _expand(path: str) -> Path:
    """``path`` with ``~`` / ``~user`` expanded; an unknown user is a TransferkitError."""
    try:
        return Path(path).expanduser()
    except (RuntimeError, ValueError):  # pathlib: "Could not determine home directory"; pwd: "embedded null byte"
        raise TransferkitError(f"{path}: cannot expand {path.split('/')[0]!r} (no such user, or no home directory)") from None


def split_train_val(images: LabelledImages, val_fraction: float, seed: int) -> tuple[LabelledImages, LabelledImages]:
    """A stratified (group-aware when there are groups) train/val split, deterministic in ``seed``."""
    train, val = _split_indices(images.labels, images.groups, val_fraction, seed)
    return images.subset(train), images.subset(val)


def _split_indices(labels: np.ndarray, groups: np.ndarray | None, val_fraction: float, seed: int):
    if not 0 < val_fraction < 1:
        raise TransferkitError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    keys = np.arange(len(labels)) if groups is None else np.asarray(groups)
    # A class in a single sample (or group) cannot be on both sides: it stays in train.
    lone = [c for c in np.unique(labels) if len(np.unique(keys[labels == c])) < 2]
    free = np.flatnonzero(~np.isin(keys, keys[np.isin(labels, lone)]))
    val = np.zeros(len(labels), dtype=bool)
    if len(free):
        val[free[_holdout(labels[free], None if groups is None else keys[free], val_fraction, seed)]] = True
    for c in np.unique(labels):  # the splitters balance folds, they do not promise train every class
        if not np.any(~val & (labels == c)):
            val[keys == keys[val & (labels == c)][0]] = False
    if not val.any():
        raise TransferkitError(f"too few images to hold out a validation split ({len(labels)} images); add images or give a val split")
    return np.flatnonzero(~val), np.flatnonzero(val)


def _holdout(labels: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedShuffleSplit

    if groups is not None:
        # Whole groups go to one side: the groups are split, each labelled by its first image, and
        # their images follow (StratifiedGroupKFold took 25 s for 50,000 groups; this, milliseconds).
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        return np.flatnonzero(np.isin(inverse, _holdout(labels[first], None, fraction, seed)))
    x = np.zeros((len(labels), 1))
    with warnings.catch_warnings():  # "least populated class has fewer members than n_splits"
        warnings.simplefilter("ignore", UserWarning)
        try:
            return next(StratifiedShuffleSplit(1, test_size=fraction, random_state=seed).split(x, labels))[1]
        except ValueError:  # fewer val places than classes (tiny data): one sample of each class
            rng = np.random.default_rng(seed)
            return np.array([rng.choice(np.flatnonzero(labels == c)) for c in np.unique(labels)])


def _dataset(name: str, splits: dict[str, LabelledImages | None], val_fraction: float, seed: int) -> ImageDataset:
    if splits.get("val") is None:
        train = splits["train"]
        if train.groups is None and all(isinstance(s, (str, os.PathLike)) for s in train.samples):
            # Byte-identical copies stay on one side of the split: a copy in val would score memory.
            copies = duplicate_groups(train.samples)
            train.groups = copies if len(np.unique(copies)) < len(copies) else None
        splits["train"], splits["val"] = split_train_val(train, val_fraction, seed)
    order = ("train", "val", "test")
    return ImageDataset(name, {k: splits[k] for k in order if splits.get(k) is not None}, splits["train"].classes)


def _need_two(classes: list[str], where: object, what: str) -> None:
    if len(classes) < 2:
        found = f"{len(classes)} class" + (f" ({classes[0]})" if classes else "es")
        raise TransferkitError(f"found {found} in {where}: need at least 2 {what}")


def _index(values: Sequence[str], classes: list[str], where: str) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(values) - set(lookup))
    if unknown:
        raise TransferkitError(f"{where} has classes the train split does not have: {', '.join(unknown[:5])}; train classes: {', '.join(classes[:10])}")
    return np.array([lookup[v] for v in values], dtype=np.int64)


def _default_root() -> str:
    import platformdirs

    return str(Path(platformdirs.user_data_dir("transferkit")) / "datasets")


# --- image folders -------------------------------------------------------------------------


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, hidden ones skipped), sorted."""
    found = []
    for top, dirs, files in os.walk(folder, onerror=_raise):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top, f) for f in files if is_image_file(Path(f))]
    return sorted(found)


def _raise(err: OSError) -> None:
    raise err


def _class_folders(folder: Path, root: Path, classes: list[str] | None = None) -> LabelledImages:
    names, paths = [], []
    for class_dir in _visible_dirs(folder):
        images = _images_in(class_dir)
        if not images:
            raise TransferkitError(f"class folder {class_dir} has no image files; add images or remove it")
        names += [class_dir.name] * len(images)
        paths += images
    if classes is None:
        classes = sorted(set(names))
        _need_two(classes, folder, "class folders")
    return LabelledImages(paths, _index(names, classes, str(folder)), classes, root=root)


def _folder(root: Path, val_fraction: float, seed: int) -> ImageDataset:
    if not root.is_dir():
        raise TransferkitError(f"{root} is not a folder: expected {FORMS}")
    layout = {}
    for d in _visible_dirs(root):
        layout.setdefault(SPLIT_NAMES.get(d.name.lower()), d)
    if "train" not in layout:
        return _dataset(root.name, {"train": _class_folders(root, root)}, val_fraction, seed)
    train = _class_folders(layout["train"], root)
    splits = {k: _class_folders(layout[k], root, train.classes) if k in layout else None for k in ("val", "test")}
    return _dataset(root.name, {"train": train, **splits}, val_fraction, seed)


# --- CSV -----------------------------------------------------------------------------------


def _read_rows(path: Path, delimiter: str = ",") -> list[tuple[int, dict[str, str]]]:
    """(line number, row with lower-cased, stripped keys) for every data row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter, skipinitialspace=True)
            # Cells beyond the header (key None) are ignored; missing cells read as empty.
            return [(reader.line_num, {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}) for row in reader]
    except (UnicodeDecodeError, csv.Error) as err:
        raise TransferkitError(f"{path} is not a readable UTF-8 CSV file ({err})") from None


def _pick(columns: set[str], names: tuple[str, ...], path: Path) -> str:
    for name in names:
        if name in columns:
            return name
    raise TransferkitError(f"{path} has no {names[0]} column (columns: {', '.join(sorted(columns)) or 'none'}); "
                           f"expected a header with {' or '.join(names)}")  # fmt: skip


def _row_file(path: Path, line: int, value: str, base: Path, allow_outside: bool) -> Path:
    norm = os.path.normpath(value)
    if not allow_outside and (os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep)):
        raise TransferkitError(f"{path}, line {line}: {value} is outside {base}; pass --allow-outside-root "
                               "(allow_outside_root=True) if that is intended")  # fmt: skip
    return base / value


def _csv(path: Path, val_fraction: float, seed: int, allow_outside: bool) -> ImageDataset:
    rows = _read_rows(path)
    columns = set(rows[0][1]) if rows else set()
    if not rows:
        raise TransferkitError(f"{path} has no data rows: expected a header (path,label[,split]) and one row per image")
    file_col = _pick(columns, ("path", "filename", "file", "image"), path)
    label_col = _pick(columns, ("label", "class", "target"), path)
    base, splits, missing = path.parent, {}, []
    for line, row in rows:
        if not row[file_col] or not row[label_col]:
            raise TransferkitError(f"{path}, line {line}: empty {file_col if not row[file_col] else label_col}; every row needs both")
        split = SPLIT_NAMES.get(row.get("split", "train").lower())
        if split is None:
            raise TransferkitError(f"{path}, line {line}: split {row['split']!r} is not train, val or test")
        file = _row_file(path, line, row[file_col], base, allow_outside)
        if not file.is_file():
            missing.append((line, file))
        splits.setdefault(split, []).append((file, row[label_col]))
    if missing:
        line, file = missing[0]
        raise TransferkitError(f"{path}, line {line}: image {file} not found ({len(missing)} of {len(rows)} rows name missing files)")
    if "train" not in splits:
        raise TransferkitError(f"{path} has no train rows; set split to train for the images to train on")
    classes = sorted({label for _, label in splits["train"]})
    _need_two(classes, path, "labels")
    out = {k: LabelledImages([f for f, _ in v], _index([lab for _, lab in v], classes, f"{path} ({k} rows)"), classes, root=base)
           for k, v in splits.items()}  # fmt: skip
    return _dataset(path.stem, out, val_fraction, seed)


# --- named datasets ------------------------------------------------------------------------


def _digits(val_fraction: float, seed: int) -> ImageDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    all_ = LabelledImages(images, digits.target.astype(np.int64), [str(d) for d in range(10)])
    # A fixed test split (whatever the seed) so test accuracies are comparable between runs.
    rest, test = train_test_split(np.arange(len(images)), test_size=0.25, stratify=digits.target, random_state=0)
    return _dataset("digits", {"train": all_.subset(np.sort(rest)), "test": all_.subset(np.sort(test))}, val_fraction, seed)


def _cifar10(root: Path, val_fraction: float, seed: int) -> ImageDataset:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    from transferkit.core.weights import offline

    folder = root / CIFAR10.base_folder
    expected = CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]

    def broken() -> list[Path]:  # the batches are pickles: only files with the official md5 get unpickled
        return [folder / name for name, md5 in expected if not check_integrity(str(folder / name), md5)]

    bad = broken()
    if bad and not offline():
        try:
            CIFAR10(str(root), download=True)
        except Exception as err:  # network and archive errors come in many types
            raise TransferkitError(f"could not download CIFAR-10 into {root} ({err}); extract cifar-10-python.tar.gz there instead") from None
        bad = broken()
    if bad:
        missing, corrupt = [str(p) for p in bad if not p.exists()], [str(p) for p in bad if p.exists()]
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"failing the md5 check (corrupt or not the official files): {', '.join(corrupt)}"] if corrupt else [])
        hint = "offline, so nothing was downloaded: extract cifar-10-python.tar.gz there or go online" if offline() else "delete them and try again"
        raise TransferkitError(f"CIFAR-10 is not usable in {root}: {'; '.join(problems)}; {hint}")
    train, test = CIFAR10(str(root), train=True), CIFAR10(str(root), train=False)
    classes = list(train.classes)
    as_images = lambda ds: LabelledImages(ds.data, np.asarray(ds.targets, dtype=np.int64), classes)  # noqa: E731
    return _dataset("cifar10", {"train": as_images(train), "test": as_images(test)}, val_fraction, seed)


def _gtsrb(root: Path, val_fraction: float, seed: int) -> ImageDataset:
    from transferkit.core.weights import offline

    # (training class folders, test images, candidate test label files) of the layouts with ppm trees
    official = (root / "GTSRB/Final_Training/Images", root / "GTSRB/Final_Test/Images",
                [root / "GT-final_test.csv", root / "GTSRB/Final_Test/Images/GT-final_test.csv", root / "GTSRB/GT-final_test.csv"])  # fmt: skip
    torchvision_layout = (root / "gtsrb/GTSRB/Training", root / "gtsrb/GTSRB/Final_Test/Images", [root / "gtsrb/GT-final_test.csv"])
    if official[0].is_dir():
        train, test = _gtsrb_tree(*official)
    elif (root / "Train.csv").is_file() or (root / "Train").is_dir():
        train = _gtsrb_rows(root / "Train.csv", ",", "path", root) if (root / "Train.csv").is_file() else _gtsrb_classes(root / "Train")
        test = _gtsrb_rows(root / "Test.csv", ",", "path", root) if (root / "Test.csv").is_file() else None
    else:
        if not torchvision_layout[0].is_dir():
            looked = (f"no GTSRB data in {root}: looked for the official layout ({official[0]}/000NN/*.ppm), the Kaggle layout "
                      f"({root}/Train.csv with {root}/Train/<id>/*.png) and torchvision's ({torchvision_layout[0]}/000NN/*.ppm)")  # fmt: skip
            if offline():
                raise TransferkitError(f"{looked}; offline, so nothing was downloaded: unpack one of them there or go online")
            try:
                from torchvision.datasets import GTSRB

                for split in ("train", "test"):
                    GTSRB(str(root), split=split, download=True)
            except Exception as err:  # network and archive errors come in many types
                raise TransferkitError(f"{looked}; downloading it with torchvision failed ({err})") from None
        train, test = _gtsrb_tree(*torchvision_layout)
    # Frames of one track are near-duplicates: the track ("class/track" from the file name) is the group.
    tracks = [f"{c}/{p.stem.split('_')[-2] if '_' in p.stem else p.stem}" for p, c in train]
    images = _gtsrb_images(train, root, None)
    images.groups = np.unique(tracks, return_inverse=True)[1].astype(np.int64)
    splits = {"train": images, "test": _gtsrb_images(test, root, images.classes) if test else None}
    return _dataset("gtsrb", splits, val_fraction, seed)


def _gtsrb_images(items: list[tuple[Path, int]], root: Path, classes: list[str] | None) -> LabelledImages:
    ids = [str(c) for _, c in items]
    if classes is None:
        classes = sorted(set(ids), key=int)
        _need_two(classes, root, "GTSRB classes")
    return LabelledImages([p for p, _ in items], _index(ids, classes, f"GTSRB test split in {root}"), classes, root=root)


def _gtsrb_classes(folder: Path) -> list[tuple[Path, int]]:
    """(image, class id) from numbered class folders (``00020`` or ``20``)."""
    items = []
    for class_dir in (d for d in _visible_dirs(folder) if d.name.isdigit()):
        images = _images_in(class_dir)
        if not images:
            raise TransferkitError(f"class folder {class_dir} has no image files; add images or remove it")
        items += [(p, int(class_dir.name)) for p in images]
    return items


def _gtsrb_tree(train_dir: Path, test_dir: Path, label_files: list[Path]):
    labels = next((f for f in label_files if f.is_file()), None)
    if test_dir.is_dir() and labels is None:
        warnings.warn(f"GTSRB test images in {test_dir} but no GT-final_test.csv with their labels: no test split", stacklevel=3)
    test = _gtsrb_rows(labels, ";", "filename", test_dir) if labels and test_dir.is_dir() else None
    return _gtsrb_classes(train_dir), test


def _gtsrb_rows(path: Path, delimiter: str, file_col: str, base: Path) -> list[tuple[Path, int]]:
    items = []
    for line, row in _read_rows(path, delimiter):
        try:
            file, class_id = _row_file(path, line, row[file_col], base, False), int(row["classid"])
        except (KeyError, ValueError):
            raise TransferkitError(f"{path}, line {line}: expected a {file_col} and an integer ClassId column") from None
        if not file.is_file():
            raise TransferkitError(f"{path}, line {line}: image {file} not found")
        items.append((file, class_id))
    return items


# --- the lab's pickles ---------------------------------------------------------------------


def _pickle(path: Path, trust: bool, val_fraction: float, seed: int) -> ImageDataset | BottleneckFeatures:
    if not trust:
        raise TransferkitError(f"{path} is a pickle, and unpickling can run arbitrary code; pass --trust-pickle if you trust this file")
    files = {"train": path}
    match = re.fullmatch(r"(.*[_-])?train", path.stem, re.IGNORECASE)
    if match:  # X_train.p -> X_valid.p / X_val.p / X_validation.p and X_test.p
        prefix = match.group(1) or ""
        # The lab names a subsampled train file {net}_{data}_100_bottleneck_features_train.p, its
        # validation file without the _100: try the prefix without a _<number> part as well.
        prefixes = dict.fromkeys([prefix, re.sub(r"_\d+(?=_)", "", prefix)])
        for split, names in (("val", ("valid", "val", "validation")), ("test", ("test",))):
            found = [path.with_name(f"{p}{n}{path.suffix}") for p in prefixes for n in names]
            hit = next((f for f in found if f.is_file()), None)
            if hit:
                files[split] = hit
    arrays = {split: _unpickle(f) for split, f in files.items()}
    name = (prefix.strip("_-") if match else path.stem) or path.parent.name
    classes = [str(v) for v in np.unique(arrays["train"][1])]
    _need_two(classes, path, "labels")
    labels = {k: _index([str(v) for v in y], classes, str(files[k])) for k, (_, y) in arrays.items()}
    bottleneck = {k: x.ndim == 2 or (x.ndim == 4 and x.shape[1:3] == (1, 1)) for k, (x, _) in arrays.items()}
    if len(set(bottleneck.values())) > 1:
        raise TransferkitError(f"{path} and its sibling split files mix images and bottleneck features; use files of one kind")
    if bottleneck["train"]:
        feats = {k: x.reshape(len(x), -1).astype(np.float32) for k, (x, _) in arrays.items()}
        if "val" not in feats:
            train, val = _split_indices(labels["train"], None, val_fraction, seed)
            feats["val"], labels["val"] = feats["train"][val], labels["train"][val]
            feats["train"], labels["train"] = feats["train"][train], labels["train"][train]
        splits = {k: (feats[k], labels[k]) for k in ("train", "val", "test") if k in feats}
        return BottleneckFeatures(name, splits, classes)
    images = {k: LabelledImages(_as_images(x, files[k]), labels[k], classes) for k, (x, _) in arrays.items()}
    return _dataset(name, images, val_fraction, seed)


def _unpickle(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")  # latin1: the lab's files may come from Python 2
        if not isinstance(obj, dict) or "features" not in obj or "labels" not in obj:
            raise TransferkitError(f"{path} is not a lab pickle: expected a dict with 'features' and 'labels'")
        features, labels = np.asarray(obj["features"]), np.asarray(obj["labels"]).reshape(-1)
    except (TransferkitError, OSError):
        raise
    except Exception as err:  # a damaged or foreign pickle can raise almost anything
        raise TransferkitError(f"{path} could not be unpickled ({type(err).__name__}: {err})") from None
    if features.ndim < 2 or features.dtype.kind not in "biuf" or len(features) != len(labels) or len(labels) == 0:
        raise TransferkitError(f"{path} has features of shape {features.shape} ({features.dtype}) and {len(labels)} labels: "
                               "expected N numeric feature rows or images and N labels")  # fmt: skip
    if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):  # 3.0 is class 3
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "biuU":
        raise TransferkitError(f"{path} has {labels.dtype} labels: expected integers or strings")
    return features, labels


def _as_images(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise TransferkitError(f"{path}: features are {x.dtype} of shape {x.shape}; expected uint8 images N x H x W x 3 "
                               "(or N x D bottleneck features)")  # fmt: skip
    return x
