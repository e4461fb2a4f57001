"""The `fsg` command line: parse, call one library function, print. No math here.

`COMMANDS` and `GROUPS` are the registry of commands: a new command is a function in its module plus one line.
"""

from __future__ import annotations

import sys

import typer

from fsg.cli import convert, demo, edit, eval_fid, grow, recipe_cmd, sample, train, tune
from fsg.errors import EXIT_USER_ERROR, UserError

COMMANDS = {
    "train-diffusion": train.train_diffusion,
    "distill": train.distill,
    "train-consistency": train.train_consistency,
    "tune-sct": tune.tune_sct,
    "grow-decoder": grow.grow_decoder,
    "sample": sample.sample,
    "interpolate": edit.interpolate,
    "eval-fid": eval_fid.eval_fid,
    "convert": convert.convert,
    "demo": demo.demo,
}
GROUPS = {
    "edit": edit.edit_app,
    "recipe": recipe_cmd.recipe_app,
}

app = typer.Typer(
    name="fsg",
    help="Few-step generation: distil, train and tune 1-4 step generators; sample, edit and evaluate them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
for _name, _command in COMMANDS.items():
    app.command(_name)(_command)
for _name, _group in GROUPS.items():
    app.add_typer(_group, name=_name)


def main() -> None:
    """Console entry point: a UserError becomes one line on stderr and exit code 2."""
    try:
        app()
    except UserError as e:
        print(f"fsg: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
