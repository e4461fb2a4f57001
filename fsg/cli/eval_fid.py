"""`fsg eval-fid`: the papers' evaluation protocols on samples (files or generated on the fly) against a reference,
stamped with what was measured; and reference statistics in the papers' formats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fsg.cli.common import BATCH_SIZE, BatchSizeOpt, DeviceOpt, JsonOpt, Report

_PANEL = "Paired (image-to-image)"
_PROTOCOL_HELP = ("fsg (default: FID in --features) | clean | legacy-tf (clean-fid's modes) | edm (FID, min and mean of "
                  "3 x 50,000) | edm2 (FID, FD_DINOv2) | adm (FID, sFID, IS, precision, recall) | bridge (FID, IS, "
                  "LPIPS, MSE; one sample per pair).")
_LABELS = {"fid": "FID", "kid": "KID", "kid_std": "KID std", "sfid": "sFID", "is": "Inception Score",
           "precision": "precision", "recall": "recall", "fd_dinov2": "FD_DINOv2", "mse": "MSE ([-1, 1])",
           "lpips": "LPIPS"}


def _progress(console):
    """A `fsg.eval.fid.Progress`: a bar on a terminal, plain lines with the ETA off one."""
    from fsg.progress import track

    def wrap(batches, total, what):
        return track(batches, total, f"features of {what}", stream=console.file)

    return wrap


def _number(value) -> str:
    return "-" if value is None else f"{value:.6g}"


def _print_result(console, result) -> None:
    from rich.table import Table

    stamp = result.stamp
    several = result.mean is not None
    table = Table(title=f"fsg eval-fid --protocol {result.protocol}", show_header=several)
    with_mean = several and result.headline != "mean"
    columns = ["metric", result.headline if several else "value"] + (["mean"] if with_mean else [])
    for column in columns + ([s["set"] for s in result.sets] if several else []):
        table.add_column(column)
    for key, value in result.metrics.items():
        row = [_LABELS.get(key, key), _number(value)] + ([_number(result.mean[key])] if with_mean else [])
        table.add_row(*row, *([_number(s[key]) for s in result.sets] if several else []))
    console.print(table)
    lines = [
        ("evaluator", f"{stamp.evaluator} (protocol {stamp.protocol})"),
        ("features", ", ".join(f"{name} sha256 {sha or 'unknown'}" for name, sha in stamp.features.items())),
        ("reference", f"{stamp.reference} ({stamp.reference_format}, sha256 {stamp.reference_sha256 or 'unknown'})"),
        ("samples", ", ".join(f"{n:,}" for n in stamp.n) + (f" (protocol: {stamp.protocol_n:,} per set)" if stamp.protocol_n else "")),
    ]
    if stamp.model is not None:
        lines += [("model", f"{stamp.model} (sha256 {stamp.model_sha256 or 'unknown'})"),
                  ("seeds", f"{', '.join(stamp.seeds)} of --seed {stamp.seed}"),
                  ("sampler", f"{stamp.sampler}, NFE {stamp.nfe}" + (f", --steps {stamp.steps}" if stamp.steps else ""))]
    else:
        lines.append(("files", ", ".join(stamp.samples)))
    lines.append(("8-bit rule", stamp.uint8))
    lines += [("departure", line) for line in stamp.departures] + [("note", note) for note in stamp.notes]
    lines.append(("comparable", f"yes: no departure from protocol {stamp.protocol}" if stamp.comparable
                  else "NO: see the departures"))
    for key, value in lines:
        console.print(f"[bold]{key}[/]: {value}", highlight=False, soft_wrap=True)


def eval_fid(
    samples: Annotated[Optional[list[str]], typer.Option(help="Samples: .npz (arr_0 uint8 NHWC, or floats in [-1, 1]) or an image folder / .zip; repeat it for several seed sets.")] = None,
    ref: Annotated[Optional[str], typer.Option(help="Reference: folder, .zip, images .npz, EDM fid-refs .npz, ADM VIRTUAL_*.npz, EDM2 dataset-refs .pkl, fsg stats .npz, cifar10-train, digits or mnist5k.")] = None,
    protocol: Annotated[Optional[str], typer.Option(help=_PROTOCOL_HELP)] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Generate the samples on the fly from this model (streamed, never all in memory).")] = None,
    n: Annotated[Optional[int], typer.Option("-n", "--num", help="With --model: samples per seed set (default: the protocol's, else 50,000; fewer are labelled as not comparable).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="With --model: seed sets, e.g. 0-49999 or 0-49999,50000-99999 (indices of the per-sample noise streams of --seed).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="With --model: sampler steps (default: the model's).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="With --model: heun | euler | consistency | ... (default: the model's).")] = None,
    seed: Annotated[int, typer.Option(help="With --model: run seed of the per-sample noise streams.")] = 0,
    make_ref: Annotated[Optional[str], typer.Option("--make-ref", help="Compute reference statistics of this folder / .zip / .npz / data set (with --out), in the --protocol's format.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="With --make-ref: the file to write (.npz; .pkl for edm2).")] = None,
    kid: Annotated[bool, typer.Option("--kid", help="Also compute KID (with --make-ref: keep the raw features for it).")] = False,
    features: Annotated[Optional[str], typer.Option(help="Protocol fsg's feature space: inception (clean-fid), inception-tf, dinov2 or digits (fsg's digit CNN, for small data on CPU).")] = None,
    inception: Annotated[Optional[Path], typer.Option(help="inception-2015-12-05.pt (default: $FSG_INCEPTION, ~/.cache/fsg/, /tmp/).")] = None,
    dinov2: Annotated[Optional[Path], typer.Option(help="dinov2_vitl14_pretrain.pth (default: $FSG_DINOV2, ~/.cache/fsg/).")] = None,
    ref_root: Annotated[Optional[Path], typer.Option(envvar="FSG_CIFAR10", help="Folder holding cifar-10-batches-py, for cifar10-train.")] = None,
    paired: Annotated[Optional[str], typer.Option(help="Targets matched to the samples by index (.npz / folder): adds MSE and, with --lpips, LPIPS.", rich_help_panel=_PANEL)] = None,
    cond: Annotated[Optional[str], typer.Option(help="A bridge --model's conditions: folder, .npz, data:train or data:test (default: data:train for --protocol bridge, else data:test).", rich_help_panel=_PANEL)] = None,
    lpips: Annotated[Optional[Path], typer.Option(envvar="FSG_LPIPS", help="Folder with vgg16-397923af.pth and LPIPS v0.1 vgg.pth.", rich_help_panel=_PANEL)] = None,
    json_out: JsonOpt = None,
    batch_size: BatchSizeOpt = BATCH_SIZE,
    device: DeviceOpt = "auto",
) -> None:
    """The evaluation protocols of the papers, every result stamped with what was measured.

    Examples:
      fsg eval-fid --samples s.npz --ref digits --features digits --kid
      fsg eval-fid --protocol edm --model runs/cd_cifar --steps 1 --ref cifar10-32x32.npz
      fsg eval-fid --protocol adm --samples samples_50000x64x64x3.npz --ref VIRTUAL_imagenet64_labeled.npz
      fsg eval-fid --protocol edm2 --model m.safetensors --ref img512.pkl --dinov2 ~/w/dinov2_vitl14_pretrain.pth
      fsg eval-fid --protocol bridge --samples s.npz --ref edges2handbags_ref_64_data.npz --lpips ~/lpips
      fsg eval-fid --protocol edm --make-ref ~/data/cifar_png --out cifar10-32x32.npz
    """
    from rich.console import Console

    from fsg.train.dist import resolve_device
    from fsg.errors import UserError
    from fsg.app import evaluate as fid_lib

    from fsg.app.outputs import output_kind

    if json_out not in (None, "-"):                   # outputs checked before the work: never a result lost at the end
        output_kind(json_out, (".json",), "--json")
    for option, value, least in (("--batch-size", batch_size, 1), ("-n", n, 1), ("--seed", seed, 0), ("--steps", steps, 1)):
        if value is not None and value < least:
            raise UserError(f"{option}: must be at least {least}, got {value}")
    dev = resolve_device(device)
    console = Console(stderr=True)
    if ref is not None and ref.startswith("toy:"):
        raise UserError(f"--ref {ref}: 2-D toy samples are scored by `fsg eval-toy --samples S.npz --ref {ref}` "
                        "(sliced Wasserstein, MMD)")
    if make_ref is not None:
        if out is None or samples or model is not None or ref is not None:
            raise UserError("--make-ref SOURCE needs --out FILE and takes no --samples, --model or --ref")
        output_kind(out, (".npz", ".pkl"))
        made = fid_lib.make_reference(make_ref, out, protocol=protocol, features=features, inception=inception,
                                      dinov2=dinov2, with_kid=kid, batch_size=batch_size, device=dev, ref_root=ref_root,
                                      progress=_progress(console))
        typer.echo(f"wrote {out}: {made['format']} reference ({', '.join(made['spaces'])}) of {made['n']} images of "
                   f"{made['label']}")
        return
    rank, world = 0, 1
    if not samples and model is None:
        from fsg.models.load import BUNDLED_MODEL

        model = BUNDLED_MODEL
        typer.echo("no --samples or --model given: generating with the bundled digits consistency model (assets/cd_digits)", err=True)
    if model is not None:
        from fsg.train.dist import init_distributed

        env = init_distributed(dev)
        rank, world = env.rank, env.world
    result = fid_lib.evaluate_fid(ref, samples=samples, model=model, protocol=protocol, n=n, seeds=seeds, steps=steps,
                                  sampler=sampler, seed=seed, features=features, inception=inception, dinov2=dinov2,
                                  with_kid=kid, paired=paired, cond=cond, lpips=lpips, batch_size=batch_size, device=dev,
                                  ref_root=ref_root, rank=rank, world=world, progress=_progress(console))
    if rank != 0:
        return
    _print_result(Console(stderr=json_out == "-"), result)
    Report(json_out).result(result.to_dict())
