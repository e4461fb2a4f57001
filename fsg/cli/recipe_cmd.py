"""`fsg recipe list` and `fsg recipe show`: the shipped recipes, and a recipe resolved and validated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsg.cli.common import JsonOpt, Report, SetOpt

recipe_app = typer.Typer(help="List and inspect recipes.", no_args_is_help=True)


@recipe_app.command("list")
def list_(json_out: JsonOpt = None) -> None:
    """List the shipped recipes with their description line; any command's --recipe takes these names from any folder.

    Example: fsg recipe list
    """
    from fsg.resources import list_recipes

    report = Report(json_out)
    recipes = list_recipes()
    width = max(map(len, recipes), default=0)
    for name, description in recipes.items():
        report.say(f"{name:<{width}}  {description}")
    report.result({"recipes": [{"name": name, "description": d} for name, d in recipes.items()]})


@recipe_app.command("show")
def show(path: Annotated[Path, typer.Argument(help="Recipe: a YAML file or a shipped name (tiny/edm_toy).")],
         set_: SetOpt = None) -> None:
    """Validate a recipe (with --set overrides) and print it fully resolved.

    Examples:
      fsg recipe show tiny/cd_toy --set train.lr=2e-4
      fsg recipe show recipes/edm_cifar10.yaml
    """
    from fsg.train.recipe import load_recipe, recipe_yaml

    typer.echo(recipe_yaml(load_recipe(path, set_ or [])), nl=False)
