"""The ``transferkit`` command: one Typer app, one module per command, each a thin layer."""

from __future__ import annotations

import sys

from transferkit.cli._app import app

# Importing the command modules registers their commands on ``app``.
from transferkit.cli import advise, cache, check, compare, demo, export, extract, models, predict, report, serve, train  # noqa: F401,E402


def main() -> None:
    app(prog_name="transferkit")


__all__ = ["app", "main"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
