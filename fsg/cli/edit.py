"""`fsg edit ...` (zero-shot inpainting, colorization, super-resolution, stroke guidance, denoising) and
`fsg interpolate`: consistency models used as zero-shot editors (Sec. 6 of Song et al. 2023)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fsg.cli.common import DeviceOpt, JsonOpt, ModelOpt, Report, SeedOpt, parse_list

edit_app = typer.Typer(
    help="Zero-shot editing with a consistency model, and PaGoDA super-resolution/inversion: one PNG per input "
         "and a comparison grid in --out.",
    no_args_is_help=True,
)

InputOpt = Annotated[Path, typer.Option("--input", "-i", help="An image (PNG/JPEG) or a folder of images.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder: <name>.png per input and comparison.png.")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Consistency steps K, one NFE each (default: N - 1 "
                                                                   "for the model's N-point training grid).")]
TimestepsOpt = Annotated[Optional[str], typer.Option("--timesteps", help="Indices into the training grid: 0,5,11.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per network batch (results do not change).")]
ClassOpt = Annotated[Optional[int], typer.Option("--class-label", help="Class of every result (class-conditional).")]
MaskOpt = Annotated[Path, typer.Option("--mask", help="Binary PNG of the input's size: white (255) = regenerate, "
                                                      "black (0) = keep.")]
FactorOpt = Annotated[Optional[int], typer.Option("--factor", help="Patch side P: the P x P patch means are the "
                                                                   "input's (default 4; PaGoDA: its growth factor).")]
TeacherOpt = Annotated[Optional[Path], typer.Option("--teacher", help="PaGoDA: the encoder (default: the teacher the "
                                                                      "generator records).")]
InversionStepsOpt = Annotated[Optional[int], typer.Option("--inversion-steps", help="PaGoDA: Heun steps of the "
                                                          "encoder's PF-ODE inversion (default: the training's).")]
TStartOpt = Annotated[Optional[float], typer.Option("--t-start", help="Noise level the painting is noised to "
                                                                      "(default 1.2).")]
StrokeStepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Steps from --t-start (default 2).")]
DecodeStepsOpt = Annotated[Optional[int], typer.Option("--steps", help="Consistency steps K per point (default 1).")]
AddNoiseOpt = Annotated[bool, typer.Option("--add-noise", help="Add N(0, sigma^2) noise to clean inputs first.")]
SeedsOpt = Annotated[str, typer.Option("--seeds", help="Endpoint seeds A,B (the latents of `fsg sample --seed A`).")]
LatentsOpt = Annotated[Optional[str], typer.Option("--latents", help="Endpoint latent files A,B (.npy or .pt, "
                                                                     "N(0, I) of the sample shape).")]


def _int_list(text: str | None, option: str = "--timesteps") -> list[int] | None:
    return parse_list(text, int, option)


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _run(task: str, model: Path | None, input_: Path, out: Path, seed: int | None, device: str,
         json_out: str | None = None, **options) -> None:
    from fsg.train.dist import resolve_device
    from fsg.app.edit import run_edit
    from fsg.app.outputs import FOLDER, output_kind

    output_kind(out, (FOLDER,))
    say = Report(json_out)
    if model is None:
        _say("no --model given: using the bundled digits consistency model (assets/cd_digits)")
    report = run_edit(task, model, input_, out, seed=seed or 0, device=resolve_device(device), warn=_say, **options)
    encoder = f" + {report['encoder_nfe']} teacher NFE to encode" if "encoder_nfe" in report else ""
    say.say(f"{task}: {report['n']} image(s), NFE {report['nfe']}{encoder} each, {report['seconds']:.2f} s")
    if "mse" in report:
        say.say(f"reconstruction MSE {report['mse']:.5f} (pixels in [-1, 1])")
    extra = ", latents.npy" if "mse" in report else ""
    say.say(f"wrote {out}/ ({report['n']} result(s), comparison.png{extra})")
    say.result({"task": task, **{k: v for k, v in report.items() if k != "result"}})


@edit_app.command("inpaint")
def inpaint(
    input_: InputOpt, out: OutOpt,
    mask: MaskOpt,
    model: ModelOpt = None, steps: StepsOpt = None, timesteps: TimestepsOpt = None, seed: SeedOpt = None,
    batch_size: BatchOpt = 64, class_label: ClassOpt = None, json_out: JsonOpt = None, device: DeviceOpt = "auto",
) -> None:
    """Regenerate the white pixels of --mask and keep every other pixel exactly (Algorithm 4, A = I).

    Example:
      fsg edit inpaint --model runs/cd_digits --input digits/ --mask hole.png --out edits/inpaint
    """
    _run("inpaint", model, input_, out, seed, device, json_out, mask=mask, steps=steps, timesteps=_int_list(timesteps),
         batch_size=batch_size, class_label=class_label)


@edit_app.command("colorize")
def colorize(
    input_: InputOpt, out: OutOpt, model: ModelOpt = None, steps: StepsOpt = None, timesteps: TimestepsOpt = None,
    seed: SeedOpt = None, batch_size: BatchOpt = 64, class_label: ClassOpt = None, json_out: JsonOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Keep the luma (0.2989 R + 0.5870 G + 0.1140 B) of the input, generate its colours (needs an RGB model).

    Gray inputs are accepted.

    Example:
      fsg edit colorize --model runs/cd_rgb --input gray/ --steps 8 --out edits/colorize
    """
    _run("colorize", model, input_, out, seed, device, json_out, steps=steps, timesteps=_int_list(timesteps),
         batch_size=batch_size, class_label=class_label)


@edit_app.command("superres")
def superres(
    input_: InputOpt, out: OutOpt,
    factor: FactorOpt = None,
    model: ModelOpt = None, steps: StepsOpt = None, timesteps: TimestepsOpt = None, seed: SeedOpt = None,
    batch_size: BatchOpt = 64, class_label: ClassOpt = None, teacher: TeacherOpt = None,
    inversion_steps: InversionStepsOpt = None, json_out: JsonOpt = None, device: DeviceOpt = "auto",
) -> None:
    """Super-resolve by a factor P: the result's P x P patch means are the low-resolution input's pixels.

    Inputs of (resolution / P) pixels are upsampled; a full-size input is averaged over its patches first.
    A PaGoDA generator encodes the low-resolution input with its teacher and decodes it in one call.

    Examples:
      fsg edit superres --model runs/cd_digits --input low_res/ --factor 2 --out edits/superres
      fsg edit superres --model runs/pgd32 --input low_res_8px/ --out edits/pagoda_superres
    """
    _run("superres", model, input_, out, seed, device, json_out, factor=factor, steps=steps, timesteps=_int_list(timesteps),
         batch_size=batch_size, class_label=class_label, teacher=teacher, inversion_steps=inversion_steps)


@edit_app.command("invert")
def invert(
    input_: InputOpt, out: OutOpt, model: ModelOpt = None, batch_size: BatchOpt = 64, class_label: ClassOpt = None,
    teacher: TeacherOpt = None, inversion_steps: InversionStepsOpt = None, json_out: JsonOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """PaGoDA inversion: encode images (teacher's PF-ODE, data -> noise) and decode them in one call.

    Writes the reconstructions, comparison.png and latents.npy, and prints the reconstruction MSE.

    Example:
      fsg edit invert --model runs/pgd32 --input digits32/ --out edits/invert
    """
    _run("invert", model, input_, out, None, device, json_out, batch_size=batch_size, class_label=class_label,
         teacher=teacher, inversion_steps=inversion_steps)


@edit_app.command("stroke")
def stroke(
    input_: InputOpt, out: OutOpt,
    t_start: TStartOpt = None, model: ModelOpt = None, steps: StrokeStepsOpt = None,
    timesteps: TimestepsOpt = None, seed: SeedOpt = None, batch_size: BatchOpt = 64, class_label: ClassOpt = None,
    json_out: JsonOpt = None, device: DeviceOpt = "auto",
) -> None:
    """Stroke-guided generation (SDEdit): noise a rough painting to --t-start, then take consistency steps.

    Lower --t-start follows the strokes more closely, higher gives more realistic images.

    Example:
      fsg edit stroke --model runs/cd_digits --input strokes/ --t-start 1.2 --steps 2 --out edits/stroke
    """
    _run("stroke", model, input_, out, seed, device, json_out, t_start=t_start, steps=steps, timesteps=_int_list(timesteps),
         batch_size=batch_size, class_label=class_label)


@edit_app.command("denoise")
def denoise(
    input_: InputOpt, out: OutOpt,
    sigma: Annotated[float, typer.Option("--sigma", help="Noise level (std in [-1, 1] pixel units) of the inputs.")],
    add_noise: AddNoiseOpt = False,
    model: ModelOpt = None, seed: SeedOpt = None, batch_size: BatchOpt = 64, class_label: ClassOpt = None,
    json_out: JsonOpt = None, device: DeviceOpt = "auto",
) -> None:
    """One-step denoising f(y, sigma) of inputs carrying Gaussian noise of std sigma (one NFE).

    Example:
      fsg edit denoise --model runs/cd_digits --input digits/ --sigma 0.5 --add-noise --out edits/denoise
    """
    _run("denoise", model, input_, out, seed, device, json_out, sigma=sigma, add_noise=add_noise, batch_size=batch_size,
         class_label=class_label)


def interpolate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Grid PNG: the path from left to right.")],
    model: ModelOpt = None,
    n: Annotated[int, typer.Option("-n", "--num", help="Points on the path, endpoints included.")] = 8,
    seeds: SeedsOpt = "0,1", latents: LatentsOpt = None,
    steps: DecodeStepsOpt = None, timesteps: TimestepsOpt = None, class_label: ClassOpt = None,
    cond: Annotated[Optional[str], typer.Option(help="Bridge models: the condition (DIR/FILE.npz/data:test; its first item).")] = None,
    json_out: JsonOpt = None, device: DeviceOpt = "auto",
) -> None:
    """Spherical interpolation between two noise latents, decoded in one (or K) consistency steps, or in one
    call of a PaGoDA generator (its latents: `fsg edit invert` writes them); for a bridge model, semantic
    interpolation in data space (fixed condition, slerped recorded noises).

    Examples:
      fsg interpolate --model runs/cd_digits -n 10 --seeds 3,7 --out interp.png
      fsg interpolate --model runs/cd_digits --latents a.npy,b.npy --steps 2 --out interp2.png
      fsg interpolate --model runs/cbd_edges_digits -n 8 --seeds 0,1 --out bridge_interp.png
    """
    from fsg.train.dist import resolve_device
    from fsg.errors import UserError
    from fsg.app.edit import run_interpolation
    from fsg.app.outputs import output_kind

    output_kind(out, (".png",))
    say = Report(json_out)
    pair = _int_list(seeds, "--seeds")
    if pair is None or len(pair) != 2:
        raise UserError(f"--seeds takes two seeds A,B, got '{seeds}'")
    files = [Path(p) for p in latents.split(",")] if latents else None
    if files is not None and len(files) != 2:
        raise UserError(f"--latents takes two files A,B, got '{latents}'")
    if model is None:
        _say("no --model given: using the bundled digits consistency model (assets/cd_digits)")
    report = run_interpolation(model, n, out, seeds=(pair[0], pair[1]),
                               latents=None if files is None else (files[0], files[1]), steps=steps,
                               timesteps=_int_list(timesteps), class_label=class_label, cond=cond,
                               device=resolve_device(device))
    kind = " (bridge)" if report["bridge"] else ""
    say.say(f"interpolate{kind}: {report['n']} points, NFE {report['nfe']} each, {report['seconds']:.2f} s")
    say.say(f"wrote {out}")
    say.result({k: v for k, v in report.items() if k != "result"})
