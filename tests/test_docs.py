"""Docs that describe the code are checked against it, so they cannot drift."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_module_list_matches_the_package():
    listed = set(re.findall(r"^\| `([\w/]+(?:\.py)?)` \|", (ROOT / "docs" / "modules.md").read_text(), re.M))
    present = {p.name for p in (ROOT / "src" / "transferkit").glob("*.py")} | {"cli/"}
    assert listed == present, f"in docs/modules.md only: {sorted(listed - present)}; in the package only: {sorted(present - listed)}"
