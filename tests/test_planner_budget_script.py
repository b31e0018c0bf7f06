"""The planner benchmark's data preparation: digits as PNG folders, the first 100 CIFAR-10 files per class."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "planner_budget.py"
spec = importlib.util.spec_from_file_location("planner_budget", SCRIPT)
planner_budget = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(planner_budget)


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_digits_folder_is_a_stratified_80_20_split_of_8x8_grayscale_pngs(tmp_path):
    folder = planner_budget.digits_folder(tmp_path)
    train, test = _files(folder / "train"), _files(folder / "test")
    assert (len(train), len(test)) == (1437, 360)
    assert sorted(p.name for p in (folder / "train").iterdir()) == [str(d) for d in range(10)]
    assert {p.parent.name for p in test} == {str(d) for d in range(10)}
    image, digits = Image.open(train[0]), load_digits()
    assert (image.mode, image.size) == ("L", (8, 8))
    index = int(train[0].stem)  # files are named by their index in load_digits()
    assert np.array_equal(np.asarray(image), np.round(digits.images[index] * 255 / 16))  # 0..16 scaled to 0..255
    assert train[0].parent.name == str(digits.target[index])
    assert not set(p.name for p in train) & set(p.name for p in test)


def test_cifar10_subset_takes_the_first_files_per_class_in_sorted_order_and_the_whole_test_set(tmp_path):
    for split, count in (("train", 5), ("test", 3)):
        for name in ("cat", "dog"):
            (tmp_path / "cifar10" / split / name).mkdir(parents=True)
            for i in reversed(range(count)):
                (tmp_path / "cifar10" / split / name / f"{i:04d}.jpg").write_bytes(b"jpeg")
    folder = planner_budget.cifar10_subset_folder(tmp_path, per_class=2)
    assert [p.relative_to(folder / "train").as_posix() for p in _files(folder / "train")] == ["cat/0000.jpg", "cat/0001.jpg", "dog/0000.jpg", "dog/0001.jpg"]
    assert len(_files(folder / "test")) == 6
    assert planner_budget.cifar10_subset_folder(tmp_path, per_class=2) == folder  # prepared once
