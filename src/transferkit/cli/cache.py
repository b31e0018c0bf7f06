"""`transferkit cache list|remove`: see and free the feature cache."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from transferkit.cli._app import JSON, app, command, print_json
from transferkit.cli.extract import CACHE_DIR

cache_app = typer.Typer(help="See and free the bottleneck-feature cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@command("list", app=cache_app)
def list_cache(cache_dir: Path = CACHE_DIR, as_json: bool = JSON) -> None:
    """List cached feature sets: backbone, layer, data, size, complete or not."""
    from transferkit.features import cache_root, list_entries

    entries = list_entries(cache_dir)
    if as_json:
        print_json(entries)
        return
    table = Table("key", "backbone", "layer", "data", "images", "dim", "MB", "complete", title=str(cache_root(cache_dir)))
    for e in entries:
        data = f"{e['dataset'] or '?'}/{e['split'] or '?'}"
        layer = (e["layer"] or "?") + (" (int8)" if e["quantize"] else "")
        table.add_row(e["key"][:12], e["backbone"] or "?", layer, data, str(e["count"] or "-"), str(e["dim"] or "-"), f"{e['bytes'] / 1e6:.1f}", "yes" if e["complete"] else "NO")
    Console().print(table)


@command("remove", app=cache_app)
def remove_cache(
    keys: list[str] = typer.Argument(None, help="Entry keys (or unique prefixes) to remove."),
    remove_all: bool = typer.Option(False, "--all", help="Remove every entry."),
    cache_dir: Path = CACHE_DIR,
) -> None:
    """Remove cache entries by key, or all of them with --all."""
    from transferkit.errors import TransferkitError
    from transferkit.features import list_entries, remove_entries

    if remove_all:
        keys = [e["key"] for e in list_entries(cache_dir)]
    elif not keys:
        raise TransferkitError("name the entries to remove (see `transferkit cache list`) or pass --all")
    removed = remove_entries(keys, cache_dir)
    typer.echo(f"removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'}")
