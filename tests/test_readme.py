"""Every code block of README.md runs, so the README cannot go stale.

Each ```bash / ```sh block runs line by line, and each ```python block as one script, in a fresh
folder holding the files the examples name (photo.jpg, new_photo.jpg, my_images/,
my_test_images/: crops of real photos), with the venv's bin on PATH. A block added to the
README is picked up by itself; a command this file does not know how to run fails the test
rather than being skipped. `make` lines (the set-up) cannot run inside the tests: their targets
are checked in the Makefile instead, and `make test` in the CI script.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHELLS = ("bash", "sh", "shell")
LANGUAGES = (*SHELLS, "python")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)

def code_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line of the opening fence, language, code) of each bash, sh or python block."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text) if m.group(1) in LANGUAGES]


def shell_commands(code: str) -> list[str]:
    """The block's commands, one per line (backslash continuations joined), comments dropped."""
    lines = code.replace("\\\n", " ").splitlines()
    return [line for line in lines if shlex.split(line, comments=True)]


BLOCKS = code_blocks(README.read_text())


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (REPO / "Makefile").read_text(), re.M))


def check_make(words: list[str], workdir: Path, env: dict) -> None:
    """A set-up command: each target it names is a Makefile target that `make -n` can plan."""
    targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    assert targets, f"`{shlex.join(words)}` names no target"
    for target in targets:
        assert target in makefile_targets(), f"README runs `make {target}`, which the Makefile does not define"
        planned = subprocess.run(["make", "-n", "-C", str(REPO), target], capture_output=True, text=True, env=env, timeout=60)
        assert planned.returncode == 0, f"`make -n {target}`: {planned.stderr}"


def run_transferkit(words: list[str], workdir: Path, env: dict) -> None:
    done = subprocess.run(words, cwd=workdir, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, f"`{shlex.join(words)}` exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


RUNNERS = {"transferkit": run_transferkit, "make": check_make}


@pytest.fixture
def workdir(tmp_path, photo_crops):
    """The files the README's examples name, as small real images."""
    classes = {"cat": "chelsea", "coffee": "coffee"}
    photo_crops(tmp_path / "my_images", classes, {"": 5}, seed=1, suffix=".jpg", size=96)
    photo_crops(tmp_path / "my_test_images", classes, {"": 3}, seed=2, suffix=".jpg", size=96)
    singles = photo_crops(tmp_path / "singles", {"photo": "chelsea", "new_photo": "coffee"}, {"": 1}, seed=3, suffix=".jpg", size=160, area=(0.5, 0.9))
    for name in ("photo", "new_photo"):
        (singles / name / "0.jpg").rename(tmp_path / f"{name}.jpg")
    return tmp_path


@pytest.mark.slow  # the quickstart trains, fine-tunes and exports on the real Lite0
@pytest.mark.parametrize("line, language, code", BLOCKS, ids=[f"{lang}-line{line}" for line, lang, _ in BLOCKS])
def test_readme_block_runs(line, language, code, workdir, monkeypatch):
    if language == "python":
        monkeypatch.chdir(workdir)
        exec(compile(code, f"{README.name}:{line}", "exec"), {"__name__": "__readme__"})
        return
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    commands = shell_commands(code)
    assert commands, f"README.md line {line}: an empty {language} block"
    for command in commands:
        words = shlex.split(command, comments=True)
        runner = RUNNERS.get(words[0])
        if runner is None:
            pytest.fail(f"README.md line {line} runs `{words[0]}`, which tests/test_readme.py cannot run: add it to RUNNERS")
        runner(words, workdir, env)


def test_readme_has_blocks_to_run():
    """The parser finds the README's examples (a changed fence style would otherwise pass silently)."""
    assert {lang for _, lang, _ in BLOCKS} >= {"bash", "python"}
    assert any("transferkit train" in code for _, _, code in BLOCKS)


def test_ci_runs_the_readme_test_command():
    """`make test`, the README's test command, is what the CI runs, and it runs the slow tests too."""
    readme_make = {tuple(shlex.split(c, comments=True)) for _, lang, code in BLOCKS if lang in SHELLS for c in shell_commands(code)}
    assert ("make", "test") in readme_make
    ci = [line.split("#")[0].split() for line in (REPO / ".ci" / "run").read_text().splitlines()]  # shell lines, not parsed as one
    assert ["make", "test"] in ci
    planned = subprocess.run(["make", "-n", "-C", str(REPO), "test"], capture_output=True, text=True, timeout=60)
    assert planned.returncode == 0 and re.search(r"pytest .*-m .slow or not slow", planned.stdout), planned.stdout
