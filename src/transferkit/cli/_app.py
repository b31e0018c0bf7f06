"""The Typer app and what every command shares: one-line errors, common options."""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Callable

import typer

from transferkit.errors import TransferkitError

app = typer.Typer(
    help="Transfer learning on images: pretrained backbones, cached features, new heads, fine-tuning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _debug() -> bool:
    return os.environ.get("TRANSFERKIT_DEBUG", "") not in ("", "0")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    if debug:
        os.environ["TRANSFERKIT_DEBUG"] = "1"


def command(name: str | None = None, *, app: typer.Typer = app, **kwargs: Any) -> Callable:
    """Register a command whose errors end as one readable line and exit code 1."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except (typer.Exit, typer.Abort):
                raise
            except KeyboardInterrupt:
                typer.echo("interrupted", err=True)
                raise typer.Exit(130) from None
            except TransferkitError as err:
                if _debug():
                    raise
                typer.echo(f"error: {err}", err=True)
                raise typer.Exit(1) from None
            except Exception as err:  # never a traceback without --debug
                if _debug():
                    raise
                message = str(err).splitlines()[0] if str(err) else ""
                typer.echo(f"error: {type(err).__name__}: {message} (rerun with --debug for details)", err=True)
                raise typer.Exit(1) from None

        return app.command(name, **kwargs)(wrapper)

    return register


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


MODEL = typer.Option("efficientnet_lite0", "--model", "-m", help="Backbone name (see `transferkit models`).")
WEIGHTS = typer.Option(None, "--weights", help="Pretrained weights file (safetensors or a state dict).")
TRUST_PICKLE = typer.Option(False, "--trust-pickle", help="Allow loading pickle files you trust (they can run code).")
NO_PRETRAINED = typer.Option(False, "--no-pretrained", help="Use random weights instead of pretrained ones.")
JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
