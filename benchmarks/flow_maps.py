"""Flow maps against consistency models in miniature: MeanFlow (Geng et al. 2025) against iCT (Song & Dhariwal 2023)
and sCT (Lu & Song 2025), all three trained from scratch (no teacher) with the same network and the same number of
training steps, sampled at 1, 2 and 4 steps; and whether each gets better or worse as steps are added.

Every method runs its shipped tiny recipe (recipes/tiny/{meanflow,ict,scm_ct}_{toy,digits}.yaml: the MLP of 3
residual blocks of width 128 on the toy, the 32-channel UNet on digits; MeanFlow's network adds the embedding of its
second time input) with `train.max_steps` set to the same S. Steps: MeanFlow jumps over evenly spaced times,
iCT samples on its training grid (`--steps k`), sCT at t_max then evenly spaced times from 1.1 down.

Metrics. Toy: sliced Wasserstein-2 and RBF MMD^2 to 5,000 fresh moons points (the floor of 5,000 fresh points
against them is 0.029 SW). Digits: digits-FID and `recognised` (see benchmarks/consistency_family.py).

    python benchmarks/flow_maps.py                  # toy, 3 training seeds, S = 4000
    python benchmarks/flow_maps.py --data digits    # digits, 1 seed, S = 1500 (--seeds 3 for three)
    python benchmarks/flow_maps.py --quick          # toy, 1 seed, S = 300

Writes benchmarks/results/flow_maps[_digits|_quick].json; runs go to runs/flow_maps/.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, mean_std, report  # noqa: E402
from consistency_family import metrics, resume_or_clear, samples  # noqa: E402

from fsg.app.train import train  # noqa: E402
from fsg.models.load import load_model  # noqa: E402

METHODS = {"MeanFlow": "meanflow", "iCT": "ict", "sCT": "scm_ct"}     # all train-consistency, from scratch
STEPS = (1, 2, 4)


def run_method(name: str, data: str, seed: int, steps: int, runs: Path, n: int) -> dict:
    stem = METHODS[name]
    run = runs / f"{stem}_{data}_s{seed}"
    start = time.perf_counter()
    train("train-consistency", ROOT / "recipes" / "tiny" / f"{stem}_{data}.yaml", [f"train.max_steps={steps}"],
          run_dir=run, device="cpu", seed=seed, resume=resume_or_clear(run),
          progress=False)
    row = {"method": name, "data": data, "seed": seed, "steps": steps, "train_s": time.perf_counter() - start}
    model = load_model(run)
    for k in STEPS:
        for metric, value in metrics(data, samples(model, n, steps=k)).items():
            row[f"{metric}_{k}"] = value
    return row


def trend(values: list[float]) -> str:
    """'better' / 'worse' / 'flat' from 1 to 4 steps (lower is better; within 5% counts as flat)."""
    first, last = values[0], values[-1]
    if abs(last - first) <= 0.05 * abs(first):
        return "flat"
    return "better" if last < first else "worse"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("toy", "digits"), default="toy")
    ap.add_argument("--quick", action="store_true", help="toy: 1 seed x 300 steps")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds (toy: 3; digits: 1)")
    ap.add_argument("--steps", type=int, default=None, help="training steps S (toy: 4000; digits: 1500)")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at once (one thread each)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    toy = args.data == "toy"
    steps = args.steps or (300 if args.quick else 4000 if toy else 1500)
    n_seeds = args.seeds or (3 if toy and not args.quick else 1)
    runs = ROOT / "runs" / "flow_maps" / ("quick" if args.quick else args.data)
    n = 5000 if toy else 1000
    jobs = [(name, args.data, seed, steps, runs, n) for name in METHODS for seed in range(n_seeds)]
    with ProcessPoolExecutor(args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        rows = []
        for row in pool.map(run_method, *zip(*jobs)):
            rows.append(row)
            print(row, flush=True)
    metric = "sw" if toy else "fid"
    other = "mmd" if toy else "recognised"
    keys = [f"{m}_{k}" for m in (metric, other) for k in STEPS]
    summary = []
    for name in METHODS:
        group = [r for r in rows if r["method"] == name]
        row = {"method": name, "runs": len(group), "steps": steps}
        row.update(mean_std(group, keys))
        row["more steps"] = trend([row[f"{metric}_{k}"] for k in STEPS])
        summary.append(row)
    name = "flow_maps_quick" if args.quick else ("flow_maps" if toy else "flow_maps_digits")
    report(name, f"Flow map vs consistency models from scratch ({args.data}; {n_seeds} seed(s) x {steps} steps; "
                 f"lower {metric}/{other if toy else 'fid'} is better)",
           ["method", "runs", "steps", *keys, "more steps"], summary, {"runs": rows, "steps": steps})


if __name__ == "__main__":
    main()
