"""The Typer app and what every command shares: one-line errors, common options.

Every way a command can fail ends the same way: one line on stderr that starts with
``error:`` and a non-zero exit code (1 for a failed command, 2 for a bad command line), never
a traceback.  ``transferkit --debug CMD`` (or TRANSFERKIT_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from typing import Any, Callable

import typer
from typer.core import TyperGroup

from transferkit.core.errors import TransferkitError

# Click's exception base, as the Typer in use raises it (recent Typers vendor their own Click).
COMMAND_LINE_ERRORS = tuple(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException")
_state = {"debug": False}  # --debug, set by the root callback for this invocation only


def _debug() -> bool:
    return _state["debug"] or os.environ.get("TRANSFERKIT_DEBUG", "") not in ("", "0")


def printable(text: object) -> str:
    """``text`` safe for any terminal: file names that are not UTF-8 shown escaped (caf\\xe9.png)."""
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: object) -> str:
    """A message as one printable line: multi-line library messages joined with '; ', no
    terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", printable(text))
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def fail(message: object, code: int = 1) -> typer.Exit:
    """Print ``error: message`` as one line on stderr; returns the Exit to raise."""
    typer.echo(f"error: {one_line(message)}", err=True)
    return typer.Exit(code)


class _OneLineErrors(TyperGroup):
    """The root group: command-line mistakes (a bad option value, a missing argument, an
    unknown command) are one ``error:`` line too, instead of Click's usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        _state["debug"] = False
        streams = _robust_streams()
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except COMMAND_LINE_ERRORS as err:
            code = err.exit_code
            if type(err).__name__ == "NoArgsIsHelpError":  # the help is already printed
                sys.exit(code)
            hint = f" (see `{err.ctx.command_path} --help`)" if getattr(err, "ctx", None) is not None else ""
            fail(f"{err.format_message()}{hint}")
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            code = 1
        except Exception as err:  # raised outside a command's own wrapper (never without --debug)
            if _debug():
                raise
            fail(f"{type(err).__name__}: {err} (rerun with --debug for details)")
            code = 1
        finally:
            _restore_streams(streams)
        sys.exit(code if isinstance(code, int) else 0)


def _robust_streams() -> list[tuple[Any, str]]:
    """Let stdout/stderr print any file name (undecodable bytes escaped) instead of raising."""
    changed = []
    for stream in (sys.stdout, sys.stderr):
        errors = getattr(stream, "errors", None)
        if errors == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
                changed.append((stream, errors))
            except (ValueError, OSError):
                pass
    return changed


def _restore_streams(changed: list[tuple[Any, str]]) -> None:
    for stream, errors in changed:
        try:
            stream.reconfigure(errors=errors)
        except (ValueError, OSError):
            pass


app = typer.Typer(
    cls=_OneLineErrors,
    help="Transfer learning on images: pretrained backbones, cached features, new heads, fine-tuning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


def command(name: str | None = None, *, app: typer.Typer = app, **kwargs: Any) -> Callable:
    """Register a command whose errors end as one readable line and exit code 1."""

    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            try:
                return fn(*args, **kw)
            except (typer.Exit, typer.Abort, *COMMAND_LINE_ERRORS):  # the root group prints these as one line
                raise
            except KeyboardInterrupt:
                typer.echo("error: interrupted", err=True)
                raise typer.Exit(130) from None
            except TransferkitError as err:
                if _debug():
                    raise
                raise fail(err) from None
            except Exception as err:  # never a traceback without --debug
                if _debug():
                    raise
                message = str(err).splitlines()[0] if str(err) else ""
                raise fail(f"{type(err).__name__}: {message} (rerun with --debug for details)") from None

        return app.command(name, **kwargs)(wrapper)

    return register


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


MODEL = typer.Option("efficientnet_lite0", "--model", "-m", help="Backbone name (see `transferkit models`).")
WEIGHTS = typer.Option(None, "--weights", help="Pretrained weights file (safetensors or a state dict).")
TRUST_PICKLE = typer.Option(False, "--trust-pickle", help="Allow loading pickle files you trust (they can run code).")
NO_PRETRAINED = typer.Option(False, "--no-pretrained", help="Use random weights instead of pretrained ones.")
JSON = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
ENGINE = typer.Option(
    "auto", "--engine", help="auto | torch | onnxruntime (auto: ONNX Runtime on a CPU for 1,000 images or more, where installed)."
)
ALLOW_OUTSIDE_ROOT = typer.Option(
    False, "--allow-outside-root", help="CSV DATA: accept image paths outside the CSV's folder (absolute or ../)."
)
