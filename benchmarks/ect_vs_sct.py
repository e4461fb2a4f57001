"""ECT against SCT at equal training steps: the claim of Wang et al. 2024 in miniature ("SCT converges faster,
with a lower-variance target, to better 1-step quality").

Both modes run one recipe (recipes/tiny/sct_toy.yaml, sct_digits.yaml; ECT through `--mode ect`): the same
teacher, batch, optimizer, mapping and steps. They differ only where the papers do: ECT's one-sample target
and stage-wise dt against SCT's batch score-identity target and smooth dt schedule. Each run is tuned in
segments (exact resume) and evaluated after each: 1 step (t = 80) and 2 steps (t = 80, 0.821); the logged
`target_var` (the estimated variance per dimension of the target's x0 estimate given x_t, see
fsg/methods/ect.py) is averaged over each segment. The last checkpoint also samples 2 steps with SCT's
edge-skipping (eta 0.5).

    python benchmarks/ect_vs_sct.py                  # toy: 3 training seeds x 2 modes x 2000 steps (~10 min on 2 cores)
    python benchmarks/ect_vs_sct.py --data digits    # digits: 1 seed x 2 modes x 800 steps (teacher runs/edm_digits; ~30 min)
    python benchmarks/ect_vs_sct.py --quick          # toy, 1 seed x 300 steps under runs/bench_quick/

Toy: sliced Wasserstein-2 to 5,000 fresh moons points; digits: digits-feature FID against the 1,797 digits.
Runs go to runs/ect_vs_sct/ (runs/bench_quick/ect_vs_sct/ with --quick) and are retrained on every call.
Writes benchmarks/results/ect_vs_sct.json (ect_vs_sct_digits.json, ect_vs_sct_quick.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ensure_run, report  # noqa: E402

from fsg.eval.quality import digits_fid, toy_distances  # noqa: E402
from fsg.models.load import load_model  # noqa: E402
from fsg.sampling.generate import iter_samples  # noqa: E402
from fsg.app.train import train  # noqa: E402

MID_T = 0.821          # ECT's CIFAR-10 two-step time
EDGE_SKIP = 0.5
MODES = ("ect", "sct")


def toy_sw(x: torch.Tensor) -> float:
    return toy_distances(x)["sw"]


def samples(model, n: int, **kw) -> torch.Tensor:
    stream = iter_samples(model, n, seed=0, batch_size=min(n, 2000), device="cpu", **kw)
    return torch.cat([x for _, x, _ in stream])


def mean_target_var(run: Path, lo: int, hi: int) -> float:
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return statistics.mean(ln["target_var"] for ln in lines if lo < ln["step"] <= hi)


def tune(data: str, mode: str, seed: int, teacher: Path, runs: Path, checkpoints: list[int], overrides: list[str],
         n: int, metric) -> list[dict]:
    """Tune one (mode, seed) run segment by segment; one row per checkpoint."""
    run = runs / f"{mode}_{data}_s{seed}"
    shutil.rmtree(run, ignore_errors=True)
    rows, previous = [], 0
    for step in checkpoints:
        train("tune-sct", ROOT / f"recipes/tiny/sct_{data}.yaml", [f"method.name={mode}", *overrides], run_dir=run,
              device="cpu", seed=seed, max_steps=step, resume="auto" if previous else None, teacher=teacher, progress=False)
        model = load_model(run)
        row = {"data": data, "mode": mode, "seed": seed, "step": step,
               "one_step": metric(samples(model, n, steps=1)),
               "two_step": metric(samples(model, n, sigmas=[80.0, MID_T])),
               "target_var": mean_target_var(run, previous, step)}
        if step == checkpoints[-1]:
            row["two_step_edge_skip"] = metric(samples(model, n, sigmas=[80.0, MID_T], edge_skip=EDGE_SKIP))
        rows.append(row)
        previous = step
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and std over training seeds for each (data, mode, step)."""
    keys = ("one_step", "two_step", "two_step_edge_skip", "target_var")
    out = []
    for data, mode, step in dict.fromkeys((r["data"], r["mode"], r["step"]) for r in rows):
        group = [r for r in rows if (r["data"], r["mode"], r["step"]) == (data, mode, step)]
        row = {"data": data, "mode": mode, "step": step, "seeds": len(group)}
        for k in keys:
            values = [r[k] for r in group if k in r]
            if values:
                row[k] = statistics.mean(values)
                row[f"{k}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(row)
    return out


def verdict(summary: list[dict]) -> list[str]:
    lines = []
    for data in dict.fromkeys(r["data"] for r in summary):
        last = max(r["step"] for r in summary if r["data"] == data)
        at = {r["mode"]: r for r in summary if r["data"] == data and r["step"] == last}
        ect, sct = at["ect"], at["sct"]
        lines.append(f"{data} @ {last} steps: 1-step ECT {ect['one_step']:.4g} vs SCT {sct['one_step']:.4g} "
                     f"({'SCT better' if sct['one_step'] < ect['one_step'] else 'ECT better or equal'}); "
                     f"2-step {ect['two_step']:.4g} vs {sct['two_step']:.4g}; "
                     f"target variance {ect['target_var']:.3g} vs {sct['target_var']:.3g} "
                     f"({ect['target_var'] / sct['target_var']:.0f}x lower with SCT)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="toy, 1 seed x 300 steps under runs/bench_quick/")
    ap.add_argument("--data", choices=("toy", "digits"), default="toy", help="toy (teacher runs/edm_toy) or digits (runs/edm_digits)")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per toy mode")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = ROOT / "runs" / ("bench_quick" if args.quick else "")
    runs = base / "ect_vs_sct"
    if args.quick:
        teacher = ensure_run("train-diffusion", "recipes/tiny/edm_toy.yaml", base / "edm_toy", max_steps=300)
        rows = [r for mode in MODES for r in tune("toy", mode, 0, teacher, runs, [100, 200, 300],
                                                  ["train.max_steps=300", "method.double_steps=40"], 1000, toy_sw)]
    elif args.data == "toy":
        teacher = ensure_run("train-diffusion", "recipes/tiny/edm_toy.yaml", base / "edm_toy")
        rows = [r for seed in range(args.seeds) for mode in MODES
                for r in tune("toy", mode, seed, teacher, runs, [250, 500, 1000, 2000], [], 5000, toy_sw)]
    else:
        teacher = ensure_run("train-diffusion", "recipes/tiny/edm_digits.yaml", base / "edm_digits")
        rows = [r for mode in MODES for r in tune("digits", mode, 0, teacher, runs, [200, 400, 800], [], 2000, digits_fid)]
    summary = summarise(rows)
    lines = verdict(summary)
    report("ect_vs_sct_quick" if args.quick else ("ect_vs_sct" if args.data == "toy" else "ect_vs_sct_digits"),
           "ECT vs SCT at equal steps (toy: sliced W2 to fresh data; digits: digits-FID; lower is better)",
           ["data", "mode", "step", "one_step", "two_step", "two_step_edge_skip", "target_var"], summary, {"verdict": lines, "runs": rows, "mid_t": MID_T, "edge_skip": EDGE_SKIP})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
