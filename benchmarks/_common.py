"""Shared by the benchmark scripts: data discovery, machine description, results file."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "BENCHMARKS.md"
ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def cifar10_folder(data_dir: Path = ROOT / ".data") -> Path:
    """CIFAR-10 as JPEG folders, unpacked once from ../shared/datasets into a git-ignored folder."""
    folder = data_dir / "cifar10"
    if not (folder / "test").is_dir():
        if not ARCHIVE.is_file():
            sys.exit(f"CIFAR-10 archive not found at {ARCHIVE}; benchmarks need ../shared/datasets")
        data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xzf", str(ARCHIVE), "-C", str(data_dir)], check=True)
    return folder


def machine() -> str:
    """Cores, CPU model, its vector extensions (int8 and bfloat16 speeds hinge on VNNI and AVX-512), versions."""
    info = {}  # the first processor's "model name" and "flags"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu, flags = info.get("model name") or platform.processor() or "?", set(info.get("flags", "").split())
    import torch

    isa = torch.backends.cpu.get_cpu_capability()
    vnni = "VNNI" if flags & {"avx512_vnni", "avx_vnni"} else "no VNNI"
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} cores, {cpu} ({isa}, {vnni}){gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def synchronize(device) -> None:
    """Wait for the device's queued work, so that a host clock times it (a no-op on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def record(title: str, command: str, lines: list[str]) -> None:
    """Print the figures and append them, with the command, machine and date, to BENCHMARKS.md."""
    print("\n".join(lines))
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmarks\n\nFigures appended by the scripts in `benchmarks/`; each section says how it was made.\n")
    block = [f"\n## {title}", "", f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", f"- machine: {machine()}",
             f"- command: `{command}`", "", *lines, ""]  # fmt: skip
    with open(RESULTS, "a") as f:
        f.write("\n".join(block))


def command_line() -> str:
    import shlex

    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    return "python " + shlex.join([str(script), *sys.argv[1:]])
