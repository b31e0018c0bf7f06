"""The DATA resolver: every source form, the splits, the fingerprint and the input errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from transferkit.core.data import (
    BottleneckFeatures,
    ImageDataset,
    LabelledImages,
    load_data,
    parse_data_spec,
    split_train_val,
)
from transferkit.core.errors import TransferkitError


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")


def image(path: Path, value: int = 0, size: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, 7)).save(path)
    return path


def class_tree(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    for name, n in counts.items():
        for i in range(n):
            image(root / name / f"{i:03d}{ext}", i * 10)
    return root


def names(images: LabelledImages) -> set[str]:
    return {Path(p).name for p in images.samples}


# --- image folders ---------------------------------------------------------------------------


def test_folder_lists_class_images_sorted_and_splits_stratified(tmp_path):
    root = class_tree(tmp_path / "pets", {"dog": 5, "cat": 5}, ".jpg")
    image(root / "cat" / "nested" / "999.ppm")  # images in subfolders belong to the class
    image(root / "cat" / ".hidden.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / ".git").mkdir()
    data = load_data(str(root))
    assert isinstance(data, ImageDataset) and data.name == "pets"
    assert data.classes == ["cat", "dog"] and data.test is None
    assert len(data.train) + len(data.val) == 11
    assert all(isinstance(p, Path) for p in data.train.samples)
    assert "999.ppm" in names(data.train) | names(data.val)
    assert ".hidden.png" not in names(data.train) | names(data.val)
    assert set(data.val.labels) == {0, 1} and set(data.train.labels) == {0, 1}
    assert data.train.root == root.absolute()
    again = load_data(str(root))
    assert [str(p) for p in again.val.samples] == [str(p) for p in data.val.samples]


def test_split_folders(tmp_path):
    class_tree(tmp_path / "train", {"a": 3, "b": 3})
    class_tree(tmp_path / "valid", {"a": 1, "b": 1})
    class_tree(tmp_path / "test", {"b": 2})
    data = load_data(str(tmp_path))
    assert list(data.splits) == ["train", "val", "test"]
    assert data.classes == ["a", "b"] and len(data.train) == 6 and len(data.val) == 2
    assert data.test.labels.tolist() == [1, 1] and data.test.classes == ["a", "b"]


def test_split_folders_without_val_split_train(tmp_path):
    class_tree(tmp_path / "train", {"a": 5, "b": 5})
    class_tree(tmp_path / "test", {"a": 1, "b": 1})
    data = load_data(str(tmp_path), val_fraction=0.2)
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 2)


def test_class_unknown_to_train_is_refused(tmp_path):
    class_tree(tmp_path / "train", {"a": 2, "b": 2})
    class_tree(tmp_path / "val", {"a": 1, "zebra": 1})
    with pytest.raises(TransferkitError, match="zebra"):
        load_data(str(tmp_path))


# --- CSV -------------------------------------------------------------------------------------


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_csv_with_split_column(tmp_path):
    for i in range(6):
        image(tmp_path / "img" / f"{i}.png", i)
    rows = "".join(f"img/{i}.png,{'ab'[i % 2]},{['train', 'train', 'train', 'train', 'val', 'test'][i]}\n" for i in range(6))
    data = load_data(str(write_csv(tmp_path / "list.csv", "path,label,split\n" + rows)))
    assert data.name == "list" and data.classes == ["a", "b"]
    assert (len(data.train), len(data.val), len(data.test)) == (4, 1, 1)
    assert data.train.root == tmp_path and data.val.samples == [tmp_path / "img" / "4.png"]


def test_csv_alias_columns_and_generated_val(tmp_path):
    for i in range(10):
        image(tmp_path / f"{i}.png", i)
    rows = "".join(f"{i}.png,{'xy'[i % 2]}\n" for i in range(10))
    data = load_data(str(write_csv(tmp_path / "d.csv", "Filename, Class\n" + rows)))
    assert (len(data.train), len(data.val)) == (8, 2) and set(data.val.labels) == {0, 1}


def test_csv_paths_outside_its_folder(tmp_path):
    for i in range(4):
        image(tmp_path / "outside" / f"{i}.png", i)
    rows = "path,label\n" + "".join(f"../outside/{i}.png,{'ab'[i % 2]}\n" for i in range(4))
    csv_path = write_csv(tmp_path / "lists" / "d.csv", rows)
    with pytest.raises(TransferkitError, match=r"line 2: \.\./outside/0\.png is outside .*allow-outside-root"):
        load_data(str(csv_path))
    absolute = write_csv(tmp_path / "lists" / "abs.csv", f"path,label\n{tmp_path}/outside/0.png,a\n")
    with pytest.raises(TransferkitError, match="is outside"):
        load_data(str(absolute))
    assert len(load_data(str(csv_path), allow_outside_root=True).train) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,kind\n0.png,a\n", "no path column"),
        ("path,label\n0.png,a\n1.png,b\nmissing.png,a\n", r"line 4: image .*missing\.png not found \(1 of 3 rows"),
        ("path,label\n0.png,\n", "line 2: empty label"),
        ("path,label,split\n0.png,a,holdout\n", "split 'holdout'"),
        ("path,label\n", "no data rows"),
    ],
)
def test_csv_errors_name_the_problem(tmp_path, text, message):
    image(tmp_path / "0.png")
    image(tmp_path / "1.png")
    with pytest.raises(TransferkitError, match=message):
        load_data(str(write_csv(tmp_path / "d.csv", text)))


# --- CIFAR-10 --------------------------------------------------------------------------------


def test_cifar10_offline_lists_the_expected_files(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_DATA", str(tmp_path / "env-root"))
    with pytest.raises(TransferkitError) as err:
        load_data("cifar10")
    message = str(err.value)
    assert "\n" not in message and "offline" in message
    folder = tmp_path / "env-root" / "cifar-10-batches-py"
    for name in ("data_batch_1", "data_batch_5", "test_batch", "batches.meta"):
        assert str(folder / name) in message
    with pytest.raises(TransferkitError, match="explicit"):
        load_data("cifar10", data_root=str(tmp_path / "explicit"))


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["EXPLOIT_MARK"]),))


def test_cifar10_corrupt_batches_are_never_unpickled(tmp_path, monkeypatch):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    monkeypatch.setenv("EXPLOIT_MARK", str(tmp_path / "pwned"))
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"):
        (folder / name).write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(TransferkitError, match="md5"):
        load_data(f"cifar10:{tmp_path}")
    assert not (tmp_path / "pwned").exists()


# --- GTSRB -----------------------------------------------------------------------------------


def check_tracks_not_split(data: ImageDataset) -> None:
    def tracks(images):
        return {(int(images.classes[label]), "_".join(Path(p).stem.split("_")[-2:-1])) for p, label in zip(images.samples, images.labels)}

    assert tracks(data.train).isdisjoint(tracks(data.val))
    assert set(data.train.labels) == set(range(len(data.classes)))


def test_gtsrb_official_layout(tmp_path):
    train = tmp_path / "GTSRB" / "Final_Training" / "Images"
    for class_id in (0, 1, 12):
        folder = train / f"{class_id:05d}"
        for track in range(3):
            for frame in range(2):
                image(folder / f"{track:05d}_{frame:05d}.ppm", track)
        (folder / f"GT-{class_id:05d}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
    test = tmp_path / "GTSRB" / "Final_Test" / "Images"
    for i in range(3):
        image(test / f"{i:05d}.ppm")
    labels = "".join(f"{i:05d}.ppm;4;4;0;0;3;3;{c}\n" for i, c in enumerate((12, 0, 1)))
    (tmp_path / "GT-final_test.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n" + labels)
    data = load_data(f"gtsrb:{tmp_path}", val_fraction=0.34)
    assert data.name == "gtsrb" and data.classes == ["0", "1", "12"]
    assert len(data.train) + len(data.val) == 18 and len(data.val) > 0
    assert data.train.groups is not None and len(np.unique(data.train.groups)) <= 9
    check_tracks_not_split(data)
    assert data.test.labels.tolist() == [2, 0, 1] and data.test.groups is None


def kaggle_tree(root: Path) -> Path:
    rows = []
    for class_id in (3, 20):
        for track in range(3):
            for frame in range(2):
                rel = f"Train/{class_id}/{class_id:05d}_{track:05d}_{frame:05d}.png"
                image(root / rel, frame)
                rows.append(f"4,4,0,0,3,3,{class_id},{rel}\n")
    header = "Width,Height,Roi.X1,Roi.Y1,Roi.X2,Roi.Y2,ClassId,Path\n"
    write_csv(root / "Train.csv", header + "".join(rows))
    image(root / "Test" / "00000.png")
    image(root / "Test" / "00001.png")
    write_csv(root / "Test.csv", header + "4,4,0,0,3,3,20,Test/00000.png\n4,4,0,0,3,3,3,Test/00001.png\n")
    return root


def test_gtsrb_kaggle_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_DATA", str(kaggle_tree(tmp_path)))
    data = load_data("gtsrb", seed=3)
    assert data.classes == ["3", "20"] and len(data.train) + len(data.val) == 12
    check_tracks_not_split(data)
    assert data.test.labels.tolist() == [1, 0]


def test_gtsrb_kaggle_missing_file_names_the_row(tmp_path):
    kaggle_tree(tmp_path)
    (tmp_path / "Train" / "20" / "00020_00001_00000.png").unlink()
    with pytest.raises(TransferkitError, match=r"Train\.csv, line 10: image .*00020_00001_00000\.png not found"):
        load_data(f"gtsrb:{tmp_path}")


def test_gtsrb_torchvision_folder(tmp_path):
    for class_id in (0, 1):
        for track in range(2):
            image(tmp_path / "gtsrb" / "GTSRB" / "Training" / f"{class_id:05d}" / f"{track:05d}_00000.ppm")
    data = load_data(f"gtsrb:{tmp_path}")
    assert data.classes == ["0", "1"] and data.test is None and len(data.val) == 2


def test_gtsrb_offline_says_where_it_looked(tmp_path):
    with pytest.raises(TransferkitError) as err:
        load_data(f"gtsrb:{tmp_path}")
    message = str(err.value)
    for fragment in ("official", "Kaggle", "torchvision", str(tmp_path / "Train.csv"), "offline"):
        assert fragment in message


# --- pickles ---------------------------------------------------------------------------------


def dump(path: Path, features, labels) -> Path:
    path.write_bytes(pickle.dumps({"features": features, "labels": labels}))
    return path


def test_pickle_refused_without_trust(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLOIT_MARK", str(tmp_path / "pwned"))
    path = tmp_path / "evil.p"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(TransferkitError, match=r"evil\.p is a pickle, and unpickling can run arbitrary code; pass --trust-pickle"):
        load_data(str(path))
    assert not (tmp_path / "pwned").exists()


def test_lab_pickle_with_sibling_splits(tmp_path):
    rng = np.random.default_rng(0)
    imgs = lambda n: rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)  # noqa: E731
    train = dump(tmp_path / "signs_train.p", imgs(8), np.array([3, 1] * 4))
    dump(tmp_path / "signs_valid.p", imgs(2), np.array([1, 3]))
    dump(tmp_path / "signs_test.p", imgs(3), np.array([3, 3, 1]))
    data = load_data(str(train), trust_pickle=True)
    assert isinstance(data, ImageDataset) and data.name == "signs" and data.classes == ["1", "3"]
    assert (len(data.train), len(data.val), len(data.test)) == (8, 2, 3)
    assert data.train.samples[0].shape == (6, 6, 3) and data.test.labels.tolist() == [1, 1, 0]


def test_bottleneck_pickle(tmp_path):
    rng = np.random.default_rng(0)
    train = dump(tmp_path / "vgg_cifar10_100_bottleneck_features_train.p", rng.random((20, 1, 1, 7)), np.arange(20).reshape(-1, 1) % 2)
    dump(tmp_path / "vgg_cifar10_bottleneck_features_validation.p", rng.random((4, 1, 1, 7)), np.array([[0], [1], [1], [0]]))
    assert parse_data_spec(str(train)) == ("bottleneck", str(train))
    data = load_data(str(train), trust_pickle=True)
    assert isinstance(data, BottleneckFeatures) and data.classes == ["0", "1"]
    x, y = data.splits["train"]
    assert x.shape == (20, 7) and x.dtype == np.float32 and y.dtype == np.int64
    assert data.splits["val"][0].shape == (4, 7) and data.splits["val"][1].tolist() == [0, 1, 1, 0]
    alone = dump(tmp_path / "flat.p", rng.random((10, 5)), np.arange(10) % 2)
    split = load_data(str(alone), trust_pickle=True).splits
    assert len(split["train"][0]) + len(split["val"][0]) == 10 and "test" not in split


def test_bad_pickle_is_one_error(tmp_path):
    (tmp_path / "junk.p").write_bytes(b"not a pickle at all")
    with pytest.raises(TransferkitError, match="could not be unpickled"):
        load_data(str(tmp_path / "junk.p"), trust_pickle=True)
    (tmp_path / "list.p").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(TransferkitError, match="'features' and 'labels'"):
        load_data(str(tmp_path / "list.p"), trust_pickle=True)
    odd = [(7, [1, 2]), (np.zeros((3, 2)), [1, 2]), (np.array([["a", "b"]] * 2), [0, 1]), (np.zeros((2, 3)), [0.5, 1.0]), (np.zeros((2, 3), np.float32), [[0], [0]])]
    for i, (features, labels) in enumerate(odd):
        with pytest.raises(TransferkitError):
            load_data(str(dump(tmp_path / f"odd{i}.p", features, labels)), trust_pickle=True)
    floats = dump(tmp_path / "floats.p", np.zeros((4, 5, 5, 3)), np.array([0, 1, 0, 1]))
    with pytest.raises(TransferkitError, match="expected uint8 images"):
        load_data(str(floats), trust_pickle=True)


# --- digits ----------------------------------------------------------------------------------


def test_digits():
    data = load_data("digits", seed=1)
    assert data.classes == [str(d) for d in range(10)]
    assert (len(data.train) + len(data.val), len(data.test)) == (1347, 450)
    assert data.train.samples[0].shape == (8, 8) and data.train.samples.dtype == np.uint8
    assert data.train.samples.max() == 255
    assert load_data("digits", seed=2).test.fingerprint() == data.test.fingerprint()


# --- splits, subsets, fingerprints -----------------------------------------------------------


def test_grouped_split_keeps_groups_on_one_side():
    labels = np.repeat([0, 1, 2, 3], 20)
    groups = np.arange(80) // 4  # five groups per class
    groups[60:] = 99  # class 3 has a single group: it stays in train
    images = LabelledImages(np.zeros((80, 2, 2), np.uint8), labels, list("abcd"), groups)
    for seed in range(5):
        train, val = split_train_val(images, 0.2, seed)
        assert set(train.groups).isdisjoint(val.groups)
        assert set(train.labels) == {0, 1, 2, 3} and set(val.labels) == {0, 1, 2}
        assert len(train) + len(val) == 80


def test_stratified_split_is_deterministic_and_keeps_singletons_in_train():
    labels = np.array([0] * 10 + [1] * 10 + [2])
    images = LabelledImages(list(range(21)), labels, ["a", "b", "c"])
    train, val = split_train_val(images, 0.2, seed=7)
    assert sorted(val.labels.tolist()) == [0, 0, 1, 1] and 2 in train.labels
    assert split_train_val(images, 0.2, seed=7)[1].samples == val.samples
    with pytest.raises(TransferkitError, match="val_fraction"):
        split_train_val(images, 1.5, seed=0)


def test_per_class():
    images = LabelledImages(list(range(12)), np.array([0] * 8 + [1] * 3 + [2]), list("abc"))
    some = images.per_class(2, seed=0)
    assert some.class_counts() == {"a": 2, "b": 2, "c": 1}
    assert some.samples == sorted(some.samples)
    assert images.per_class(2, seed=0).samples == some.samples
    assert images.per_class(100).samples == images.samples


def test_fingerprint(tmp_path):
    root = class_tree(tmp_path / "d", {"a": 3, "b": 3})
    first = load_data(str(root)).train
    assert load_data(str(root)).train.fingerprint() == first.fingerprint()
    out = first.fingerprint()
    relabelled = LabelledImages(first.samples, 1 - first.labels, first.classes, root=first.root)
    reordered = first.subset(np.arange(len(first))[::-1])
    assert len({first.fingerprint(), relabelled.fingerprint(), reordered.fingerprint()}) == 3
    stat = os.stat(first.samples[0])
    os.utime(first.samples[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert first.fingerprint() != out
    arrays = LabelledImages(np.zeros((2, 3, 3), np.uint8), np.array([0, 1]), ["a", "b"])
    changed = LabelledImages(np.ones((2, 3, 3), np.uint8), np.array([0, 1]), ["a", "b"])
    assert arrays.fingerprint() != changed.fingerprint()
    assert first.class_counts() == {"a": sum(first.labels == 0), "b": sum(first.labels == 1)}


def test_fingerprint_is_the_same_in_every_process(tmp_path):
    """No per-process salt (hash(), id()): fixed files and arrays give a fixed, known value."""
    files = []
    for i, name in enumerate(["x/1.png", "y/2.png"]):
        path = tmp_path / name
        path.parent.mkdir()
        path.write_bytes(bytes([i]) * (10 + i))
        os.utime(path, ns=(1_600_000_000_000_000_000 + i, 1_600_000_000_000_000_000 + i))
        files.append(path)
    paths = LabelledImages(files, np.array([0, 1]), ["x", "y"], root=tmp_path)
    arrays = LabelledImages(np.arange(24, dtype=np.uint8).reshape(2, 3, 4), np.array([1, 0]), ["p", "q"])
    listed = LabelledImages(list(arrays.samples), arrays.labels, arrays.classes)
    assert (paths.fingerprint(), arrays.fingerprint()) == ("1fc122ec7550fde9", "c42c0754b2e53c2d")
    assert listed.fingerprint() == arrays.fingerprint()


# --- bad inputs ------------------------------------------------------------------------------


def test_empty_class_folder(tmp_path):
    class_tree(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.txt").write_text("")
    with pytest.raises(TransferkitError, match=r"class folder .*/c has no image files"):
        load_data(str(tmp_path))


def test_single_class(tmp_path):
    class_tree(tmp_path, {"cats": 3})
    with pytest.raises(TransferkitError, match=r"found 1 class \(cats\) in .*: need at least 2 class folders"):
        load_data(str(tmp_path))


@pytest.mark.parametrize("spec", ["mnist", "", "cifar100", "  "])
def test_unknown_form_lists_the_accepted_ones(spec):
    with pytest.raises(TransferkitError, match=r"folder, file\.csv, cifar10\[:ROOT\], gtsrb\[:ROOT\], file\.p with --trust-pickle, or digits"):
        load_data(spec)


def test_a_plain_file_is_not_data(tmp_path):
    with pytest.raises(TransferkitError, match="expected an image folder"):
        load_data(str(image(tmp_path / "cat.png")))


@pytest.mark.parametrize("name", ["nowhere", "nowhere.csv", "nowhere.p"])
def test_missing_path(tmp_path, name):
    with pytest.raises(TransferkitError, match="does not exist"):
        load_data(str(tmp_path / name), trust_pickle=True)


def test_unreadable_folder(tmp_path, monkeypatch):
    class_tree(tmp_path, {"a": 2, "b": 2})
    if os.geteuid() == 0:  # root reads everything: fake the refusal
        def refuse(self):
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "iterdir", refuse)
    (tmp_path / "b").chmod(0)
    try:
        with pytest.raises(TransferkitError, match="permission denied"):
            load_data(str(tmp_path))
    finally:
        (tmp_path / "b").chmod(0o755)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_data_spec_only_raises_transferkit_errors(spec):
    try:
        kind, _ = parse_data_spec(spec)
    except TransferkitError as err:
        assert "\n" not in str(err).replace(spec, "")
    else:
        assert kind in {"folder", "csv", "cifar10", "gtsrb", "pickle", "bottleneck", "digits"}
