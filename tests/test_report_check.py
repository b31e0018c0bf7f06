"""report.html's data check section: the check `transferkit train` runs first, as a person reads it."""

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from markupsafe import escape
from PIL import Image

from transferkit.core import check
from transferkit.core.html_report import rebuild_report, write_html_report
from transferkit.core.report import classification_metrics

CLASSES = ["cat", "dog"]
HOSTILE = "<img src=x onerror=alert(1)>.png"  # a file name that is markup


def _noise(path: Path, rng, colour: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 120, (48, 48, 3)) + np.array([120 * (colour == 0), 60, 120 * (colour == 1)])
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


@pytest.fixture
def data(tmp_path):
    """A small image folder with one file copied from train into test under a hostile name, a
    resized and re-encoded near copy across the splits, and a text file named .jpg: its splits as
    check_images takes them."""
    rng = np.random.default_rng(0)
    splits = {"train": ([], []), "test": ([], [])}
    for split, n in (("train", 8), ("test", 4)):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                splits[split][0].append(_noise(tmp_path / split / name / f"{i}.png", rng, c))
                splits[split][1].append(c)
    copy = tmp_path / "test" / "cat" / HOSTILE
    shutil.copy(splits["train"][0][0], copy)
    splits["test"][0].append(copy)
    splits["test"][1].append(0)
    near = tmp_path / "test" / "dog" / "near.jpg"  # train/dog/1.png resized and re-encoded
    Image.open(splits["train"][0][9]).resize((40, 40)).save(near, quality=85)
    splits["test"][0].append(near)
    splits["test"][1].append(1)
    text = tmp_path / "train" / "dog" / "notes.jpg"
    text.write_text("not an image")
    splits["train"][0].append(text)
    splits["train"][1].append(1)
    return splits


def _metrics(splits, copies: int = 1) -> dict:
    """Test metrics, and the ones without the last ``copies`` test images (those copied), as the trainer records them."""
    labels = np.asarray(splits["test"][1])
    predicted = labels.copy()
    predicted[:2] = 1 - predicted[:2]  # two mistakes
    clean = np.ones(len(labels), bool)
    clean[len(labels) - copies :] = False
    return {"test": classification_metrics(labels, predicted, CLASSES),
            "test_clean": {**classification_metrics(labels[clean], predicted[clean], CLASSES), "images_with_copies": copies}}  # fmt: skip


def _section(text: str) -> str:
    start = text.index("<section id=check>")
    return text[start : text.index("</section>", start)]


def _figures(section: str) -> dict[str, str]:
    """title (the escaped path) -> the src of its thumbnail."""
    return dict(re.findall(r'<figure title="([^"]*)"><img src="([^"]*)"', section))


def _decoded(uri: str) -> Image.Image:
    assert uri.startswith("data:image/jpeg;base64,"), uri[:40]
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _checked(splits) -> dict:
    """check_images' report with embeddings: each image its own random direction, but the test
    image near.jpg that of train/dog/1.png (it is a resized copy); the likely label errors are set
    by hand (train/cat/2.png looks like a dog), as a probe on random directions finds none reliably."""
    rng = np.random.default_rng(3)
    embeddings = {split: rng.normal(0, 1, (len(paths), 64)) for split, (paths, _) in splits.items()}
    embeddings["test"][-1] = embeddings["train"][9] + rng.normal(0, 0.1, 64)
    embeddings["train"][-1] = 0  # the text file: no features
    report = check.check_images(splits, CLASSES, embeddings)
    report["label_errors"] = {**report.get("label_errors", {}), "count": 1, "by_split": {"train": 1, "test": 0}, "confused_pairs": [],
                              "examples": [{"path": str(splits["train"][0][2]), "given": "cat", "likely": "dog", "self_confidence": 0.0412}]}  # fmt: skip
    return json.loads(json.dumps(report))  # as metrics.json gives it back


def test_the_check_section_says_each_finding_and_shows_its_images(data, tmp_path):
    splits = data
    report = {"data": "pets", **_checked(splits)}
    assert [p["paths"] for p in report["near_duplicates"]["closest_across_splits"]] == [[str(splits["train"][0][9]), str(splits["test"][0][-1])]]
    metrics = _metrics(splits)
    summary = {"model": "m", "strategy": "linear", "test_acc": metrics["test"]["accuracy"], "test_acc_without_copies": metrics["test_clean"]["accuracy"],
               "test_images_with_copies": 1}  # fmt: skip
    out = tmp_path / "run"
    out.mkdir()
    labels = np.asarray(splits["test"][1])
    scored = {"test": (splits["test"][0], labels, np.eye(2, dtype=np.float32)[labels])}  # the split of each image shown comes from here
    text = write_html_report(out, title="pets", summary=summary, metrics=metrics, classes=CLASSES, history=[], scored=scored, check=report).read_text()
    section = _section(text)
    assert "<h2>Data check: pets</h2>" in section
    for line in check.summary_lines(report):  # one sentence a finding, as the check says it
        assert f"<li>{escape(line[:1].upper() + line[1:])}</li>" in section, line
    assert "Not images: 1 file named as images, e.g. " in section and "notes.jpg" in section
    # The cross-split copy: both files side by side, each a thumbnail inline.
    figures = _figures(section)
    original, copy = str(splits["train"][0][0]), str(splits["test"][0][-2])
    pair = re.search(r'<div class=pair>(.*?)</div>', section[section.index("id=check-exact"):]).group(1)
    assert str(escape(original)) in pair and str(escape(copy)) in pair
    assert re.findall(r"<b class=split>(\w+)</b>", pair) == ["train", "test"]
    for path in (original, copy):
        assert _decoded(figures[str(escape(path))]).size == (96, 96)
    # The near copy, with its cosine; the likely label error, with both labels.
    near = section[section.index("id=check-near"):]
    assert str(escape(splits["test"][0][-1])) in near and f"cosine {report['near_duplicates']['closest_across_splits'][0]['cosine']:.3f}" in near
    labels = section[section.index("id=check-labels"):]
    assert "filed as <b>cat</b>" in labels and "looks like <b class=err>dog</b>" in labels and 'title="' + str(escape(splits["train"][0][2])) in labels
    # The honest test accuracy beside the full one, with the warning.
    n = len(splits["test"][0])
    assert f"1 of {n} test images have a copy in train or val: the full test accuracy partly measures memory." in section
    full, clean = metrics["test"]["accuracy"], metrics["test_clean"]["accuracy"]
    assert f"<span class=big>{full:.1%}</span>test accuracy on all {n} test images" in section
    assert f"<span class=big>{clean:.1%}</span>on the {n - 1} without a copy ({100 * (clean - full):+.1f} points)" in section
    assert f"<tr><th>test accuracy without copies</th><td>{clean:.2%} (95% interval" in text
    assert "test acc without copies" not in text  # not again, as a raw number, among the other summary keys
    # The file name that is markup is text on the page.
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;.png" in section
    assert text.count("<script>") == 1
    assert "default-src 'none'; img-src data:;" in text


def test_nothing_found_is_one_line(tmp_path):
    rng = np.random.default_rng(1)
    splits = {"train": ([], []), "test": ([], [])}
    for split, n in (("train", 12), ("test", 3)):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                splits[split][0].append(_noise(tmp_path / "data" / split / name / f"{i}.png", rng, c))
                splits[split][1].append(c)
    report = check.check_images(splits, CLASSES)
    text = write_html_report(tmp_path, title="t", summary={}, metrics={}, classes=CLASSES, history=[], scored={}, check=report).read_text()
    section = _section(text)
    assert "<p class=ok>No problem found in 30 files.</p>" in section
    assert "<li>" not in section and "<figure" not in section and "class=warn" not in section


def test_a_check_of_images_in_memory_or_from_another_version_does_not_break_the_report(tmp_path):
    balance = check.class_balance({"train": [0] * 30 + [1] * 5}, CLASSES)
    in_memory = {"data": "arrays", "files_checked": False, "splits": {"train": 35}, "classes": CLASSES, "balance": balance}
    section = _section(write_html_report(tmp_path, title="t", summary={}, metrics={}, classes=CLASSES, history=[], scored={}, check=in_memory).read_text())
    assert "<li>Class imbalance: largest / smallest class = 6.0</li>" in section and "given in memory: their files were not checked" in section
    even = {**in_memory, "balance": check.class_balance({"train": [0] * 20 + [1] * 20}, CLASSES)}
    section = _section(write_html_report(tmp_path, title="t", summary={}, metrics={}, classes=CLASSES, history=[], scored={}, check=even).read_text())
    assert "No problem found in the class balance of 35 images (given in memory: their files were not checked)." in section
    odd = {"files": {"something": "else"}, "exact_duplicates": {"across_splits": {"examples": "not a list of groups"}}}
    section = _section(write_html_report(tmp_path, title="t", summary={}, metrics={}, classes=CLASSES, history=[], scored={}, check=odd).read_text())
    assert "could not be read by this version" in section and "<div class=pair>" not in section
    text = write_html_report(tmp_path, title="t", summary={}, metrics={}, classes=CLASSES, history=[], scored={}).read_text()
    assert "id=check" not in text


def test_a_trained_run_shows_its_check_and_report_rebuilds_it(tmp_path, monkeypatch):
    """`transferkit train` checks the data, records the check and the test accuracy without the
    copies in metrics.json and shows them; `transferkit report RUN` shows them again."""
    import transferkit

    rng = np.random.default_rng(2)
    for split, n in (("train", 8), ("test", 4)):
        for c, name in enumerate(CLASSES):
            for i in range(n):
                _noise(tmp_path / "data" / split / name / f"{i}.png", rng, c)
    shutil.copy(tmp_path / "data" / "train" / "cat" / "0.png", tmp_path / "data" / "test" / "cat" / "copy.png")
    run_dir = transferkit.train(str(tmp_path / "data"), tmp_path / "run", strategy="linear", model="pixels", progress=False).run_dir
    recorded = json.loads((run_dir / "metrics.json").read_text())
    assert recorded["check"]["exact_duplicates"]["across_splits"]["files"]["test"] == 1 and recorded["test_clean"]["images_with_copies"] == 1
    warning = "1 of 9 test images have a copy in train or val: the full test accuracy partly measures memory."
    for _ in range(2):
        text = (run_dir / "report.html").read_text()
        section = _section(text)
        assert warning in section and "test accuracy without copies" in text
        figures = _figures(section)
        assert any(t.endswith("copy.png") for t in figures) and all(src.startswith("data:image/jpeg;base64,") for src in figures.values())
        (run_dir / "report.html").unlink()
        monkeypatch.chdir(tmp_path)  # config.json names the data "data", as the folder is called
        rebuild_report(run_dir, engine="torch")


@pytest.mark.slow  # a browser: run with -m slow, as tests/test_browser.py
def test_the_check_section_renders_in_a_browser(data, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    chromium, chromedriver = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(chromium).exists() and Path(chromedriver).exists()):
        pytest.skip("no Chromium and chromedriver on this machine: apt-get install chromium chromium-driver (as .ci/run does)")
    splits = data
    report = _checked(splits)
    out = tmp_path / "run"
    out.mkdir()
    path = write_html_report(out, title="pets", summary={"model": "m"}, metrics=_metrics(splits), classes=CLASSES, history=[], scored={}, check=report)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(path.as_uri() + "#check")
        section = driver.find_element(By.ID, "check")
        assert section.is_displayed() and section.find_element(By.ID, "check-copies").is_displayed()
        images = driver.execute_script("return Array.from(document.querySelectorAll('#check img')).map(i => [i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
        assert len(images) >= 5 and all(done and natural > 0 and shown > 0 for done, natural, shown in images), images
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()
