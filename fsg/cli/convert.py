"""`fsg convert`: turn a public checkpoint (CM/DDBM .pt, EDM/ECT .pkl) into an fsg model file, or describe it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fsg.cli.common import SetOpt


def convert(
    src: Annotated[Path, typer.Argument(help="Checkpoint: .pt/.pth (openai CM, DDBM), .pkl (EDM, ECT) or an fsg model.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="DIR (writes DIR/model.safetensors) or FILE.safetensors.")] = None,
    info: Annotated[bool, typer.Option("--info", help="Print the inferred configuration and the exact parameter count.")] = False,
    set_: SetOpt = None,
) -> None:
    """Convert once, then load fast and safely (safetensors, no pickle).

    Examples:
      fsg convert cd_imagenet64_l2.pt --out models/cd_imagenet64_l2
      fsg convert edm-cifar10-32x32-uncond-vp.pkl --info
      fsg convert e2h_ema_0.9999_420000.pt --out models/e2h --set network.num_head_channels=64
    """
    import yaml

    from fsg.app.outputs import FOLDER, output_kind
    from fsg.errors import UserError
    from fsg.io.checkpoint import MODEL_FILE
    from fsg.io.config import apply_overrides
    from fsg.models.importers import parameter_count, read_checkpoint, save_converted

    if out is None and not info:
        raise typer.BadParameter("give --out DIR|FILE.safetensors, or --info to only describe the checkpoint", param_hint="--out")
    if out is not None:                       # checked before the checkpoint is read: a model is never written over
        kind = output_kind(out, (FOLDER, ".safetensors"))
        dst = out / MODEL_FILE if kind == FOLDER else out
        if dst.exists():
            raise UserError(f"--out {out}: {dst} exists; convert into a new folder or file (fsg never writes over a model)")
    state, meta = read_checkpoint(src, **apply_overrides({}, set_ or []))
    if info:
        n = parameter_count(meta)
        typer.echo(yaml.safe_dump(meta, sort_keys=False, default_flow_style=None), nl=False)
        typer.echo(f"parameters: {n:,} ({n})")
    if out is not None:
        typer.echo(f"wrote {save_converted(out, state, meta)}")
