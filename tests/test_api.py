"""The Python API is the CLI's twin: each command is a function of transferkit by the same name,
with the same options."""

import inspect

import pytest
from typer.main import get_command

import transferkit
from transferkit.cli import app
from transferkit.training.options import FIELDS

PRESENTATION = {"as_json", "progress", "echo", "strict"}  # how a result is shown or checked, not what is computed
API_ONLY = {"advise": {"max_sample", "image_sizes"}}  # finer controls a notebook may want; the CLI keeps their defaults


def cli_options(name: str) -> set[str]:
    command = get_command(app).commands[name]
    return {p.name.removeprefix("no_") for p in command.params} - PRESENTATION  # --no-pretrained <-> pretrained=


def api_parameters(name: str) -> tuple[set[str], bool]:
    parameters = inspect.signature(getattr(transferkit, name)).parameters.values()
    named = {p.name for p in parameters if p.kind is not p.VAR_KEYWORD} - PRESENTATION
    return named, any(p.kind is p.VAR_KEYWORD for p in parameters)


@pytest.mark.parametrize("name", ["train", "evaluate", "classify", "extract", "advise", "compare", "export"])
def test_each_command_is_a_function_with_the_same_options(name):
    named, takes_train_options = api_parameters(name)
    # train and compare take every training option by keyword (options.TrainOptions), checked there
    api = named | (set(FIELDS) if takes_train_options else set())
    cli = cli_options(name)
    assert cli <= api, f"`transferkit {name}` options missing from transferkit.{name}: {sorted(cli - api)}"
    assert named - cli == API_ONLY.get(name, set()), f"transferkit.{name} parameters missing from the CLI: {sorted(named - cli)}"


def test_train_command_has_every_declared_option():
    assert cli_options("train") == set(FIELDS) | {"data", "out", "resume"}


def test_readme_quickstart_names_exist():
    for name in ("train", "evaluate", "classify", "extract", "advise", "compare", "export", "load_run", "predict", "load_backbone"):
        assert callable(getattr(transferkit, name)), name
    assert set(transferkit.__all__) >= {"train", "evaluate", "classify", "extract", "advise", "compare", "export", "load_run"}


def test_readme_table_of_each_strategys_options_matches_the_registry():
    """The README's table is read here, so it can never drift from options.STRATEGIES."""
    import re
    from pathlib import Path

    from transferkit.training.options import STRATEGIES, flag
    from transferkit.training.strategies import SHARED

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ((?:`--[\w-]+`(?:, )?)+) \|$", readme, re.M))
    for name, strategy in STRATEGIES.items():
        if strategy.kind == "auto":
            continue
        assert name in rows, f"README's table has no row for {name}"
        assert re.findall(r"`(--[\w-]+)`", rows[name]) == [flag(n) for n in FIELDS if n in strategy.options - SHARED], name
    shared_sentence = readme[readme.index("Every strategy uses") : readme.index("beyond those")]
    assert set(re.findall(r"`(--[\w-]+)`", shared_sentence)) == {flag(n) for n in SHARED - {"strategy"}} | {"--no-pretrained"}


def test_no_module_shadows_an_exported_function():
    """Importing a submodule binds it on the package: a module named like an exported function
    (train.py beside transferkit.train) replaced the function after its first import."""
    import importlib
    import pkgutil
    import types

    for module in pkgutil.walk_packages(transferkit.__path__, "transferkit."):
        if module.name != "transferkit.__main__":
            importlib.import_module(module.name)
    shadowed = [name for name in transferkit.__all__ if isinstance(getattr(transferkit, name), types.ModuleType)]
    assert not shadowed, f"modules shadow the package's functions: {shadowed}"
