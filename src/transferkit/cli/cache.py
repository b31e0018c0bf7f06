"""`transferkit cache list|remove`: see and free the feature cache and the ONNX exports beside it."""

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
    """List cached feature sets: backbone, layer, data, size, complete or not; and the ONNX exports' size."""
    from transferkit.core.feature_store import FeatureStore

    store = FeatureStore(cache_dir)
    entries = store.entries()
    if as_json:
        print_json(entries)
        return
    table = Table("key", "backbone", "layer", "data", "images", "dim", "MB", "complete", title=str(store.root))
    for e in entries:
        data = f"{e['dataset'] or '?'}/{e['split'] or '?'}"
        layer = (e["layer"] or "?") + (" (int8)" if e["quantize"] else "")
        table.add_row(e["key"][:12], e["backbone"] or "?", layer, data, str(e["count"] or "-"), str(e["dim"] or "-"), f"{e['bytes'] / 1e6:.1f}", "yes" if e["complete"] else "NO")
    Console().print(table)
    exports = store.engine_files()
    if exports:
        size = sum(f.stat().st_size for f in exports) / 1e6
        typer.echo(f"ONNX exports: {len(exports)} files, {size:.1f} MB in {store.engines_folder} (`cache remove --engines` frees them)")


@command("remove", app=cache_app)
def remove_cache(
    keys: list[str] = typer.Argument(None, help="Entry keys (or unique prefixes) to remove."),
    remove_all: bool = typer.Option(False, "--all", help="Remove every entry and every ONNX export."),
    engines: bool = typer.Option(False, "--engines", help="Remove the ONNX exports (made again when next needed)."),
    cache_dir: Path = CACHE_DIR,
) -> None:
    """Remove cache entries by key, the ONNX exports with --engines, or all of them with --all."""
    from transferkit.core.errors import TransferkitError
    from transferkit.core.feature_store import FeatureStore

    store = FeatureStore(cache_dir)
    if remove_all:
        keys = [e["key"] for e in store.entries()]
    elif not keys and not engines:
        raise TransferkitError("name the entries to remove (see `transferkit cache list`), or pass --engines or --all")
    removed = store.remove(keys or [])
    exports = store.remove_engine_files() if engines or remove_all else []
    typer.echo(f"removed {len(removed)} cache entr{'y' if len(removed) == 1 else 'ies'}" + (f" and {len(exports)} ONNX exports" if exports else ""))
