"""Time to generate and score 50,000 samples on one GPU (issue 24, item 7): a 1-step consistency model and the EDM
teacher's Heun sampler at 35 NFE, on the same network (by default recipes/edm_cifar10.yaml's DDPM++, 55.7M
parameters, 3 x 32 x 32), through `fsg.app.evaluate.evaluate_fid` with EDM's protocol (one seed set, 0-49999).

Weights do not change the speed, so the networks are freshly initialised; the reference is EDM-format statistics of
random pixels made here with `--make-ref`'s code (its time is reported too). Each row gives the seconds of
generation alone (`iter_samples`, the same batches), of generation and scoring together, and their difference.

    python benchmarks/eval_timing.py                           # needs CUDA and inception-2015-12-05.pt
    python benchmarks/eval_timing.py --protocol fsg --features digits --recipe recipes/tiny/edm_digits.yaml \\
        -n 512 --device cpu                                     # the CPU smoke run of the script itself

Writes benchmarks/results/eval_timing.json. The Inception weights are looked up as `fsg eval-fid` does
($FSG_INCEPTION, ~/.cache/fsg/); without them it stops with the one-line message naming the file to place.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, report  # noqa: E402

from fsg.app.evaluate import evaluate_fid, make_reference  # noqa: E402
from fsg.io.checkpoint import save_model  # noqa: E402
from fsg.io.config import to_dict  # noqa: E402
from fsg.models.load import load_model  # noqa: E402
from fsg.models.meta import build_denoiser  # noqa: E402
from fsg.sampling.generate import iter_samples  # noqa: E402
from fsg.train.recipe import load_recipe  # noqa: E402

# (name, preconditioning, sampler, steps): Heun with 18 steps makes 2 x 18 - 1 = 35 network evaluations
MODELS = (("1-step consistency", "consistency", "consistency", 1), ("EDM teacher, Heun", "diffusion", "heun", 18))


def write_model(recipe: str, precond: str, sampler: str, steps: int, path: Path) -> Path:
    """A freshly initialised model of the recipe's network, saved as an fsg model file."""
    r = load_recipe(ROOT / recipe)
    channels = 1 if r.data.source in ("digits", "mnist5k") else 3
    resolution = r.data.resolution or 32
    meta = {"format": 1, "process": to_dict(r.process), "precond": precond, "network": to_dict(r.network),
            "shape": [channels, resolution, resolution], "out_channels": channels, "cond_channels": 0,
            "num_classes": 0, "method": "diffusion", "step": 0, "sample": {"sampler": sampler, "steps": steps},
            "train_grid": 18}
    torch.manual_seed(0)
    save_model(path, build_denoiser(meta).net.state_dict(), meta)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="recipes/edm_cifar10.yaml")
    ap.add_argument("-n", type=int, default=50_000)
    ap.add_argument("--protocol", default="edm")
    ap.add_argument("--features", default=None, help="the fsg protocol's feature space")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark measures the GPU path (use --device cpu for a smoke run)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pixels = np.random.default_rng(0).integers(0, 256, (10_000, 32, 32, 3), dtype=np.uint8)
        np.savez(tmp / "pixels.npz", pixels)
        start = time.perf_counter()
        make_reference(tmp / "pixels.npz", tmp / "ref.npz", protocol=args.protocol, features=args.features,
                       batch_size=args.batch, device=args.device)
        ref_seconds = time.perf_counter() - start
        for name, precond, sampler, steps in MODELS:
            path = write_model(args.recipe, precond, sampler, steps, tmp / f"{precond}.safetensors")
            model = load_model(path, args.device)
            start = time.perf_counter()
            stream = iter_samples(model, args.n, batch_size=args.batch, device=args.device)
            for _ in stream:
                pass
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            generate = time.perf_counter() - start
            start = time.perf_counter()
            result = evaluate_fid(tmp / "ref.npz", model=path, protocol=args.protocol, features=args.features,
                                  seeds=f"0-{args.n - 1}", batch_size=args.batch, device=args.device)
            total = time.perf_counter() - start
            rows.append({"model": name, "nfe": result.stamp.nfe, "n": args.n, "generate_s": generate,
                         "generate_and_score_s": total, "score_s": total - generate,
                         "samples_per_s": args.n / total})
    report("eval_timing", f"Generate and score {args.n:,} samples ({args.protocol} protocol, {args.recipe})",
           ["model", "nfe", "n", "generate_s", "score_s", "generate_and_score_s", "samples_per_s"], rows,
           {"reference_10k_s": ref_seconds, "device": torch.cuda.get_device_name() if args.device.startswith("cuda")
            else args.device})


if __name__ == "__main__":
    main()
