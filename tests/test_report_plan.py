"""report.html's plan section: the planner's record (--strategy auto) as a person reads it."""

import re
from html import unescape
from html.parser import HTMLParser

import numpy as np
import pytest

from transferkit.core.html_report import write_html_report
from transferkit.core.report import classification_metrics

CLASSES = ["keep left", "keep right", "stop", "yield"]

AUGMENTATION = """\
Probes on stage3 at 64 px (3.2 s): a linear probe trained on the original images: 95.0% on 80 validation images, 52.5% on their mirror images; \
2 of 4 classes do not survive a mirror image: keep left (95% -> 5%, taken for keep right), keep right (90% -> 10%, taken for keep left); no mirroring (and no --flip-tta)

| class | images | accuracy | mirrored | mirror images taken for | breaks |
|---|---:|---:|---:|---|---|
| keep left | 20 | 95.0% | 5.0% | keep right (90%) | yes |
| keep right | 20 | 90.0% | 10.0% | keep left (85%) | yes |
| yield | 20 | 95.0% | 90.0% | stop (5%) |  |
| stop | 20 | 100.0% | 100.0% |  |  |

crops keeping 50% of the area or more stay within 5% of the whole images' 95.0% (35%: 85.0%)

| crop (share of area) | accuracy | within tolerance |
|---:|---:|---|
| whole image | 95.0% | |
| 0.35 | 85.0% | no |
| 0.50 | 93.0% | yes |
| 0.75 | 95.0% | yes |"""

CHOSEN = "finetune --model efficientnet_lite0 --image-size 128 --unfreeze 2 --epochs 4 --no-mirror --crop-scale 0.5"


def plan_record(mirror: bool = False) -> dict:
    """A small record with the keys plan.auto.plan writes (curves keyed by strings, as metrics.json has them)."""
    record = {
        "budget_s": 600.0, "budget_given": False, "planning_s": 95.3, "chosen": CHOSEN, "expected_accuracy": 0.91,
        "training_time_limit_s": 480.2, "command": f"transferkit train signs --strategy {CHOSEN}",
        "case": "small-different", "augmentation": AUGMENTATION,
        "evidence": {
            "layer_accuracy": {"penultimate": 0.8, "stage3": 0.95, "stage2": 0.7},
            "linear_probe": {"efficientnet_lite0 penultimate @128": {"curve": {"66": 0.6, "133": 0.7, "266": 0.78}, "expected_full": 0.86, "val_sample": 0.8},
                             "efficientnet_lite0 penultimate @64": {"curve": {"66": 0.55, "133": 0.64, "266": 0.7}, "expected_full": 0.8, "val_sample": 0.72}},
            "flip_tta_gain": {"efficientnet_lite0 penultimate @128": -0.012},
            "end_to_end_probe": {"finetune-last-groups @128": {"curve": {"200": 0.75, "400": 0.84}, "linear_val_sample": 0.8, "seconds": 30.1,
                                                               "estimated_s": 28.0, "expected_full": 0.91}},
            "rbf_probe": {"pixels": {"curve": {"66": 0.3, "133": 0.35, "266": 0.41}, "expected_full": 0.5}},
        },
        "candidates": [
            {"recipe": CHOSEN, "expected_accuracy": 0.91, "cost_s": 402.5, "fits": True, "chosen": True, "evidence": "finetune-last-groups at 128 px on the sample"},
            {"recipe": "finetune --model efficientnet_lite0 --image-size 224 --epochs 4", "expected_accuracy": 0.93, "cost_s": 1905.0, "fits": False, "chosen": False,
             "evidence": "extended"},
            {"recipe": "linear --model efficientnet_lite0 --image-size 128", "expected_accuracy": 0.86, "cost_s": 41.0, "fits": True, "chosen": False,
             "evidence": "linear probe 78.0% on 266 images (3-fold), extrapolated to 4,000"},
        ],
        "notes": ["chose finetune: expected 91.0% in about 6 min 42 s of the 8 min 25 s left", "with --time-budget 35m: finetune at 224 px, expected 93.0%"],
    }  # fmt: skip
    if mirror:  # the structured form the planner also writes: preferred to the Markdown table
        record["mirror"] = {"decision": "off", "layer": "stage3", "classes": [
            {"class": "keep left", "images": 20, "mirrored_as": "keep right", "mirrored_as_share": 0.9, "breaks": True},
            {"class": "keep right", "images": 20, "mirrored_as": "keep left", "mirrored_as_share": 0.85, "breaks": True},
            {"class": "yield", "images": 20, "mirrored_as": "stop", "mirrored_as_share": 0.05, "breaks": False},
            {"class": "stop", "images": 20, "mirrored_as": None, "mirrored_as_share": 0.0, "breaks": False}]}  # fmt: skip
    return record


def metrics_where(confused: tuple[str, str]) -> dict:
    """Val and test metrics where ``confused`` (true, predicted) is the most confused pair."""
    labels = np.repeat(np.arange(len(CLASSES)), 25)
    a, b = CLASSES.index(confused[0]), CLASSES.index(confused[1])
    test = labels.copy()
    test[np.flatnonzero(labels == a)[:6]] = b  # 94% right
    others = [c for c in range(len(CLASSES)) if c not in (a, b)]
    val = test.copy()
    val[np.flatnonzero(labels == others[0])[:2]] = others[1]  # 92% right
    return {"val": classification_metrics(labels, val, CLASSES), "test": classification_metrics(labels, test, CLASSES)}


def report(tmp_path, plan: dict, confused=("keep left", "keep right"), config: str | None = None) -> str:
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    metrics = metrics_where(confused)
    summary = {"data": "signs", "model": "efficientnet_lite0", "strategy": "finetune", "layer": "penultimate", "image_size": 128, "train_images": 4000,
               "val_acc": metrics["val"]["accuracy"], "test_acc": metrics["test"]["accuracy"], "planned_by": "auto", "wall_seconds": 590.0}  # fmt: skip
    return write_html_report(tmp_path, title="signs", summary=summary, metrics=metrics, classes=CLASSES, history=[], scored={}, plan=plan).read_text()


class Rows(HTMLParser):
    """Each table's class and its rows: (the row's class, its cells' text)."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self._cell = [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append((attrs.get("class") or "", []))
        elif tag == "tr":
            self.tables[-1][1].append((attrs.get("class") or "", []))
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1][1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, css: str) -> list[tuple[str, list[str]]]:
        return next(rows for cls, rows in self.tables if css in cls.split())


def plan_section(text: str) -> str:
    return text[text.index("id=plan>") : text.index("id=per-class-val>")]


def words(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


@pytest.mark.parametrize("structured", [False, True], ids=["markdown", "record-mirror"])
def test_the_plan_reads_as_a_choice_its_candidates_curves_and_decisions(tmp_path, structured):
    text = report(tmp_path, plan_record(mirror=structured))
    section = plan_section(text)
    said = words(section)
    # the candidates, the chosen one marked, with what the run got beside what was expected
    rows = Rows(text).rows("candidates")
    assert rows[0][1][:4] == ["recipe", "expected", "got", "cost"]
    chosen = [cells for cls, cells in rows if cls == "chosen"]
    assert len(chosen) == 1 and chosen[0][0] == f"{CHOSEN} chosen"
    assert chosen[0][1] == "91.0%" and chosen[0][2] == "92.0% val, 94.0% test" and chosen[0][3] == "6 min 42 s" and chosen[0][4] == "yes"
    assert [cells[4] for cls, cells in rows[1:]] == ["yes", "no", "yes"] and rows[2][1][3] == "31 min 45 s"
    assert "expected 91.0%; the run got 92.0% on the validation split (+1.0 points) and 94.0% on the test split (+3.0 points)" in said
    # the probes' learning curves, a PNG inline
    assert re.search(r"<img class=plot alt='learning curves of the probes' src=\"data:image/png;base64,[A-Za-z0-9+/=]{1000,}\">", section)
    assert "extrapolated to all 4,000 training images" in said
    # each decision, one sentence with its evidence; the probes' tables as tables
    assert "Mirroring: off — 2 of 4 classes do not survive a mirror image: keep left (95% -> 5%, taken for keep right)" in said
    assert "no mirroring (and no --flip-tta) (a linear probe trained on the original images: 95.0% on 80 validation images, 52.5% on their mirror images; on stage3 features at 64 px, in 3.2 s)" in said
    mirror_table = Rows(section).rows("evidence")
    assert mirror_table[0][1] == ["class", "images", "accuracy", "mirrored", "mirror images taken for", "breaks"]
    assert mirror_table[1][1] == ["keep left", "20", "95.0%", "5.0%", "keep right (90%)", "yes"] and len(mirror_table) == 5
    crop_table = [rows for cls, rows in Rows(section).tables if "evidence" in cls.split()][1]
    assert crop_table[2][1] == ["0.35", "85.0%", "no"]
    assert "Crops: random crops keep at least 50% of the area — crops keeping 50% of the area or more stay within 5%" in said
    assert "Mirror images at test time (--flip-tta): not used — averaging" in said and "-1.2 points (efficientnet_lite0 penultimate @128)" in said
    assert "Layer: penultimate, the network trained end to end (finetune) — a linear probe on each layer's features, scored on the validation sample: stage3 95.0%, penultimate 80.0%, stage2 70.0%." in said
    assert "Input size: 128 px — extrapolated to all 4,000 training images, a linear head expects 80.0% at 64 px, 86.0% at 128 px" in said
    assert "finetune-last-groups at 128 px 91.0%" in said
    assert ("Budget: 10 min, the default for 4,000 training images (set --time-budget to change it) — 1 min 35 s of it went on measuring; "
            "the chosen recipe was expected to take about 6 min 42 s; training was held to 8 min; the whole run took 9 min 50 s") in said  # fmt: skip
    assert "Four-case guide: small-different — few training images a class; an earlier stage" in said
    assert "<li>with --time-budget 35m: finetune at 224 px, expected 93.0%</li>" in section
    assert f"<pre><code>transferkit train signs --strategy {CHOSEN}</code></pre>" in section
    # nothing printed raw: no Python dict, no Markdown table, nothing left over
    assert "{'" not in section and "|---" not in section and "| class |" not in section and "Other details" not in section


def test_a_mirror_pair_among_the_most_confused_is_named_with_what_to_do(tmp_path):
    mirrored = '{"strategy": "finetune", "augment": "light", "mirror": true}'
    text = report(tmp_path, plan_record(), config=mirrored)
    said = words(text[text.index("id=confusion>") :])
    assert ("keep left and keep right are confused most, and they are each other's mirror images, as the plan's mirror test found: "
            "the run mirrored its training images: train again without mirroring (--no-mirror).") in said  # fmt: skip
    assert text.index("id=mirror-pair") > text.index("id=confusion>")
    # the structured record says so too; a run that did not mirror hears that mirroring is not the cause
    text = report(tmp_path, plan_record(mirror=True), config='{"strategy": "finetune", "augment": "light", "mirror": false}')
    assert "the run did not mirror its images, so mirroring is not what confuses them" in words(text)
    (tmp_path / "config.json").unlink()
    assert "train without mirroring (--no-mirror) if the run mirrored" in words(report(tmp_path, plan_record(mirror=True)))


@pytest.mark.parametrize("structured", [False, True], ids=["markdown", "record-mirror"])
def test_no_mirror_sentence_when_the_most_confused_pairs_are_not_mirror_images(tmp_path, structured):
    # yield's mirror images were taken for stop now and then, but yield does not break: not a mirror pair
    text = report(tmp_path, plan_record(mirror=structured), confused=("yield", "stop"))
    assert "id=mirror-pair" not in text and "mirror images, as the plan" not in text
    assert "id=confusion>" in text


def test_a_plan_without_probes_or_with_unknown_keys_still_reads(tmp_path):
    record = {"chosen": "linear --model pixels", "expected_accuracy": 0.9, "budget_s": 120, "budget_given": True, "planning_s": 3.0,
              "training_time_limit_s": None, "augmentation": "a paragraph this report does not know\n\n| a | b |\n|---|---:|\n| x | 1 |",
              "evidence": {"probe_accuracy": 0.93}, "notes": ["<script>alert(1)</script>"],
              "extra": {"a": [1, 2]}, "command": "transferkit train '<b>x</b>' --strategy linear",
              "candidates": [{"recipe": "linear --model pixels", "expected_accuracy": 0.9, "cost_s": 5.0, "fits": True, "chosen": True, "evidence": "x"}]}  # fmt: skip
    text = report(tmp_path, record)
    said = words(plan_section(text))
    assert "Budget: 2 min, given with --time-budget — 3.0 s of it went on measuring" in said and "no training time limit" in said
    assert "Mirroring" not in said and "learning curves" not in said and "id=mirror-pair" not in text
    assert "<p>a paragraph this report does not know</p>" in text and Rows(text).rows("evidence")[1][1] == ["x", "1"]  # the probes' text, not dropped
    assert "Other details of the plan" in said and "probe accuracy 0.93" in said and "{'" not in text
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;b&gt;x&lt;/b&gt;" in text  # escaped, as every value is
