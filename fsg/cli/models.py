"""`fsg models`: the bundled models, which every `--model` option and `fsg.load` take by name from any folder."""

from __future__ import annotations

from fsg.cli.common import JsonOpt, Report


def models(json_out: JsonOpt = None) -> None:
    """List the bundled models with what each is; `--model NAME` (and `fsg.load("NAME")`) loads one from any folder.

    Examples:
      fsg models
      fsg sample --model edm_digits --steps 18 -n 64 --grid teacher.png
    """
    from fsg.resources import BUNDLED_MODELS, shipped

    report = Report(json_out)
    width = max(map(len, BUNDLED_MODELS))
    for name, what in BUNDLED_MODELS.items():
        report.say(f"{name:<{width}}  {what}")
    report.result({"models": [{"name": name, "description": what, "path": str(shipped("assets", name))}
                              for name, what in BUNDLED_MODELS.items()]})
