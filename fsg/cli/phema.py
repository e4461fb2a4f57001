"""`fsg phema`: a post-hoc EMA of any length from the snapshots of a run trained with `train.phema`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def phema(
    run: Annotated[Path, typer.Argument(help="Run folder trained with train.phema (or its phema/ folder of snapshots).")],
    std: Annotated[float, typer.Option("--std", help="Relative std sigma_rel of the EMA profile to reconstruct, in (0, 0.2887); EDM2's best lie in 0.04-0.2.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="DIR (writes DIR/model.safetensors) or FILE.safetensors.")],
    step: Annotated[Optional[int], typer.Option("--step", help="End the profile at this snapshot step (default: the last).")] = None,
) -> None:
    """Reconstruct the power-function EMA with relative std --std from a run's stored profiles (Karras et al. 2024,
    Alg. 3), without training again; the result samples like any model.

    Examples:
      fsg phema runs/edm2_digits --std 0.10 --out models/edm2_digits_ema010
      fsg phema runs/edm2_img64_s --std 0.075 --step 524288 --out models/img64_s_0.075.safetensors
    """
    from fsg.app.phema import reconstruct_phema

    result = reconstruct_phema(run, std, out, step)
    typer.echo(f"EMA std {result.std:g} at step {result.step} from {result.inputs} snapshots "
               f"(largest |coefficient| {result.largest:.3g})")
    typer.echo(f"wrote {result.path}")
