"""The data check (transferkit.core.check): planted problems must be found, clean data left alone."""

import hashlib
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.core import check
from transferkit.core.data import LabelledImages, split_train_val


def _noise(rng, size=48) -> Image.Image:
    """A distinct image: smooth random colour blobs (noise upscaled), so no two are alike."""
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.BICUBIC)


def _folder(root: Path, counts: dict, seed: int = 0) -> dict:
    """``root/split/class/i.png``, distinct images; returns {split: ([paths], [labels])}."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, per_class in counts.items():
        paths, labels = [], []
        for label, name in enumerate(("cat", "dog")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                paths.append(root / split / name / f"{i}.png")
                labels.append(label)
                _noise(rng).save(paths[-1])
        splits[split] = (paths, labels)
    return splits


def _plant_copy(splits, source: tuple, target: tuple, name: str) -> Path:
    """Copy file ``source`` = (split, index) into split/class ``target`` = (split, label)."""
    src = splits[source[0]][0][source[1]]
    dst = src.parents[2] / target[0] / ("cat", "dog")[target[1]] / name
    shutil.copyfile(src, dst)
    splits[target[0]][0].append(dst)
    splits[target[0]][1].append(target[1])
    return dst


def _digest(folder: Path) -> dict:
    return {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


# --- files -----------------------------------------------------------------------------------


def test_file_checks_find_every_planted_problem(tmp_path):
    rng = np.random.default_rng(0)
    good = [tmp_path / f"good{i}.jpg" for i in range(3)]
    for p in good:
        _noise(rng, 64).save(p, quality=90)
    (tmp_path / "text.jpg").write_text("not an image at all\n")
    (tmp_path / "dsstore.jpg").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(2000))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(good[0].read_bytes()[:400])
    _noise(rng, 16).save(tmp_path / "tiny.png")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(tmp_path / "deep16.png")
    Image.new("CMYK", (40, 40), (10, 200, 30, 0)).save(tmp_path / "cmyk.jpg")
    _noise(rng, 40).convert("P").save(tmp_path / "palette.png")
    _noise(rng, 40).convert("L").save(tmp_path / "grey.png")
    rotated = _noise(rng, 40)
    exif = rotated.getexif()
    exif[check.EXIF_ORIENTATION] = 6  # "rotate 90 CW to display"
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    shutil.copyfile(good[1], tmp_path / ".hidden.jpg")
    paths = sorted(tmp_path.iterdir())

    found = check.file_checks(paths)

    def names(key):
        return sorted(Path(e.split(":")[0]).name for e in found[key]["examples"])

    assert names("not_image") == ["dsstore.jpg", "text.jpg"]
    assert names("unreadable") == ["empty.png", "truncated.jpg"]
    assert names("small") == ["tiny.png"]
    assert names("rotated") == ["rotated.jpg"]
    assert names("not_image_name") == [".hidden.jpg"]
    modes = found["modes"]["counts"]
    assert modes["RGB"] == 6 and modes["CMYK"] == 1 and modes["P"] == 1 and modes["L"] == 1
    assert modes.get("I;16", 0) + modes.get("I", 0) == 1  # Pillow reads 16-bit PNG as I;16 (older: I)
    assert json.loads(json.dumps(found)) == found


# --- exact duplicates ------------------------------------------------------------------------


def test_exact_duplicates_are_all_found_and_classified(tmp_path):
    splits = _folder(tmp_path, {"train": 30, "test": 10})  # train: cats 0-29, dogs 30-59
    train = list(splits["train"][0])
    planted = [(train[i], _plant_copy(splits, ("train", i), ("train", 0), f"copy{i}.png")) for i in range(5)]  # cats copied as cats
    planted += [(train[i], _plant_copy(splits, ("train", i), ("train", 1), f"conflict{i}.png")) for i in range(10, 14)]  # cats filed as dogs
    planted += [(train[i], _plant_copy(splits, ("train", i), ("test", 1), f"leak{i}.png")) for i in range(30, 36)]  # train dogs in test
    paths = [p for s in splits.values() for p in s[0]]
    split = [name for name, s in splits.items() for _ in s[0]]
    labels = [y for s in splits.values() for y in s[1]]
    before = _digest(tmp_path)

    groups = check.duplicate_groups(paths)
    found = check.classify_groups(groups, split, labels, paths)

    index = {p: i for i, p in enumerate(paths)}
    assert all(groups[index[a]] == groups[index[b]] for a, b in planted)  # recall 1.0: bytes are bytes
    assert len(np.unique(groups)) == len(paths) - len(planted)  # and nothing else is joined
    assert found["groups"] == 15 and found["files"] == 30
    assert found["within_class"]["groups"] == 5 and found["within_class"]["extra_copies"] == 5
    assert found["conflicting_labels"]["groups"] == 4 and found["conflicting_labels"]["files"] == 8
    assert found["across_splits"]["files"]["test"] == 6
    assert found["across_splits"]["share"]["test"] == pytest.approx(6 / 26, abs=1e-4)
    assert _digest(tmp_path) == before  # read only


def test_duplicate_groups_keep_copies_on_one_side_of_a_split(tmp_path):
    splits = _folder(tmp_path, {"train": 20})
    for i in range(8):
        _plant_copy(splits, ("train", i), ("train", 0), f"copy{i}.png")
    paths, labels = splits["train"]
    groups = check.duplicate_groups(paths)
    images = LabelledImages(paths, labels, ["cat", "dog"], groups=groups)
    for seed in range(5):
        train, val = split_train_val(images, 0.3, seed)
        assert not set(train.groups) & set(val.groups)


# --- near duplicates -------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 7, 64, 1000])
def test_near_duplicate_pairs_match_the_full_matrix(block):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 16)).astype(np.float32)
    x[60:80] = x[:20] + rng.normal(scale=0.05, size=(20, 16))  # 20 planted near copies
    x[100] = 0  # an image that failed to decode is similar to nothing
    i, j, cosine = check.near_duplicate_pairs(x, 0.9, block=block)
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    full = unit @ unit.T
    want = {(a, b) for a, b in zip(*np.nonzero(full >= 0.9)) if a < b}
    assert set(zip(i.tolist(), j.tolist())) == want and {(k, k + 60) for k in range(20)} <= want
    np.testing.assert_allclose(cosine, full[i, j], atol=1e-5)
    groups = check.pair_groups(len(x), i, j)
    assert all(groups[k] == groups[k + 60] for k in range(20)) and len(np.unique(groups)) == 100


def test_near_duplicate_search_time_grows_with_rows_not_their_square():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 1280)).astype(np.float32)
    started = time.perf_counter()
    i, _, _ = check.near_duplicate_pairs(x)
    assert len(i) == 0 and time.perf_counter() - started < 10  # about 0.5 s on 2 cores


# --- label errors ----------------------------------------------------------------------------


def test_confident_joint_follows_the_paper_on_a_worked_example():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6], [0.95, 0.05]])
    # t_0 = mean(0.9, 0.8, 0.2) = 0.633; t_1 = mean(0.7, 0.6, 0.05) = 0.45
    joint, likely = check.confident_joint(labels, probs)
    assert likely.tolist() == [0, 0, 1, 1, 1, 0]
    assert joint.tolist() == [[2, 1], [1, 2]]
    assert check.label_issues(labels, probs).tolist() == [5, 2]  # self-confidence 0.05, then 0.2
    assert check.label_issues(labels, probs, rank_by="normalized_margin").tolist() == [5, 2]


def _flipped_digits(seed: int, share: float = 0.05):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y), round(share * len(y)), replace=False)
    noisy = y.copy()
    noisy[flipped] = (y[flipped] + rng.integers(1, 10, len(flipped))) % 10  # another class, uniformly
    return x, noisy, flipped


# Measured with the default probe (C=0.1, 5 folds) on seeds 0-4 (0-9 in brackets): the flagged
# examples (71-76 of them, fewer than the 90 planted) are flips for 0.907-0.945 of them
# [0.878-0.945], and hold 0.733-0.789 [0.722-0.789] of the flips.
FLAGGED_PRECISION_FLOOR = 0.85
RECALL_AT_K_FLOOR = 0.68


@pytest.mark.parametrize("seed", [0, 1, *(pytest.param(s, marks=pytest.mark.slow) for s in (2, 3, 4))])
def test_planted_label_flips_rank_first(seed):
    x, noisy, flipped = _flipped_digits(seed)  # 90 of 1,797 digits (raw 8x8 pixels) relabelled
    probs = check.out_of_fold_probabilities(x, noisy, seed=seed)
    issues = check.label_issues(noisy, probs)
    k = len(flipped)
    recall_at_k = len(set(issues[:k]) & set(flipped)) / k  # k = the number planted
    precision = len(set(issues) & set(flipped)) / len(issues)  # of everything flagged
    assert recall_at_k >= RECALL_AT_K_FLOOR
    assert precision >= FLAGGED_PRECISION_FLOOR


# --- balance ---------------------------------------------------------------------------------


def test_class_balance_names_small_and_missing_classes():
    labels = {"train": [0] * 40 + [1] * 8 + [2] * 4, "test": [0] * 10 + [1] * 3}
    found = check.class_balance(labels, ["a", "b", "c"], val_fraction=0.2)
    assert found["counts"]["train"] == {"a": 40, "b": 8, "c": 4}
    assert found["ratio"] == 10.0
    assert found["too_few"] == {"b": 8, "c": 4}
    assert found["missing"] == {"test": ["c"]}
    assert check.class_balance({"train": [0] * 6 + [1] * 6}, ["a", "b"], val_fraction=0.1, min_per_class=2)["too_few"] == {"a": 6, "b": 6}  # 6 x 0.1 < 1 image


# --- the whole check -------------------------------------------------------------------------


def test_check_images_reports_planted_problems_and_writes_nothing(tmp_path):
    splits = _folder(tmp_path, {"train": 25, "test": 8})
    _plant_copy(splits, ("train", 0), ("test", 0), "leak.png")
    _plant_copy(splits, ("train", 1), ("train", 1), "conflict.png")
    (tmp_path / "train" / "cat" / "notes.jpg").write_text("hello")
    splits["train"][0].append(tmp_path / "train" / "cat" / "notes.jpg")
    splits["train"][1].append(0)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 64))
    embeddings = {s: (centres[np.array(y)] + rng.normal(size=(len(y), 64))).astype(np.float32) for s, (_, y) in splits.items()}
    embeddings["test"][-1] = embeddings["train"][0]  # exact copies embed alike: reported once, as exact
    embeddings["train"][-2] = embeddings["train"][1]
    embeddings["test"][0] = embeddings["train"][5] + 0.01  # a near copy of a train image
    before = _digest(tmp_path)

    report = check.check_images(splits, ["cat", "dog"], embeddings, folds=3)

    assert json.loads(json.dumps(report)) == report
    assert report["exact_duplicates"]["across_splits"]["files"]["test"] == 1
    assert report["near_duplicates"]["across_splits"]["files"]["test"] == 1
    assert report["files"]["not_image"]["count"] == 1
    lines = check.summary_lines(report)
    assert any(line.startswith("exact duplicates: 1 file in test with a copy") and "(5.9% of test)" in line for line in lines)
    assert any(line.startswith("label conflict") for line in lines)
    assert any(line.startswith("near duplicates: 1 file in test") for line in lines)
    assert any(line.startswith("not images: 1 file") for line in lines)
    assert _digest(tmp_path) == before
    assert check.summary_lines(check.check_images({"train": splits["train"]}, ["cat", "dog"])) != []


# --- with the pretrained network (slow) ------------------------------------------------------

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea", "camera", "immunohistochemistry", "coins", "moon", "clock", "cell")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")


def _crop(image: Image.Image, share: float, rng) -> Image.Image:
    w, h = image.size
    cw, ch = round(w * share), round(h * share)
    x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    return image.crop((x, y, x + cw, y + ch))


def _resize(image: Image.Image, share: float) -> Image.Image:
    return image.resize((round(image.width * share), round(image.height * share)), Image.LANCZOS)


# The edits NEAR_DUPLICATE_COSINE was measured on.
NEAR_COPIES = {
    "resized to 75%": lambda im, rng: _resize(im, 0.75),
    "JPEG q75": lambda im, rng: _jpeg(im, 75),
    "JPEG q60": lambda im, rng: _jpeg(im, 60),
    "95% crop": lambda im, rng: _crop(im, 0.95, rng),
    "90% crop": lambda im, rng: _crop(im, 0.90, rng),
    "all three": lambda im, rng: _jpeg(_resize(_crop(im, 0.95, rng), 0.85), 75),
}


def _tiles(size: int = 128) -> tuple[list[Image.Image], list[int]]:
    """Distinct real images: the non-overlapping tiles of scikit-image's photos (flat ones left
    out), re-encoded as JPEG q90 as most datasets' files are; the photo is the class."""
    data = pytest.importorskip("skimage.data")
    tiles, labels = [], []
    for label, name in enumerate(PHOTOS):
        photo = Image.fromarray(getattr(data, name)()).convert("RGB")
        for y in range(0, photo.height - size + 1, size):
            for x in range(0, photo.width - size + 1, size):
                tile = photo.crop((x, y, x + size, y + size))
                if np.asarray(tile.convert("L"), np.float32).std() >= 20:
                    tiles.append(_jpeg(tile, 90))
                    labels.append(label)
    return tiles, labels


@pytest.mark.slow
def test_near_copies_of_real_photos_are_found_and_distinct_photos_are_not(tmp_path, lite0):
    from transferkit.core.features import extract_features

    rng = np.random.default_rng(0)
    tiles, labels = _tiles()  # 78 tiles of 10 photos
    splits = {"train": ([], []), "test": ([], [])}
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        folder = tmp_path / "data" / PHOTOS[label]
        folder.mkdir(parents=True, exist_ok=True)
        tile.save(folder / f"{i}.jpg", quality=95)
        splits["train"][0].append(folder / f"{i}.jpg")
        splits["train"][1].append(label)
        for k in range(i % 2, len(NEAR_COPIES), 2):  # three of the six edits a tile, in turn: the copies go to test
            list(NEAR_COPIES.values())[k](tile, rng).save(folder / f"{i}-copy{k}.png")
            splits["test"][0].append(folder / f"{i}-copy{k}.png")
            splits["test"][1].append(label)
    embeddings = {
        name: np.asarray(extract_features(paths, y, lite0, data_fingerprint=name, cache_dir=tmp_path / "cache").features)
        for name, (paths, y) in splits.items()
    }  # fmt: skip
    n = len(tiles)
    originals, copies = embeddings["train"], embeddings["test"]
    source = np.repeat(np.arange(n), 3)  # the tile each copy was made from
    cosine = (originals[source] * copies).sum(axis=1) / np.linalg.norm(originals[source], axis=1) / np.linalg.norm(copies, axis=1)
    recall = (cosine >= check.NEAR_DUPLICATE_COSINE).mean()
    i, j, _ = check.near_duplicate_pairs(originals)
    false_positive = len(np.unique(np.concatenate([i, j]))) / n  # tiles with a distinct tile above the threshold
    # Measured at 0.86: recall 0.923 of the 234 copies (by edit, in NEAR_COPIES' order: 0.95,
    # 0.97, 0.90, 0.97, 0.92, 0.82); 4 of the 78 tiles (5.1%, two pairs) over the threshold.
    assert recall >= 0.9
    assert false_positive <= 0.10

    report = check.check_images(splits, list(PHOTOS), embeddings, decode=False, folds=3)
    near = report["near_duplicates"]["across_splits"]
    assert near["files"]["test"] >= 0.9 * len(splits["test"][0]) and near["files"]["train"] >= 0.9 * n
    assert any(line.startswith("near duplicates: ") and "in test" in line for line in check.summary_lines(report))


@pytest.mark.slow
def test_near_duplicate_search_over_30000_images_takes_seconds():
    x = np.random.default_rng(0).normal(size=(30_000, 1280)).astype(np.float32)
    x[20_000:20_100] = x[:100] * 1.5 + 0.01  # 100 planted copies
    started = time.perf_counter()
    i, j, _ = check.near_duplicate_pairs(x)
    assert time.perf_counter() - started < 60  # 9-22 s on 2 cores, shared or not
    assert set(zip(i.tolist(), j.tolist())) == {(k, 20_000 + k) for k in range(100)}


def test_alike_images_are_said_to_be_alike_not_duplicated(tmp_path):
    splits = _folder(tmp_path, {"train": 10, "test": 5})  # 30 images: one chain of 30 > CHAIN
    rng = np.random.default_rng(0)
    base = rng.normal(size=64)  # scans or textures: every image close to every other
    embeddings = {s: (base + 0.1 * rng.normal(size=(len(y), 64))).astype(np.float32) for s, (_, y) in splits.items()}
    report = check.check_images(splits, ["cat", "dog"], embeddings, folds=2)
    assert report["near_duplicates"]["alike"] == 1.0
    near_lines = [line for line in check.summary_lines(report) if "near duplicates" in line]
    assert len(near_lines) == 1 and near_lines[0].startswith("near duplicates not told apart: 100% of images chain")


def test_check_dataset_takes_a_loaded_dataset(tmp_path):
    from transferkit.core.data import load_data

    splits = _folder(tmp_path / "pets", {"train": 12, "test": 4})
    _plant_copy(splits, ("train", 0), ("test", 0), "leak.png")
    report = check.check_dataset(load_data(str(tmp_path / "pets")), None, decode=False)
    assert report["data"] == "pets" and set(report["splits"]) == {"train", "val", "test"}
    assert report["exact_duplicates"]["across_splits"]["files"]["test"] == 1
    in_memory = check.check_dataset(load_data("digits"), None)  # arrays: no files, only the balance
    assert not in_memory["files_checked"] and in_memory["balance"]["counts"]["train"]
    assert check.summary_lines(in_memory)
