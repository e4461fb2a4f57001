"""The `fsg` command line: parse, call one library function, print. No math here.

`COMMANDS` and `GROUPS` are the registry of commands: a new command is a function in its module plus one line.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from fsg.cli import convert, demo, edit, eval_fid, eval_toy, export, grow, models, phema, recipe_cmd, sample, train, tune
from fsg.cli.common import with_common_options
from fsg.errors import EXIT_NONFINITE, EXIT_PREEMPTED, EXIT_USER_ERROR, UserError

COMMANDS = {
    "train-diffusion": train.train_diffusion,
    "distill": train.distill,
    "train-consistency": train.train_consistency,
    "tune-sct": tune.tune_sct,
    "grow-decoder": grow.grow_decoder,
    "sample": sample.sample,
    "interpolate": edit.interpolate,
    "eval-fid": eval_fid.eval_fid,
    "eval-toy": eval_toy.eval_toy,
    "models": models.models,
    "convert": convert.convert,
    "phema": phema.phema,
    "export": export.export,
    "demo": demo.demo,
}
GROUPS = {
    "edit": edit.edit_app,
    "recipe": recipe_cmd.recipe_app,
}

EXIT_CODES = (f"Exit codes: 0 done; 1 a bug (with its traceback); {EXIT_USER_ERROR} a usage or user error (one line "
              f"'fsg: error: ...' on stderr); {EXIT_PREEMPTED} training stopped by a signal or --time-budget after writing a "
              f"checkpoint (continue with --resume auto); {EXIT_NONFINITE} training stopped on a non-finite loss (the last "
              "good checkpoint is kept).")

app = typer.Typer(
    name="fsg",
    help="Few-step generation: distil, train and tune 1-4 step generators; sample, edit and evaluate them.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        from fsg.version import __version__

        typer.echo(f"fsg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                          help="Print the version and exit.")] = None) -> None:
    """Few-step generation: distil, train and tune 1-4 step generators; sample, edit and evaluate them."""


for _name, _command in COMMANDS.items():
    app.command(_name)(with_common_options(_command))
for _name, _group in GROUPS.items():
    for _info in _group.registered_commands:
        _info.callback = with_common_options(_info.callback)
    app.add_typer(_group, name=_name)

# click's exceptions as typer raises them (typer >= 0.2x vendors click): the module that defines BadParameter
_CLICK = sys.modules[typer.BadParameter.__module__]


def _fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    print(f"fsg: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(code)


def main(args: list[str] | None = None) -> None:
    """Console entry point, with one error style: a UserError and a usage error of the command line (an unknown
    option, a missing or malformed value) become one line `fsg: error: ...` on stderr and exit code 2. `fsg` and
    `fsg GROUP` without a command print their help (exit 0)."""
    try:
        code = app(args=args, prog_name="fsg", standalone_mode=False)
    except UserError as e:
        _fail(str(e))
    except _CLICK.UsageError as e:
        if type(e).__name__ == "NoArgsIsHelpError":         # `fsg` alone: its help (rich has printed it), no error
            if e.format_message().strip():
                typer.echo(e.format_message())
            sys.exit(0)
        command = e.ctx.command_path if e.ctx is not None else "fsg"
        _fail(f"{e.format_message()} (see '{command} --help')")
    except _CLICK.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    except typer.Abort:
        print("fsg: aborted", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
