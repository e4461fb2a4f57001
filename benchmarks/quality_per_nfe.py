"""Quality against NFE for the EDM teacher (Heun 35 NFE; Euler/Heun at 1-4 NFE) and for CD, CT and iCT at
1, 2 and 4 steps, on the 2-D toy (sliced Wasserstein-2 to fresh data) and on digits (digits-feature FID).

    python benchmarks/quality_per_nfe.py            # trains what is missing under runs/bench/ (toy: ~5 min)
    python benchmarks/quality_per_nfe.py --digits   # adds digits (uses runs/edm_digits, runs/cd_digits, runs/ct_digits)

Writes benchmarks/results/quality_per_nfe.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ensure_run, report, sample_timed  # noqa: E402

from fsg.eval.quality import digits_fid, toy_distances  # noqa: E402
from fsg.models.load import load_model  # noqa: E402


def toy_rows(n: int) -> list[dict]:
    bench = ROOT / "runs" / "bench"
    teacher = ensure_run("train-diffusion", "recipes/tiny/edm_toy.yaml", bench / "edm_toy")
    runs = {"CD": ensure_run("distill", "recipes/tiny/cd_toy.yaml", bench / "cd_toy", teacher=teacher),
            "CT": ensure_run("train-consistency", "recipes/tiny/ct_toy.yaml", bench / "ct_toy"),
            "iCT": ensure_run("train-consistency", "recipes/tiny/ict_toy.yaml", bench / "ict_toy")}
    settings = [("EDM teacher", "heun", 18), ("EDM teacher", "heun", 2), ("EDM teacher", "heun", 3),
                ("EDM teacher", "euler", 1), ("EDM teacher", "euler", 2), ("EDM teacher", "euler", 4)]
    from fsg.data import sample_toy
    import torch
    fresh = sample_toy("moons", n, torch.Generator().manual_seed(1))
    rows = [{"data": "toy:moons", "model": "fresh data (floor)", "sampler": "-", "nfe": 0, **toy_distances(fresh)}]
    t = load_model(teacher)
    for name, sampler, steps in settings:
        x, nfe, sec = sample_timed(t, n, n, sampler=sampler, steps=steps)
        rows.append({"data": "toy:moons", "model": name, "sampler": sampler, "nfe": nfe, **toy_distances(x)})
    for name, run in runs.items():
        m = load_model(run)
        for k in (1, 2, 4):
            x, nfe, sec = sample_timed(m, n, n, steps=k)
            rows.append({"data": "toy:moons", "model": name, "sampler": "consistency", "nfe": nfe, **toy_distances(x)})
    return rows


def digits_rows(n: int) -> list[dict]:
    rows = []
    runs = ROOT / "runs"
    teacher = runs / "edm_digits" if (runs / "edm_digits" / "model.safetensors").exists() else ROOT / "assets" / "edm_digits"
    t = load_model(teacher)
    for sampler, steps in (("heun", 18), ("heun", 2), ("euler", 1), ("euler", 2), ("euler", 4)):
        x, nfe, _ = sample_timed(t, n, 256, sampler=sampler, steps=steps)
        rows.append({"data": "digits16", "model": "EDM teacher", "sampler": sampler, "nfe": nfe, "fid": digits_fid(x)})
    for name, run in (("CD", runs / "cd_digits"), ("CT", runs / "ct_digits")):
        if not (run / "model.safetensors").exists():
            run = ROOT / "assets" / f"{name.lower()}_digits"
            if not (run / "model.safetensors").exists():
                continue
        m = load_model(run)
        for k in (1, 2, 4):
            x, nfe, _ = sample_timed(m, n, 256, steps=k)
            rows.append({"data": "digits16", "model": name, "sampler": "consistency", "nfe": nfe, "fid": digits_fid(x)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5000, help="samples per setting")
    ap.add_argument("--digits", action="store_true", help="also the digits models")
    args = ap.parse_args()
    rows = toy_rows(args.n)
    if args.digits:
        rows += digits_rows(min(args.n, 2000))
    report("quality_per_nfe", "Quality per NFE (toy: sliced W2 to fresh data, lower is better; digits: digits-FID)",
           ["data", "model", "sampler", "nfe", "sw", "mmd", "fid"], rows)


if __name__ == "__main__":
    main()
