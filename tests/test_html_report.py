"""report.html and leaderboard.html: self-contained, bounded in size, and true to the run."""

import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from transferkit.cli import app
from transferkit.core.html_report import (
    CLASSES_WITH_EXAMPLES, EXAMPLES_PER_CLASS, MISTAKES_SHOWN, THUMBNAIL_PX, write_html_report, write_leaderboard_html,
)  # fmt: skip
from transferkit.core.report import accuracy_interval, classification_metrics, most_confused


class Page(HTMLParser):
    """The parts of a page the tests look at: images, tables, links, scripts."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.tables, self.links, self.scripts = [], [], [], []
        self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self.tables.append({"class": attrs.get("class", ""), "rows": []})
        elif tag == "tr":
            self._row = []
            self.tables[-1]["rows"].append(self._row)
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self.links.append(attrs.get("href"))
        elif tag == "script":
            self.scripts.append(attrs)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def table(self, css_class: str) -> list[list[str]]:
        return next(t["rows"] for t in self.tables if css_class in t["class"].split())


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run: a linear head on the digits' raw pixels (seconds)."""
    from transferkit.api import train

    return train("digits", tmp_path_factory.mktemp("report") / "run", progress=False, strategy="linear", model="pixels").run_dir


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k,n", [(437, 450), (0, 10), (10, 10), (1, 3), (500, 1000)])
def test_accuracy_interval_is_wilsons(k, n):
    np.testing.assert_allclose(accuracy_interval(k, n), _wilson(k, n), atol=1e-9)
    low, high = accuracy_interval(k, n)
    assert 0 <= low <= k / n <= high <= 1


def test_most_confused_lists_off_diagonal_cells_largest_first():
    confusion = [[5, 2, 0], [1, 7, 3], [0, 0, 9]]
    pairs = most_confused(confusion, ["a", "b", "c"])
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("b", "c", 3), ("a", "b", 2), ("b", "a", 1)]
    assert pairs[0]["share"] == pytest.approx(3 / 11)
    assert most_confused(np.eye(3, dtype=int) * 4, ["a", "b", "c"]) == []


def test_report_rebuilt_from_a_run_is_self_contained_and_true_to_its_metrics(run_dir):
    result = CliRunner().invoke(app, ["report", str(run_dir), "--engine", "torch"])
    assert result.exit_code == 0, result.output
    text = (run_dir / "report.html").read_text()
    page = Page(text)
    recorded = json.loads((run_dir / "metrics.json").read_text())
    # Nothing from outside the file: no URL, every image inline, a policy that forbids the rest.
    assert not re.search(r"\s(?:src|href)\s*=\s*(?!['\"]?(?:data:|#))", text) and "http://" not in text and "https://" not in text
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert page.images and all(img["src"].startswith(("data:image/jpeg;base64,", "data:image/png;base64,")) for img in page.images)
    assert all(s.get("src") is None for s in page.scripts)
    # The numbers are the run's: scoring the same splits again gives the accuracy it recorded.
    for split in ("val", "test"):
        acc, count = recorded[split]["accuracy"], recorded[split]["count"]
        low, high = accuracy_interval(round(acc * count), count)
        assert f"{acc:.2%} (95% interval {low:.1%} to {high:.1%}, {count:,} images)" in text
        rows = page.table("per-class") if split == "val" else [t["rows"] for t in page.tables if "per-class" in t["class"]][1]
        assert [r[0] for r in rows[1:]] == [str(d) for d in range(10)]
        assert [int(r[4].replace(",", "")) for r in rows[1:]] == [recorded[split]["per_class"][str(d)]["support"] for d in range(10)]
    counts = page.table("counts")
    assert [[int(v) for v in row[1:]] for row in counts[1:]] == recorded["test"]["confusion_matrix"]
    mistakes = int(np.sum(recorded["test"]["confusion_matrix"]) - np.trace(recorded["test"]["confusion_matrix"]))
    assert f"{min(mistakes, MISTAKES_SHOWN)} of {mistakes:,} mistakes on 450 images" in text
    assert 0 < mistakes and len(page.table("confused")) - 1 == min(10, np.count_nonzero(np.asarray(recorded["test"]["confusion_matrix"]) - np.diag(np.diag(recorded["test"]["confusion_matrix"]))))
    assert "learning curves" in [img.get("alt") for img in page.images]
    for name in ("summary", "per-class-val", "per-class-test", "confusion", "curves", "mistakes", "examples"):
        assert f"id={name}>" in text, name


def test_report_on_new_data_shows_that_data_and_skips_bad_files(run_dir, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(30):
        folder = tmp_path / "new" / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.round(digits.images[i] * 255 / 16).astype(np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "new" / "3" / "broken.png").write_bytes(b"not an image")
    result = CliRunner().invoke(app, ["report", str(run_dir), "--data", str(tmp_path / "new"), "--engine", "torch"])
    assert result.exit_code == 0, result.output
    text = (run_dir / "report.html").read_text()
    assert "Per class: all split" in text and "30 images)" in text and "Most confident mistakes: all split" in text
    assert "1 image could not be read and is left out." in text


def test_report_rebuilt_from_a_planned_run_keeps_its_plan(run_dir, tmp_path):
    """`transferkit report RUN` shows the plan metrics.json recorded; on other data it leaves it out."""
    import shutil

    copy = tmp_path / "planned"
    shutil.copytree(run_dir, copy)
    recorded = json.loads((copy / "metrics.json").read_text())
    plan = {"chosen": "linear --model pixels", "expected_accuracy": 0.95, "command": "transferkit train digits --strategy linear --model pixels",
            "candidates": [{"recipe": "linear --model pixels", "expected_accuracy": 0.95, "cost_s": 4.0, "fits": True, "chosen": True, "evidence": "probe"}]}  # fmt: skip
    (copy / "metrics.json").write_text(json.dumps({**recorded, "plan": plan}))
    result = CliRunner().invoke(app, ["report", str(copy), "--engine", "torch"])
    assert result.exit_code == 0, result.output
    text = (copy / "report.html").read_text()
    assert "id=plan>" in text and "<tr class=chosen>" in text and f"{recorded['val']['accuracy']:.1%} val" in text


def test_report_commands_fail_in_one_line(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(run_dir), "--split", "test"])
    assert result.exit_code == 2 and "--split needs --data" in result.output
    config = json.loads((run_dir / "config.json").read_text())
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in run_dir.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    (moved / "config.json").write_text(json.dumps({**config, "data": "my_photos_folder_elsewhere"}))
    result = runner.invoke(app, ["report", str(moved)])
    assert result.exit_code == 1 and "name the images with --data" in result.output and len(result.output.strip().splitlines()) == 1


def test_a_report_of_10000_images_stays_small(tmp_path):
    """The budget is on thumbnails shown, not on images scored."""
    rng = np.random.default_rng(0)
    classes = [f"class {c}" for c in range(12)]
    n = 10_000
    samples = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
    labels = rng.integers(0, len(classes), n)
    logits = rng.normal(0, 1, (n, len(classes))) + 3 * np.eye(len(classes))[labels] * (rng.random(n) < 0.8)[:, None]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    metrics = {"test": classification_metrics(labels, probs.argmax(1), classes)}
    path = write_html_report(tmp_path, title="ten thousand", summary={"model": "m", "strategy": "s"}, metrics=metrics, classes=classes,
                             history=[{"epoch": e, "train_acc": 0.5 + e / 10, "val_acc": 0.4 + e / 10, "train_loss": 1 / (e + 1)} for e in range(4)],
                             scored={"test": (samples, labels, probs.astype(np.float32))})  # fmt: skip
    size = path.stat().st_size
    thumbnails = [img for img in Page(path.read_text()).images if img["src"].startswith("data:image/jpeg")]
    assert len(thumbnails) == MISTAKES_SHOWN + 2 * EXAMPLES_PER_CLASS * len(classes)
    assert size < 3_000_000, size
    first = thumbnails[0]["src"].split(",", 1)[1]
    import base64
    import io

    assert Image.open(io.BytesIO(base64.b64decode(first))).size == (THUMBNAIL_PX, THUMBNAIL_PX)


def test_class_names_and_file_names_are_escaped_and_a_plan_is_shown(tmp_path):
    classes = ["<script>alert(1)</script>", "a & b"]
    image = tmp_path / "x<y>.png"
    Image.new("RGB", (200, 100), (0, 128, 255)).save(image)
    hostile = tmp_path / "<img src=x onerror=alert(1)>.png"  # a file name that is markup
    Image.new("RGB", (20, 20), (255, 0, 0)).save(hostile)
    labels = np.array([0, 1, 0, 1])
    probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4]], np.float32)
    metrics = {"val": classification_metrics(labels, probs.argmax(1), classes)}
    plan = {"case": "small-similar", "evidence": {"probe_accuracy": 0.93, "images_per_class": 12}, "reasons": ["few images", "close to ImageNet"],
            "candidates": [{"strategy": "linear", "score": 0.9}, {"strategy": "finetune <b>", "score": 0.8}]}  # fmt: skip
    text = write_html_report(tmp_path, title="t <b>", summary={"note": "<script>alert(2)</script>"}, metrics=metrics, classes=classes, history=[],
                             scored={"val": ([image, image, tmp_path / "missing.png", hostile], labels, probs)}, plan=plan).read_text()  # fmt: skip
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a &amp; b" in text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in text and "finetune &lt;b&gt;" in text
    assert "t &lt;b&gt;" in text and "x&lt;y&gt;.png" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;.png" in text
    assert "missing.png: no such file" in text  # an image that cannot be read is named, not fatal
    page = Page(text)
    assert any(["probe accuracy", "0.93"] in t["rows"] for t in page.tables)
    assert "few images" in text and any(r[:2] == ["finetune <b>", "0.8"] for t in page.tables for r in t["rows"])
    assert text.count("<script>") == 1  # the table sorter only
    assert (tmp_path / "report.html").is_file() and not (tmp_path / "report.html.tmp").exists()


def test_leaderboard_html_ranks_by_validation_and_links_finished_cells(tmp_path):
    rows = [
        {"model": "pixels", "strategy": "linear", "layer": "penultimate", "status": "done", "val_acc": 0.61, "test_acc": 0.9, "params": 100},
        {"model": "efficientnet_lite0", "strategy": "linear", "layer": "penultimate", "status": "done", "val_acc": 0.93, "test_acc": 0.91, "params": 3_383_818},
        {"model": "lenet", "strategy": "finetune", "layer": "penultimate", "status": "failed", "reason": "out of <memory>"},
    ]  # fmt: skip
    (tmp_path / "efficientnet_lite0-linear-penultimate").mkdir()
    (tmp_path / "efficientnet_lite0-linear-penultimate" / "report.html").write_text("<html></html>")
    path = write_leaderboard_html(rows, tmp_path, "digits: networks x strategies")
    page = Page(path.read_text())
    table = page.tables[0]["rows"]
    assert [r[1] for r in table[1:]] == ["efficientnet_lite0", "pixels", "lenet"]
    assert table[1][table[0].index("val acc")].startswith("93.00%") and table[1][table[0].index("params")] == "3,383,818"
    assert page.links == ["efficientnet_lite0-linear-penultimate/report.html"]
    assert "out of &lt;memory&gt;" in path.read_text() and "Ranked by validation accuracy" in path.read_text()


def test_leaderboard_html_escapes_model_names_and_reasons(tmp_path):
    rows = [
        {"model": "<script>alert(1)</script>", "strategy": "linear", "layer": "penultimate", "status": "done", "val_acc": 0.5},
        {"model": "lenet", "strategy": "<b>finetune</b>", "layer": "penultimate", "status": "failed", "reason": "<img src=x onerror=alert(1)>"},
    ]  # fmt: skip
    text = write_leaderboard_html(rows, tmp_path, "a <i>title</i>").read_text()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "<b>finetune" not in text and "&lt;b&gt;finetune&lt;/b&gt;" in text and "a &lt;i&gt;title&lt;/i&gt;" in text
    assert text.count("<script>") == 1  # the table sorter only
    rows_seen = Page(text).tables[0]["rows"]
    assert rows_seen[1][1] == "<script>alert(1)</script>"  # shown as text, as named


def test_pages_inline_their_packaged_style_and_script_under_the_same_policy(tmp_path):
    """The style sheet and script are package files (found where the package is installed),
    pasted into each page: still one file, that loads nothing."""
    from importlib.resources import files

    templates = files("transferkit.core") / "templates"
    style, script = (templates / "report.css").read_text(), (templates / "sort.js").read_text()
    text = write_leaderboard_html([{"model": "m", "strategy": "s", "layer": "l", "status": "done", "val_acc": 0.5}], tmp_path, "t").read_text()
    assert f"<style>\n{style}</style>" in text and f"<script>\n{script}</script>" in text
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
    assert f"<meta http-equiv='Content-Security-Policy' content=\"{csp}\">" in text
