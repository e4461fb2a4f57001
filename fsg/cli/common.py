"""Options shared by every command, defined once so their names and help are the same everywhere, and the conventions
every command follows:

- `-n/--num` is the number of outputs; `--out/-o` the output path (a name ending in `/` or an existing folder is a
  folder, else a file whose suffix says its format; missing parent folders are made; it is checked before the work
  starts); `--batch-size` has one default (BATCH_SIZE) and never changes a result.
- `--json PATH` writes a command's result as one JSON object (`--json -`: on stdout, the text lines then go to stderr).
- Help texts are rich markup: `with_common_options` escapes what would read as a tag (`[t_min, T]`).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

RecipeOpt = Annotated[Optional[Path], typer.Option("--recipe", "-r", help="Recipe YAML file.", rich_help_panel="Common")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe key: --set train.lr=2e-4 (repeatable).", rich_help_panel="Common")]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run folder (config, metrics, checkpoints, samples, model).", rich_help_panel="Common")]
DeviceOpt = Annotated[str, typer.Option("--device", envvar="FSG_DEVICE", help="auto | cpu | cuda | cuda:N.", rich_help_panel="Common")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (overrides the recipe's train.seed).", rich_help_panel="Common")]
MaxStepsOpt = Annotated[Optional[int], typer.Option("--max-steps", rich_help_panel="Training", help=(
    "Stop after this many steps (at least 1). The recipe's train.max_steps stays the horizon of the learning-rate "
    "and method schedules, so a run stopped here and continued with --resume auto and a larger --max-steps trains "
    "exactly as one run would; past train.max_steps the schedules hold their last value. run.json records the stop."))]
ResumeOpt = Annotated[Optional[str], typer.Option("--resume", help="auto (latest checkpoint of the run folder) or a state file.", rich_help_panel="Training")]
ModelOpt = Annotated[Optional[Path], typer.Option("--model", "-m", help="Model: run folder, checkpoint folder or .safetensors (default: the bundled model).", rich_help_panel="Common")]


def parse_list(text: str | None, kind: type, option: str) -> list | None:
    """A comma-separated option value as a list of ints or finite floats (None when not given); a bad value is a
    UserError naming the option."""
    import math

    from fsg.errors import UserError

    if text is None or text == "":
        return None
    what = "integers" if kind is int else "numbers"
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{option}: expected comma-separated {what}, got '{text}'") from None
    if kind is float and not all(math.isfinite(v) for v in values):
        raise UserError(f"{option}: expected finite numbers, got '{text}'")
    return values


BATCH_SIZE = 64         # the default --batch-size of every command (EDM's generate.py; fits 512 px models)
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Samples or images per network batch (never changes a "
                                                                "result).")]
JsonOpt = Annotated[Optional[str], typer.Option("--json", metavar="PATH", rich_help_panel="Common",
                                                help="Also write the result as one JSON object to PATH ('-': to stdout; "
                                                     "the text lines then go to stderr).")]


class Report:
    """Where a result goes: text lines on stdout (on stderr with `--json -`) and, with `--json`, one JSON object. Made
    before the work starts: a --json PATH that cannot be written (not a .json file, below a file) is refused first."""

    def __init__(self, json_path: str | None):
        if json_path not in (None, "-"):
            from fsg.app.outputs import output_kind

            output_kind(json_path, (".json",), "--json")
        self.json_path = json_path

    def say(self, text: str) -> None:
        typer.echo(text, err=self.json_path == "-")

    def result(self, data: dict[str, Any]) -> None:
        """Write `data` as JSON (paths as strings) to --json's PATH atomically, or to stdout for '-'."""
        if self.json_path is None:
            return
        text = json.dumps(data, indent=2, default=str) + "\n"
        if self.json_path == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        from fsg.io.checkpoint import atomic_write

        path = Path(self.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        self.say(f"wrote {path}")


def parse_seeds(text: str | None, option: str = "--seeds") -> list[int] | None:
    """EDM's seed lists: '0-63' (both ends included), '0,5,10-20', '7' -> the seeds in the order given (None when not
    given); a malformed list, a negative or repeated seed is a UserError naming the option."""
    from fsg.errors import UserError

    if text is None or text.strip() == "":
        return None
    seeds: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            start, stop = int(lo), int(hi if sep else lo)
        except ValueError:
            raise UserError(f"{option}: expected seeds and ranges such as 0-63 or 0,5,10-20, got '{text}'") from None
        if start < 0 or stop < start:
            raise UserError(f"{option}: '{part.strip()}' is not a seed or a range of non-negative seeds, low to high")
        seeds.extend(range(start, stop + 1))
    if len(set(seeds)) != len(seeds):
        twice = next(s for i, s in enumerate(seeds) if s in seeds[:i])
        raise UserError(f"{option}: seed {twice} appears twice in '{text}'")
    return seeds


ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", envvar="FSG_THREADS", rich_help_panel="Common",
                                                   help="CPU threads of torch (default: the cores other jobs leave idle).")]


def with_common_options(command):
    """The command with the options every command takes (`--threads`), applied before it runs."""
    hints = {name: _escaped(hint) for name, hint in typing.get_type_hints(command, include_extras=True).items()}
    signature = inspect.signature(command)                              # (the module's string annotations resolved)
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]
    extra = inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ThreadsOpt)

    @functools.wraps(command)
    def wrapper(*args, threads=None, **kwargs):
        from fsg.runtime import configure_threads

        configure_threads(threads)
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*params, extra], return_annotation=None)
    wrapper.__annotations__ = {**hints, "threads": ThreadsOpt}
    wrapper.__doc__ = escape(command.__doc__) if command.__doc__ else None
    return wrapper


def _escaped(hint):
    """An `Annotated[T, typer.Option(help=...)]` with its help escaped for rich markup (a copy: the option objects are
    shared between commands), so that `[t_min, T - gamma]` is printed, not taken for a style tag."""
    if typing.get_origin(hint) is not Annotated:
        return hint
    base, *extras = typing.get_args(hint)
    escaped = []
    for info in extras:
        if isinstance(getattr(info, "help", None), str):
            info = copy.copy(info)
            info.help = escape(info.help)
        escaped.append(info)
    return Annotated[(base, *escaped)]
