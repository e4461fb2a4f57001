"""`fsg sample`: draw samples from any fsg model and write an .npz, PNG files and/or a grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fsg.cli.common import (
    BATCH_SIZE,
    BatchSizeOpt,
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    Report,
    parse_list,
    parse_seeds,
)

DEFAULT_N = 64


def sample(
    model: ModelOpt = None,
    n: Annotated[Optional[int], typer.Option("-n", "--num", help=f"Number of samples: seeds 0 to N - 1 (default {DEFAULT_N}).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="The samples' seeds as EDM's generate.py takes them, instead of -n: 0-63, 0,5,10-20; a shard of a larger job: 50000-99999. A sample depends only on its seed (and --seed), never on the batch or the number of processes.")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="heun | euler | consistency; bridges: dbim | dbim2 | dbim3 | hybrid | cdbm (default: the model's).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Heun/Euler grid points, or consistency steps K; bridges: the NFE (hybrid: N points, NFE 3N - 1).")] = None,
    timesteps: Annotated[Optional[str], typer.Option(help="Consistency: indices into the training grid as the reference's --ts: a call at each index but the last, which marks the end (0,22,39: 2 NFE).")] = None,
    sigmas: Annotated[Optional[str], typer.Option(help="Consistency: explicit noise levels, e.g. 80,0.821.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Run seed: the noise of seed i is a stream of (--seed, i).")] = 0,
    batch_size: BatchSizeOpt = BATCH_SIZE,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="FILE.npz in ADM's layout (arr_0 uint8 NHWC, or float32 [N, D] for 2-D data; class labels in arr_1) or DIR/ of PNGs named by seed (000042.png).")] = None,
    subdirs: Annotated[bool, typer.Option("--subdirs", help="With --out DIR/: one subfolder per 1000 seeds (000000/, 001000/, ...), as EDM's generate.py.")] = False,
    grid: Annotated[Optional[Path], typer.Option(help="Write the first 64 samples (2-D data: a scatter plot) as a grid PNG.")] = None,
    s_churn: Annotated[Optional[float], typer.Option(help="Heun/Euler: EDM stochasticity S_churn (default 0).")] = None,
    s_tmin: Annotated[Optional[float], typer.Option(help="Heun/Euler: EDM S_tmin (default 0).")] = None,
    s_tmax: Annotated[Optional[float], typer.Option(help="Heun/Euler: EDM S_tmax (default inf).")] = None,
    s_noise: Annotated[Optional[float], typer.Option(help="Heun/Euler: EDM S_noise (default 1).")] = None,
    class_label: Annotated[Optional[int], typer.Option(help="Class of every sample (class-conditional models).")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Classifier-free guidance scale (default 1 = off); bridge models: the hybrid sampler's weight w of the h-term (default 1).")] = None,
    eta: Annotated[Optional[float], typer.Option(help="dbim: eta >= 0 (default 0: deterministic given the booting noise; 1: the Markovian posterior).")] = None,
    churn_step_ratio: Annotated[Optional[float], typer.Option(help="hybrid: fraction of each step taken by the reverse SDE, in [0, 1) (default 0.33; 0: Heun PF-ODE only).")] = None,
    times: Annotated[Optional[str], typer.Option(help="cdbm: the times of the consistency calls, strictly decreasing in [t_min, T - gamma], e.g. 0.6 (NFE 2, booting to t = 0.6); default: uniform from T - gamma.")] = None,
    split_last: Annotated[Optional[bool], typer.Option("--split-last", help="ddm/ddm-heun: split the last step at t_eps (1/N -> t_eps -> 0, one more NFE), as DDM-Public's default sampling.")] = None,
    edge_skip: Annotated[Optional[float], typer.Option(help="Consistency: edge-skipping eta in [0, 1] (default 0 = Algorithm 1).")] = None,
    cond: Annotated[Optional[Path], typer.Option(help="Bridge models: condition images, a DIR, a FILE.npz (cond, else arr_0) or data:train|data:test (a split of the model's data); default: data:test.")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="Bridge inpainting: the hole (white, generated; the rest of the condition is kept) as one image for every sample or a DIR of them (item i mod M); default: the model's data mask (data.degrade mask-center|mask-strokes).")] = None,
    vae: Annotated[Optional[Path], typer.Option(help="Latent models (EDM2 ImageNet-512): a local diffusers AutoencoderKL folder (stabilityai/sd-vae-ft-mse) that decodes the samples.")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress with the ETA (a bar on a terminal, plain lines otherwise).")] = True,
    json_out: JsonOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Sample from a model; prints the exact NFE per sample. Runs alone or under torchrun (each rank samples its share
    of the seeds; the files are those of one process).

    Examples:
      fsg sample -n 64 --steps 1 --grid samples.png            (the bundled digits consistency model)
      fsg sample --model edm_digits --seeds 0-999 --subdirs --out digits/      (a bundled model by name; EDM's layout)
      torchrun --nproc_per_node 4 -m fsg sample --model runs/cd_cifar --seeds 0-49999 --out s.npz
      fsg sample --model runs/edm_toy --steps 18 -n 5000 --out s.npz      (Heun, 35 NFE)
      fsg sample --model runs/cd_toy --steps 2 -n 5000 --out cd2.npz
      fsg sample --model runs/cd_digits --timesteps 0,9,17 --grid two_step.png      (2 NFE: calls at indices 0 and 9)
      fsg sample --model runs/cbt_edges_digits --steps 2 -n 180 --out e2d.npz     (CDBM, 2 NFE; cond in the npz)
      fsg sample --model runs/cbt_edges_digits --times 0.6 -n 180 --out e2d.npz    (CDBM, 2 NFE, booting to t = 0.6)
      fsg sample --model runs/ddbm_edges_digits --sampler dbim --eta 1 --steps 20 --out s.npz
      fsg sample --model runs/ddbm_edges_digits --sampler hybrid --churn-step-ratio 0.33 --guidance 0.5 --out s.npz
      fsg sample --model edm2-img512-s-2147483-0.130.pkl --vae vae/ -n 64 --grid s.png     (SD-VAE latents decoded)
    """
    from fsg.app.sample import run_sampling
    from fsg.errors import UserError
    from fsg.sampling.plan import KNOB_OPTIONS
    from fsg.train.dist import init_distributed, resolve_device, shutdown

    if out is None and grid is None:
        raise UserError("--out: give --out FILE.npz|DIR/ and/or --grid FILE.png")
    seed_list = parse_seeds(seeds)
    if seed_list is None and n is None:
        n = DEFAULT_N
    knobs = dict(sampler=sampler, steps=steps, timesteps=parse_list(timesteps, int, "--timesteps"),
                 sigmas=parse_list(sigmas, float, "--sigmas"), s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax,
                 s_noise=s_noise, labels=class_label, edge_skip=edge_skip, split_last=split_last, eta=eta,
                 churn_step_ratio=churn_step_ratio, times=parse_list(times, float, "--times"))
    dev = resolve_device(device)
    env = init_distributed(dev)
    say = Report(json_out) if env.is_main else Report(None)
    if model is None and env.is_main:
        typer.echo("no --model given: using the bundled digits consistency model (cd_digits)", err=True)
    try:
        report = run_sampling(model, n, seeds=seed_list, out=out, grid=grid, subdirs=subdirs, seed=seed,
                              batch_size=batch_size, device=dev, guidance=guidance, cond=cond, mask=mask,
                              progress=progress, rank=env.rank, world=env.world, vae=vae, **knobs)
    finally:
        shutdown()
    if not env.is_main:
        return
    shown = [f"{KNOB_OPTIONS[k].removeprefix('--')} {v:g}" for k, v in report["knobs"].items() if k in KNOB_OPTIONS]
    extra = f" ({', '.join(shown)})" if shown else ""
    ranks = f", {report['world']} processes" if report["world"] > 1 else ""
    say.say(f"{report['n']} samples, sampler {report['sampler']}{extra}, NFE {report['nfe']}, "
            f"{report['seconds']:.2f} s ({report['n'] / max(report['seconds'], 1e-9):.1f} samples/s{ranks})")
    if report["mask"]:
        say.say(f"inpainting: the known pixels of each condition are kept (mask: {report['mask']})")
    for path in report["written"]:
        say.say(f"wrote {path}")
    say.result({k: report[k] for k in ("n", "nfe", "sampler", "knobs", "mask", "seconds", "world")}
               | {"model": str(model) if model is not None else "cd_digits", "seed": seed, "written": report["written"]})
