"""`fsg sample`: draw samples from any fsg model and write an .npz, PNG files and/or a grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fsg.cli import app
from fsg.cli.common import DeviceOpt, ModelOpt, SeedOpt


def _int_list(text: str | None) -> list[int] | None:
    return [int(v) for v in text.split(",")] if text else None


def _float_list(text: str | None) -> list[float] | None:
    return [float(v) for v in text.split(",")] if text else None


@app.command("sample")
def sample(
    model: ModelOpt = None,
    n: Annotated[int, typer.Option("-n", "--num", help="Number of samples.")] = 64,
    sampler: Annotated[Optional[str], typer.Option(help="heun | euler | consistency; bridges: dbim | dbim2 | dbim3 | hybrid | cdbm (default: the model's).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Heun/Euler grid points, or consistency steps K; bridges: the NFE (hybrid: N points, NFE 3N - 1).")] = None,
    timesteps: Annotated[Optional[str], typer.Option(help="Consistency: indices into the training grid, e.g. 0,22,39.")] = None,
    sigmas: Annotated[Optional[str], typer.Option(help="Consistency: explicit noise levels, e.g. 80,0.821.")] = None,
    seed: SeedOpt = None,
    batch_size: Annotated[int, typer.Option(help="Samples per network batch (does not change the samples).")] = 256,
    out: Annotated[Optional[Path], typer.Option(help="FILE.npz (arr_0 uint8 NHWC / float32 [N, D], labels) or DIR/ for PNGs.")] = None,
    grid: Annotated[Optional[Path], typer.Option(help="Write the first 64 samples as a grid PNG.")] = None,
    s_churn: Annotated[float, typer.Option(help="EDM stochasticity S_churn (Heun/Euler).")] = 0.0,
    s_tmin: Annotated[float, typer.Option(help="EDM S_tmin.")] = 0.0,
    s_tmax: Annotated[float, typer.Option(help="EDM S_tmax.")] = float("inf"),
    s_noise: Annotated[float, typer.Option(help="EDM S_noise.")] = 1.0,
    class_label: Annotated[Optional[int], typer.Option(help="Class of every sample (class-conditional models).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale (default 1 = off); bridge models: the hybrid sampler's weight w of the h-term (default 1).")] = None,
    eta: Annotated[Optional[float], typer.Option(help="dbim: eta >= 0 (default 0: deterministic given the booting noise; 1: the Markovian posterior).")] = None,
    churn_step_ratio: Annotated[Optional[float], typer.Option(help="hybrid: fraction of each step taken by the reverse SDE, in [0, 1) (default 0.33; 0: Heun PF-ODE only).")] = None,
    times: Annotated[Optional[str], typer.Option(help="cdbm: the times of the consistency calls, strictly decreasing in [t_min, T - gamma], e.g. 0.6 (NFE 2, booting to t = 0.6); default: uniform from T - gamma.")] = None,
    edge_skip: Annotated[float, typer.Option(help="Consistency: SCT edge-skipping eta in [0, 1] (0 = Algorithm 1).")] = 0.0,
    cond: Annotated[Optional[Path], typer.Option(help="Bridge models: condition images, a DIR, a FILE.npz (cond, else arr_0) or data:train|data:test (a split of the model's data); default: data:test.")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="Bridge inpainting: the hole (white, generated; the rest of the condition is kept) as one image for every sample or a DIR of them (item i mod M); default: the model's data mask (data.degrade mask-center|mask-strokes).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Sample from a model; prints the exact NFE per sample.

    Examples:
      fsg sample -n 64 --steps 1 --grid samples.png            (the bundled digits consistency model)
      fsg sample --model runs/edm_toy --steps 18 -n 5000 --out s.npz      (Heun, 35 NFE)
      fsg sample --model runs/cd_toy --steps 2 -n 5000 --out cd2.npz
      fsg sample --model runs/cd_digits --timesteps 0,9,17 --grid two_step.png
      fsg sample --model runs/cbt_edges_digits --steps 2 -n 180 --out e2d.npz     (CDBM, 2 NFE; cond in the npz)
      fsg sample --model runs/cbt_edges_digits --times 0.6 -n 180 --out e2d.npz    (CDBM, 2 NFE, booting to t = 0.6)
      fsg sample --model runs/ddbm_edges_digits --sampler dbim --eta 1 --steps 20 --out s.npz
      fsg sample --model runs/ddbm_edges_digits --sampler hybrid --churn-step-ratio 0.33 --guidance 0.5 --out s.npz
    """
    from fsg.cli.common import resolve_device
    from fsg.sampling.generate import SAMPLER_KNOBS
    from fsg.sampling.write import run_sampling

    if out is None and grid is None:
        raise typer.BadParameter("give --out FILE.npz|DIR/ and/or --grid FILE.png", param_hint="--out")
    if model is None:
        typer.echo("no --model given: using the bundled digits consistency model (assets/cd_digits)", err=True)
    report = run_sampling(model, n, out=out, grid=grid, sampler=sampler, steps=steps, timesteps=_int_list(timesteps),
                          sigmas=_float_list(sigmas), seed=seed or 0, batch_size=batch_size, device=resolve_device(device),
                          s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, labels=class_label, guidance=guidance,
                          edge_skip=edge_skip, cond=cond, mask=mask, eta=eta, churn_step_ratio=churn_step_ratio,
                          times=_float_list(times))
    shown = [f"{SAMPLER_KNOBS[k][0].removeprefix('--')} {v:g}" for k, v in report["knobs"].items() if k in SAMPLER_KNOBS]
    knobs = f" ({', '.join(shown)})" if shown else ""
    typer.echo(f"{report['n']} samples, sampler {report['sampler']}{knobs}, NFE {report['nfe']}, "
               f"{report['seconds']:.2f} s ({report['n'] / max(report['seconds'], 1e-9):.1f} samples/s)")
    if report["mask"]:
        typer.echo(f"inpainting: the known pixels of each condition are kept (mask: {report['mask']})")
    for path in report["written"]:
        typer.echo(f"wrote {path}")
