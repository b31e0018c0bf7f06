"""`transferkit export`: a trained run as ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli._app import JSON, command, print_json


@command("export")
def export(
    run: Path = typer.Argument(..., help="A run folder written by `transferkit train`."),
    format: str = typer.Option("onnx", "--format", "-f", help="onnx | torchscript"),
    out: Path = typer.Option(None, "--out", "-o", help="Output file (default: inside the run folder)."),
    as_json: bool = JSON,
) -> None:
    """Export a trained run; fails if the exported outputs differ from PyTorch's."""
    from transferkit.api import export as run_export

    result = run_export(run, format=format, out=out)
    if as_json:
        print_json(result)
    else:
        typer.echo(f"wrote {result['path']} (max difference from PyTorch {result['max_abs_difference']:.1e})")
