"""`transferkit demo` idle and beside one competing busy process, in one script (issue 19).

Each run starts from an empty feature cache and its own output folder. The competing process is
a pure-Python busy loop, pinned to nothing: the OS shares the two cores between it and the demo.
With torch's threads + loader workers within the cores (loader.share_cores), the loaded run
should take about twice the idle one, not six times (5 min 35 s against 48 s before).

    python benchmarks/demo_under_load.py [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, record  # noqa: E402

TRANSFERKIT = str(Path(sys.executable).with_name("transferkit"))


def demo_seconds() -> float:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "TRANSFERKIT_CACHE": str(Path(folder) / "cache")}
        started = time.perf_counter()
        subprocess.run([TRANSFERKIT, "demo", "--out", str(Path(folder) / "demo")], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="idle/loaded pairs, alternating")
    args = parser.parse_args()
    rows = []
    for _ in range(args.rounds):
        idle = demo_seconds()
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            loaded = demo_seconds()
        finally:
            busy.kill()
            busy.wait()
        rows.append((idle, loaded))
        print(f"idle {idle:.0f} s, beside one busy process {loaded:.0f} s: {loaded / idle:.2f}x", flush=True)
    lines = ["| round | idle s | beside one busy process s | ratio |", "|---|---|---|---|"]
    lines += [f"| {i} | {idle:.0f} | {loaded:.0f} | {loaded / idle:.2f}x |" for i, (idle, loaded) in enumerate(rows, 1)]
    record("make demo beside one competing busy process (threads + workers within the cores)", command_line(), lines)


if __name__ == "__main__":
    main()
