"""`fsg eval-fid`: FID/KID of samples (a file or generated on the fly) against a reference, and reference statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from fsg.cli.common import DeviceOpt

_PANEL = "Paired (image-to-image)"


def _progress(console):
    """A `fsg.eval.fid.Progress` that draws a rich progress bar on stderr."""
    from rich.progress import track

    def wrap(batches, total, what):
        return track(batches, total=total, description=f"features of {what}", console=console, transient=True)

    return wrap


def _print_table(console, result) -> None:
    from rich.table import Table

    table = Table(title="fsg eval-fid", show_header=False)
    rows = [("samples", result.samples or f"{result.model} (generated)"), ("reference", result.ref),
            ("features", result.features), ("n", str(result.n))]
    if result.nfe is not None:
        rows.append(("NFE per sample", str(result.nfe)))
    rows.append(("FID", f"{result.fid:.4f}"))
    if result.kid is not None:
        rows.append(("KID", f"{result.kid:.6f} ± {result.kid_std:.6f}"))
    if result.mse is not None:
        rows.append(("MSE ([-1, 1])", f"{result.mse:.6f}"))
        rows.append(("LPIPS", "-" if result.lpips is None else f"{result.lpips:.4f}"))
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def eval_fid(
    samples: Annotated[Optional[str], typer.Option(help="Samples: .npz (arr_0 uint8 NHWC, or floats in [-1, 1]) or an image folder / .zip.")] = None,
    ref: Annotated[Optional[str], typer.Option(help="Reference: folder, .zip, images .npz (ADM reference batch), stats .npz, cifar10-train, digits or mnist5k.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Generate the samples on the fly from this model (streamed, never all in memory).")] = None,
    n: Annotated[int, typer.Option("-n", "--num", help="With --model: number of samples to generate.")] = 50_000,
    steps: Annotated[Optional[int], typer.Option(help="With --model: sampler steps (default: the model's).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="With --model: heun | euler | consistency | ... (default: the model's).")] = None,
    seed: Annotated[int, typer.Option(help="With --model: seed of the samples.")] = 0,
    make_ref: Annotated[Optional[str], typer.Option("--make-ref", help="Compute reference statistics of this folder / .zip / .npz / data set (with --out).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="With --make-ref: the statistics file to write (.npz).")] = None,
    kid: Annotated[bool, typer.Option("--kid", help="Also compute KID (with --make-ref: keep the raw features for it).")] = False,
    features: Annotated[str, typer.Option(help="Feature space: inception (clean-fid) or digits (fsg's digit CNN, for small data on CPU).")] = "inception",
    inception: Annotated[Optional[Path], typer.Option(help="inception-2015-12-05.pt (default: $FSG_INCEPTION, ~/.cache/fsg/, /tmp/).")] = None,
    ref_root: Annotated[Optional[Path], typer.Option(envvar="FSG_CIFAR10", help="Folder holding cifar-10-batches-py, for cifar10-train.")] = None,
    paired: Annotated[Optional[str], typer.Option(help="Targets matched to --samples by index (.npz / folder): adds MSE and, with --lpips, LPIPS.", rich_help_panel=_PANEL)] = None,
    lpips: Annotated[Optional[Path], typer.Option(envvar="FSG_LPIPS", help="Folder with vgg16-397923af.pth and LPIPS v0.1 vgg.pth.", rich_help_panel=_PANEL)] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the result as JSON (fid, kid, kid_std, n, nfe, model, ref, features, ...).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per feature batch.")] = 256,
    device: DeviceOpt = "auto",
) -> None:
    """FID (and KID) of samples against a reference, in clean-fid's protocol or fsg's digits feature space.

    Examples:
      fsg eval-fid --samples s.npz --ref digits --features digits --kid
      fsg eval-fid --samples samples/ --ref cifar10-train --ref-root ~/data --json fid.json
      fsg eval-fid --model runs/cd_cifar --steps 2 -n 50000 --ref cifar10_stats.npz
      fsg eval-fid --make-ref ~/data/cifar_png --out cifar10_stats.npz
    """
    from rich.console import Console

    from fsg.train.dist import resolve_device
    from fsg.errors import UserError
    from fsg.app import evaluate as fid_lib

    dev = resolve_device(device)
    console = Console(stderr=True)
    if make_ref is not None:
        if out is None or samples is not None or model is not None or ref is not None:
            raise UserError("--make-ref SOURCE needs --out FILE.npz and takes no --samples, --model or --ref")
        stats = fid_lib.make_reference(make_ref, out, features=features, inception=inception, with_kid=kid,
                                       batch_size=batch_size, device=dev, ref_root=ref_root, progress=_progress(console))
        typer.echo(f"wrote {out}: {stats.features} statistics of {stats.n} images of {stats.label}")
        return
    if ref is None:
        raise UserError("--ref is required (a folder, .npz, stats .npz, cifar10-train, digits or mnist5k)")
    rank, world = 0, 1
    if samples is None and model is None:
        from fsg.models.load import BUNDLED_MODEL

        model = BUNDLED_MODEL
        typer.echo("no --samples or --model given: generating with the bundled digits consistency model (assets/cd_digits)", err=True)
    if model is not None:
        from fsg.train.dist import init_distributed

        env = init_distributed(dev)
        rank, world = env.rank, env.world
    result = fid_lib.evaluate_fid(ref, samples=samples, model=model, n=n, steps=steps, sampler=sampler, seed=seed,
                                  features=features, inception=inception, with_kid=kid, paired=paired, lpips=lpips,
                                  batch_size=batch_size, device=dev, ref_root=ref_root, rank=rank, world=world,
                                  progress=_progress(console))
    if rank != 0:
        return
    _print_table(Console(), result)
    if json_out is not None:
        from fsg.io.checkpoint import atomic_write

        atomic_write(json_out, lambda tmp: Path(tmp).write_text(json.dumps(result.to_dict(), indent=2) + "\n"))
        typer.echo(f"wrote {json_out}")
