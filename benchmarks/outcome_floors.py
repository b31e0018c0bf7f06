"""Measure the outcome tests' accuracies under several seeds, to set their floors from the spread.

    python benchmarks/outcome_floors.py [--seeds 0,1,2,3,4] [--log outcomes.jsonl]

Runs `pytest -m slow tests/test_outcomes.py` once per seed (TRANSFERKIT_TEST_SEED), each run
appending every cell's validation and test accuracy to the log (a floor that fails does not
stop the measurement), then prints per cell the worst and best of min(val, test) over the seeds
and the floor rule's value: 0.10 under the worst, rounded down to 0.05, and never under
1/classes + 0.15 (a cell whose worst seed leaves no room for both is flagged).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).parents[1]
CLASSES = {"digits10": 10, "digits2": 2, "photos2": 2, "photos3": 3}
MARGIN = 0.10


def measure(seeds: list[int], log: Path) -> None:
    for seed in seeds:
        env = {**os.environ, "TRANSFERKIT_TEST_SEED": str(seed), "TRANSFERKIT_OUTCOMES_LOG": str(log)}
        command = [sys.executable, "-m", "pytest", "-q", "-m", "slow", "-p", "no:cacheprovider", "tests/test_outcomes.py"]
        print(f"seed {seed}: {' '.join(command)}", flush=True)
        subprocess.run(command, cwd=ROOT, env=env, check=False)


def table(log: Path) -> list[dict]:
    cells: dict[tuple[str, str], dict[int, float]] = defaultdict(dict)
    for line in log.read_text().splitlines():
        row = json.loads(line)
        cells[(row["data"], row["strategy"])][row["seed"]] = min(row["val"], row["test"])
    rows = []
    for (data, strategy), by_seed in sorted(cells.items()):
        worst, best = min(by_seed.values()), max(by_seed.values())
        floor = math.floor((worst - MARGIN) * 20 + 1e-9) / 20
        rows.append({"data": data, "strategy": strategy, "seeds": len(by_seed), "worst": worst, "best": best, "floor": floor,
                     "room": floor >= 1 / CLASSES[data] + 0.15 - 1e-9})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--log", type=Path, default=ROOT / ".data" / "outcomes.jsonl")
    parser.add_argument("--no-run", action="store_true", help="only summarise the log")
    args = parser.parse_args()
    if not args.no_run:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        measure([int(s) for s in args.seeds.split(",")], args.log)
    print("| data | strategy | seeds | worst min(val, test) | best | floor | room above one-class answers |")
    print("|---|---|---:|---:|---:|---:|---|")
    for r in table(args.log):
        print(f"| {r['data']} | {r['strategy']} | {r['seeds']} | {r['worst']:.4f} | {r['best']:.4f} | {r['floor']:.2f} | {'yes' if r['room'] else 'NO'} |")


if __name__ == "__main__":
    main()
