"""Speed, measured in one process on the same network:

1. sampling throughput at 1, 2, 4 consistency steps against Heun at 35 NFE, as ratios; the target is
   1-step throughput >= 0.9 x (NFE ratio) x the teacher's;
2. the sampler's overhead over the bare network forward passes it makes (batch 256);
3. the training-step cost of EDM, CD and CT divided by the time of the network passes each step needs
   (CD: student forward+backward, two teacher forwards for Heun, one target forward).

Weights do not change the speed, so the networks are freshly initialised (the digits UNet of
recipes/tiny/edm_digits.yaml by default).

    python benchmarks/speed.py [--batch 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, report  # noqa: E402

from fsg.io.config import to_dict  # noqa: E402
from fsg.models.load import LoadedModel  # noqa: E402
from fsg.models.meta import build_denoiser  # noqa: E402
from fsg.train.recipe import load_recipe  # noqa: E402


def model_for(recipe: str, precond: str) -> tuple[LoadedModel, object]:
    r = load_recipe(ROOT / recipe)
    shape = (1, r.data.resolution, r.data.resolution)
    meta = {"process": to_dict(r.process), "precond": precond, "network": to_dict(r.network), "shape": list(shape),
            "out_channels": 1, "cond_channels": 0, "num_classes": 0, "train_grid": 18,
            "sample": {"sampler": "consistency" if precond == "consistency" else "heun", "steps": 1}}
    torch.manual_seed(0)
    return LoadedModel(build_denoiser(meta).eval(), meta, Path("<bench>")), r


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    return min(timed(fn) for _ in range(repeats))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sampling_rows(batch: int, repeats: int) -> list[dict]:
    from fsg.sampling.generate import iter_samples

    rows = []
    teacher, _ = model_for("recipes/tiny/edm_digits.yaml", "diffusion")
    student, _ = model_for("recipes/tiny/edm_digits.yaml", "consistency")
    student.denoiser.net.load_state_dict(teacher.denoiser.net.state_dict())
    x = torch.randn(batch, *teacher.shape)
    t = torch.full((batch,), 2.0)
    with torch.no_grad():
        forward = best_of(lambda: teacher.denoiser(x, t), repeats)

    def run(model, **kw):
        def go():
            for _ in iter_samples(model, batch, batch_size=batch, **kw):
                pass
        with torch.no_grad():
            return best_of(go, repeats)

    base = run(teacher, sampler="heun", steps=18)
    for name, model, kw, nfe in [("Heun (EDM)", teacher, dict(sampler="heun", steps=18), 35),
                                 ("consistency", student, dict(steps=1), 1), ("consistency", student, dict(steps=2), 2),
                                 ("consistency", student, dict(steps=4), 4)]:
        sec = base if nfe == 35 else run(model, **kw)
        rows.append({"sampler": name, "nfe": nfe, "images_per_s": batch / sec, "speedup": base / sec,
                     "nfe_ratio": 35 / nfe, "speedup_over_ideal": (base / sec) / (35 / nfe),
                     "overhead_vs_bare_forwards": sec / (nfe * forward) - 1})
    return rows


def training_rows(batch: int, repeats: int) -> list[dict]:
    """Engine step time / time of the bare network passes of that step."""
    from fsg.methods import METHODS
    from fsg.train.recipe import TrainConfig
    from fsg.train.engine import RunOptions, Trainer

    rows = []
    teacher, r = model_for("recipes/tiny/edm_digits.yaml", "diffusion")
    x0 = torch.rand(batch, *teacher.shape) * 2 - 1
    batch_dict = {"x": x0, "label": torch.full((batch,), -1), "index": torch.arange(batch)}
    t = torch.full((batch,), 2.0)
    for name in ("diffusion", "cd", "ct"):
        cfg_cls, method_cls = METHODS[name]
        student, _ = model_for("recipes/tiny/edm_digits.yaml", method_cls.precond)
        recipe = r.__class__(data=r.data, network=r.network, method=cfg_cls(), process=r.process,
                             train=TrainConfig(batch_size=batch, ema=(0.999,)), sample=r.sample)
        method = method_cls(cfg_cls(), student.denoiser.train(), r.process,
                            teacher=teacher.denoiser if method_cls.needs_teacher else None, recipe=recipe)
        trainer = Trainer(recipe, method, student.meta, RunOptions(Path("/tmp/fsg-bench"), torch.device("cpu"), progress=False))

        def fwd_bwd(net=student.denoiser):
            net.zero_grad()
            net(x0, t).square().mean().backward()

        def fwd(net=teacher.denoiser):
            with torch.no_grad():
                net(x0, t)

        passes = {"diffusion": [fwd_bwd], "cd": [fwd_bwd, fwd, fwd, fwd], "ct": [fwd_bwd, fwd]}[name]
        step = best_of(lambda: trainer.train_step(batch_dict), repeats)
        bare = sum(best_of(p, repeats) for p in passes)
        rows.append({"method": name, "step_s": step, "network_passes_s": bare, "ratio": step / bare,
                     "passes": {"diffusion": "fwd+bwd", "cd": "fwd+bwd, 2 teacher fwd (Heun), 1 target fwd",
                                "ct": "fwd+bwd, 1 target fwd"}[name]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    s = sampling_rows(args.batch, args.repeats)
    report("speed_sampling", f"Sampling speed, digits UNet, batch {args.batch}, CPU",
           ["sampler", "nfe", "images_per_s", "speedup", "nfe_ratio", "speedup_over_ideal", "overhead_vs_bare_forwards"], s)
    t = training_rows(args.train_batch, args.repeats)
    report("speed_training", f"Training step / its network passes, digits UNet, batch {args.train_batch}, CPU",
           ["method", "step_s", "network_passes_s", "ratio", "passes"], t)


if __name__ == "__main__":
    main()
