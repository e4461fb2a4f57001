"""The `fsg` command line: parse, load a recipe, call one library function, print. No math here."""

from __future__ import annotations

import sys

import typer

from fsg.errors import EXIT_USER_ERROR, UserError

app = typer.Typer(
    name="fsg",
    help="Few-step generation: distil, train and tune 1-4 step generators; sample, edit and evaluate them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Each module registers its commands on `app` when imported.
from fsg.cli import recipe_cmd, train, sample  # noqa: E402,F401

for _optional in ("fsg.cli.eval_fid", "fsg.cli.convert", "fsg.cli.edit", "fsg.cli.tune", "fsg.cli.grow", "fsg.cli.demo"):
    try:
        __import__(_optional)
    except ModuleNotFoundError as _e:  # a command module that has not landed yet
        if _e.name != _optional:
            raise


def main() -> None:
    """Console entry point: a UserError becomes one line on stderr and exit code 2."""
    try:
        app()
    except UserError as e:
        print(f"fsg: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
