"""PaGoDA on tiny data: 1-step samples at 4x the teacher's resolution against the teacher's own samples
upsampled bicubically, the encode -> decode reconstruction error, and the time per image.

    python benchmarks/pagoda.py            # the recipes as written (about 30 minutes on 2 cores; trained
                                           # stages are reused from runs/pagoda_*)
    python benchmarks/pagoda.py --quick    # short runs (quality not meaningful)

Quality: Frechet distance in the feature space of fsg's bundled digits classifier against the 5,000
mnist5k images at 32x32 (real against themselves: 0).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ensure_run, report, sample_timed  # noqa: E402

RUNS = ROOT / "runs"


def mnist_reference(resolution: int) -> torch.Tensor:
    from fsg.data import build_dataset
    from fsg.data.config import DataConfig

    data = build_dataset(DataConfig(source="mnist5k", resolution=resolution))
    return torch.stack([data[i]["x"] for i in range(len(data))])                 # (N, 1, R, R)


def feature_distance(samples: torch.Tensor, reference: torch.Tensor) -> float:
    from fsg.eval.features import build_extractor
    from fsg.eval.images import to_uint8
    from fsg.eval.stats import FeatureStats, frechet_distance

    extractor = build_extractor("digits")
    stats = []
    for images in (samples, reference):
        acc = FeatureStats(extractor.dim)
        for chunk in images.split(512):
            acc.update(extractor(to_uint8(chunk)))
        stats.append((acc.mu(), acc.sigma()))
    return frechet_distance(*stats[0], *stats[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=2000)
    args = ap.parse_args()
    steps = (lambda full: 60) if args.quick else (lambda full: None)
    tag = "_quick" if args.quick else ""
    timings = {}               # seconds of the stages trained by this invocation
    start = time.perf_counter()
    trained = not (RUNS / f"pagoda_teacher{tag}" / "model.safetensors").is_file()
    teacher = ensure_run("train-diffusion", "recipes/tiny/pagoda_mnist_teacher.yaml", RUNS / f"pagoda_teacher{tag}",
                         max_steps=300 if args.quick else None)
    if trained:
        timings["teacher_s"] = time.perf_counter() - start
    latents = RUNS / f"pagoda_latents{tag}"           # `fsg grow-decoder --stage encode`, read by every stage
    if not (latents / "latents.json").is_file():
        from fsg.train.recipe import load_recipe
        from fsg.app.pagoda_encode import run_encode

        start = time.perf_counter()
        run_encode(load_recipe(ROOT / "recipes/tiny/pagoda_mnist_distill.yaml"), teacher, latents,
                   torch.device("cpu"), progress=False)
        timings["encode_s"] = time.perf_counter() - start
    previous = None
    for stage in ("distill", "grow16", "grow32"):
        run = RUNS / f"pagoda_{stage}{tag}"
        if not (run / "model.safetensors").is_file():
            from fsg.app.train import train

            start = time.perf_counter()
            train("grow-decoder", ROOT / f"recipes/tiny/pagoda_mnist_{stage}.yaml", [f"method.latents={latents}"],
                  run_dir=run, device="cpu", teacher=teacher, init=previous, max_steps=steps(None), progress=False,
                  resume="auto" if (run / "checkpoints").is_dir() else None)
            timings[f"{stage}_s"] = time.perf_counter() - start
        previous = run

    from fsg.models.load import load_model
    from fsg.core.inversion import decode, encode

    n = 256 if args.quick else args.n
    reference = mnist_reference(32)
    rows = []
    for name, model, kw in [("PaGoDA 1 step (32x32)", previous, {"steps": 1}),
                            ("teacher 1 step, bicubic x4", teacher, {"sampler": "euler", "steps": 1}),
                            ("teacher Heun 35 NFE, bicubic x4", teacher, {"sampler": "heun", "steps": 18})]:
        x, nfe, seconds = sample_timed(load_model(model), n, 256, **kw)
        if x.shape[-1] != 32:
            x = F.interpolate(x, size=32, mode="bicubic", align_corners=False).clamp(-1, 1)
        rows.append({"model": name, "nfe": nfe, "fd_digits": feature_distance(x, reference),
                     "ms_per_image": 1000 * seconds / n})

    g, t = load_model(previous), load_model(teacher)
    x = reference[:n]
    start = time.perf_counter()
    with torch.no_grad():
        z = encode(t.denoiser, x, t.shape[-1], g.meta["inversion_steps"])
        x_hat = decode(g.denoiser, z, g.meta["latent_factor"], g.process.sigma_max).clamp(-1, 1)
    recon = {"recon_mse": float((x_hat - x).pow(2).mean()),
             "recon_bicubic_mse": float((F.interpolate(F.avg_pool2d(x, 4), size=32, mode="bicubic",
                                                       align_corners=False).clamp(-1, 1) - x).pow(2).mean()),
             "encode_decode_ms_per_image": 1000 * (time.perf_counter() - start) / n}
    rows.append({"model": f"encode ({g.meta['inversion_steps']} Heun) -> decode, MSE",
                 "nfe": 2 * g.meta["inversion_steps"] + 1, "fd_digits": recon["recon_mse"],
                 "ms_per_image": recon["encode_decode_ms_per_image"]})
    report(f"pagoda{tag}", "PaGoDA on mnist5k: 8x8 teacher, 32x32 generator", ["model", "nfe", "fd_digits", "ms_per_image"],
           rows, extra={**recon, **{k: round(v, 1) for k, v in timings.items()}})


if __name__ == "__main__":
    main()
