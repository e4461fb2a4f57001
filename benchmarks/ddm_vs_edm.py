"""DDM's posterior sampler against the EDM teacher at equal NFE: the claim of Huang et al. 2023 in miniature
("at 10 NFE DDM beats Euler sampling of a diffusion model of the same size and training budget").

Both models share the network and the training budget of their tiny recipes (recipes/tiny/edm_toy.yaml and
ddm_toy.yaml: MLP 128 x 3, 3000 steps of 512; edm_digits.yaml and ddm_digits.yaml: UNet 32 ch, 4000 steps
of 128). Targets of 2/5/10/20 NFE: first-order samplers (DDM, EDM Euler) take that many steps; second-order
ones (DDM-Heun, EDM Heun, NFE = 2N - 1) take N = (NFE + 1) // 2 steps, so their NFE is 1, 5, 9, 19.

    python benchmarks/ddm_vs_edm.py                 # toy (trains runs/edm_toy, runs/ddm_toy if missing, ~3 min)
    python benchmarks/ddm_vs_edm.py --digits        # adds digits (runs/edm_digits, runs/ddm_digits: ~15 min each to train)
    python benchmarks/ddm_vs_edm.py --quick         # 300-step toy models under runs/bench_quick/, 1000 samples

Toy: sliced Wasserstein-2 to 5,000 fresh moons points (mean and std over sampling seeds); digits: digits-feature
FID against the 1,797 digits. Writes benchmarks/results/ddm_vs_edm.json (ddm_vs_edm_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ensure_run, report  # noqa: E402

from fsg.eval.quality import digits_fid, toy_distances  # noqa: E402
from fsg.models.load import load_model  # noqa: E402
from fsg.sampling.generate import iter_samples  # noqa: E402

TARGET_NFE = (2, 5, 10, 20)
SAMPLERS = [  # (model, sampler, second order)
    ("DDM", "ddm", False), ("DDM", "ddm-heun", True), ("EDM", "euler", False), ("EDM", "heun", True)]


def steps_for(nfe: int, second_order: bool) -> int:
    return (nfe + 1) // 2 if second_order else nfe


def samples(model, n: int, sampler: str, steps: int, seed: int) -> tuple[torch.Tensor, int]:
    stream = iter_samples(model, n, sampler=sampler, steps=steps, seed=seed, batch_size=min(n, 2000), device="cpu")
    return torch.cat([x for _, x, _ in stream]), stream.nfe


def rows_for(data: str, models: dict, n: int, seeds: int, metric) -> list[dict]:
    rows = []
    for target in TARGET_NFE:
        for name, sampler, second_order in SAMPLERS:
            values, nfe = [], None
            for seed in range(seeds):
                x, nfe = samples(models[name], n, sampler, steps_for(target, second_order), seed)
                values.append(metric(x))
            rows.append({"data": data, "target_nfe": target, "model": name, "sampler": sampler, "nfe": nfe,
                         "value": statistics.mean(values), "std": statistics.stdev(values) if seeds > 1 else 0.0})
    return rows


def trained_pair(runs: Path, data: str, max_steps: int | None) -> dict:
    """The EDM and DDM models of recipes/tiny/{edm,ddm}_<data>.yaml, trained into runs/ when missing."""
    return {name: load_model(ensure_run("train-diffusion", f"recipes/tiny/{name.lower()}_{data}.yaml",
                                        runs / f"{name.lower()}_{data}", max_steps=max_steps))
            for name in ("EDM", "DDM")}


def toy(runs: Path, max_steps: int | None, n: int, seeds: int) -> list[dict]:
    return rows_for("toy:moons (SW2)", trained_pair(runs, "toy", max_steps), n, seeds, lambda x: toy_distances(x)["sw"])


def digits(runs: Path, max_steps: int | None, n: int) -> list[dict]:
    return rows_for("digits16 (FID)", trained_pair(runs, "digits", max_steps), n, 1, digits_fid)


def verdict(rows: list[dict]) -> list[str]:
    """One line per data set: DDM's 10-NFE sampler against EDM's Euler at 10 NFE (lower is better)."""
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        at10 = {r["sampler"]: r for r in rows if r["data"] == data and r["target_nfe"] == 10}
        ddm, euler = at10["ddm"]["value"], at10["euler"]["value"]
        lines.append(f"{data}: DDM {ddm:.4g} vs EDM Euler {euler:.4g} at 10 NFE -> "
                     f"{'DDM better' if ddm < euler else 'EDM Euler better or equal'}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short trainings under runs/bench_quick/, fewer samples")
    ap.add_argument("--digits", action="store_true", help="also the digits models")
    ap.add_argument("--seeds", type=int, default=3, help="sampling seeds per toy setting")
    args = ap.parse_args()
    torch.set_num_threads(1)
    runs = ROOT / "runs" / ("bench_quick" if args.quick else "")
    rows = toy(runs, 300 if args.quick else None, 1000 if args.quick else 5000, 1 if args.quick else args.seeds)
    if args.digits:
        rows += digits(runs, 30 if args.quick else None, 200 if args.quick else 2000)
    lines = verdict(rows)
    report("ddm_vs_edm_quick" if args.quick else "ddm_vs_edm",
           "DDM vs EDM at equal NFE (toy: sliced W2 to fresh data; digits: digits-FID; lower is better)",
           ["data", "target_nfe", "model", "sampler", "nfe", "value", "std"], rows, {"verdict": lines})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
