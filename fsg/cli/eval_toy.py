"""`fsg eval-toy`: sliced Wasserstein-2 and MMD of 2-D samples to fresh toy data (the README's toy figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fsg.cli.common import BATCH_SIZE, BatchSizeOpt, DeviceOpt, JsonOpt, Report


def eval_toy(
    samples: Annotated[Optional[Path], typer.Option(help="Samples .npz (arr_0 float32 [N, 2], as fsg sample writes 2-D samples).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Generate the samples from this model instead (seeds 0 to N - 1).")] = None,
    ref: Annotated[Optional[str], typer.Option(help="Toy data set: toy:moons, toy:8gaussians, toy:checkerboard, toy:swissroll (default with --model: its data).")] = None,
    n: Annotated[int, typer.Option("-n", "--num", help="With --model: number of samples.")] = 5000,
    steps: Annotated[Optional[int], typer.Option(help="With --model: sampler steps (default: the model's).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help="With --model: sampler (default: the model's).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="With --model: run seed.")] = 0,
    n_ref: Annotated[int, typer.Option("--n-ref", help="Fresh reference points (seed 123, never the training set).")] = 5000,
    batch_size: BatchSizeOpt = BATCH_SIZE,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show sampling progress with the ETA.")] = True,
    json_out: JsonOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Sliced Wasserstein-2 (SW) and RBF MMD^2 of 2-D samples to fresh points of the toy distribution: the toy
    figures of the README, without benchmarks/ (lower is better; fresh data against fresh data: SW about 0.02).

    Examples:
      fsg sample --model runs/cd_toy --steps 1 -n 5000 --out cd1.npz && fsg eval-toy --samples cd1.npz --ref toy:moons
      fsg eval-toy --model runs/edm_toy --steps 18          (Heun, 35 NFE; the reference is the model's toy data)
    """
    from fsg.app.evaluate_toy import evaluate_toy
    from fsg.train.dist import resolve_device

    report = Report(json_out)
    result = evaluate_toy(samples=samples, model=model, ref=ref, n=n, steps=steps, sampler=sampler, seed=seed,
                          batch_size=batch_size, device=resolve_device(device), n_ref=n_ref, progress=progress)
    what = (f"{result['model']} ({result['sampler']}, NFE {result['nfe']}, seed {result['seed']})" if "model" in result
            else result["samples"])
    report.say(f"{result['n']:,} samples of {what} against {result['n_ref']:,} fresh {result['ref']} points:")
    report.say(f"sliced W2 {result['sw']:.4g}   MMD^2 {result['mmd']:.4g}")
    report.result(result)
