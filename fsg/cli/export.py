"""`fsg export`: hand a trained model to another library (diffusers' ConsistencyModelPipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fsg.cli.common import JsonOpt, Report


def export(
    model: Annotated[str, typer.Argument(help="Model: run folder, checkpoint folder, .safetensors, public .pt, or a bundled name.")],
    diffusers: Annotated[Path, typer.Option("--diffusers", help="New (or empty) folder for diffusers' ConsistencyModelPipeline.")],
    json_out: JsonOpt = None,
) -> None:
    """Export a consistency model on the ADM network (CD, CT, iCT, ECT; e.g. a converted openai CM checkpoint) as a
    diffusers ConsistencyModelPipeline folder (UNet2DModel + CMStochasticIterativeScheduler). Needs `pip install
    'fsg[diffusers]'`. Other models (SongUNet/EDM networks, diffusion teachers, bridges, flow maps) are refused.

    Examples:
      fsg export runs/ct_imagenet64 --diffusers exported/ct_imagenet64
      fsg export models/cd_imagenet64_l2 --diffusers exported/cd_imagenet64_l2
    """
    from fsg.app.export import export_diffusers

    report = Report(json_out)
    result = export_diffusers(model, diffusers)
    s = result["scheduler"]
    report.say(f"wrote {result['out']}: UNet2DModel ({result['parameters']:,} parameters) + CMStochasticIterativeScheduler "
               f"(sigma {s['sigma_min']:g} to {s['sigma_max']:g}, sigma_data {s['sigma_data']:g}, "
               f"{s['num_train_timesteps']}-point grid)")
    report.say(f"load it with diffusers.ConsistencyModelPipeline.from_pretrained('{result['out']}')")
    report.result(result)
