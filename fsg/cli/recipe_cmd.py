"""`fsg recipe show`: print the resolved, validated recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsg.cli.common import SetOpt

recipe_app = typer.Typer(help="Inspect recipes.", no_args_is_help=True)


@recipe_app.command("show")
def show(path: Annotated[Path, typer.Argument(help="Recipe YAML file.")], set_: SetOpt = None) -> None:
    """Validate a recipe (with --set overrides) and print it fully resolved.

    Example: fsg recipe show recipes/tiny/cd_toy.yaml --set train.lr=2e-4
    """
    from fsg.train.recipe import load_recipe, recipe_yaml

    typer.echo(recipe_yaml(load_recipe(path, set_ or [])), nl=False)
