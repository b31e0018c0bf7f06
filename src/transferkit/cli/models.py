"""`transferkit models`: the backbone zoo and what is available on this machine."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from transferkit.core.registry import REGISTRY, list_models
from transferkit.cli._app import JSON, command, print_json
from transferkit.core.weights import availability


@command("models")
def models(pattern: str = typer.Argument("*", help="Wildcard filter on names."), as_json: bool = JSON) -> None:
    """List the registered backbones: parameters, ImageNet top-1, input size, feature dim, weights."""
    rows = []
    for name in list_models(pattern):
        spec = REGISTRY[name]
        rows.append(
            {
                "name": name,
                "params": spec.params,
                "imagenet_top1": spec.imagenet_top1,
                "input_size": spec.input_size,
                "feature_dim": spec.feature_dim,
                "stages": len(spec.stages),
                "weights": availability(spec),
                "description": spec.description,
            }
        )
    if as_json:
        print_json(rows)
        return
    table = Table("name", "params", "top-1", "input", "features", "weights", "description")
    for r in rows:
        params = f"{r['params'] / 1e6:.1f}M" if r["params"] else "-"
        top1 = f"{r['imagenet_top1']:.1f}" if r["imagenet_top1"] else "-"
        table.add_row(r["name"], params, top1, str(r["input_size"]), str(r["feature_dim"]), r["weights"], r["description"])
    Console().print(table)
