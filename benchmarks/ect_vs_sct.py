"""ECT against SCT at equal training steps over several teachers: the claim of Wang et al. 2024 in miniature
("SCT converges faster, with a lower-variance target, to better 1-step quality").

Each mode runs its shipped recipe (recipes/tiny/ect_{data}.yaml, sct_{data}.yaml) from the same teacher, with
the same tuning seed. Toy teachers are trained by recipes/tiny/edm_toy.yaml under teacher seeds 1, 2, 3 (the
bundled assets/edm_toy is teacher seed 0, kept out of the default set because the old single-teacher claim was
made with it); the digits teacher is the bundled assets/edm_digits.

    python benchmarks/ect_vs_sct.py --jobs 2                  # toy: 3 teachers x 3 tuning seeds x 2 modes, 2000 steps
    python benchmarks/ect_vs_sct.py --data digits --jobs 2    # digits: bundled teacher x 3 tuning seeds x 2 modes
    python benchmarks/ect_vs_sct.py --quick                   # toy, 1 teacher x 1 seed x 300 steps under runs/bench_quick/

Metrics (lower is better except `recognised`), at 1 step (t = 80) and 2 steps (t = 80, 0.821):
- toy: sliced Wasserstein-2 (`sw`) and RBF MMD^2 (`mmd`) to 5,000 fresh moons points (fsg.eval.quality.toy_distances;
  5,000 fresh data points against the same reference: sw 0.017, mmd 0.000), on 5,000 samples;
- digits: digits-FID against all 1,797 digits and `recognised`, the share of samples to which the bundled digits
  classifier (fsg.eval.digits) gives some class a probability >= 0.9 (real digits: 0.98), on 2,000 samples.
Toy shape at 1 step (fsg's diagnostics of what SW2 charges): `off`, the share of samples farther than 0.2 from the
noiseless moons curve (data 0.006); `thick`, the RMS distance to the curve of the others (data 0.070); `spread`, the
RMS of the coordinates' std (data 1.00). `target_var` and `ref_ess` are the training logs' means (fsg.methods.ect).
Means and sample standard deviations are over all (teacher, tuning seed) runs; `wins` counts the runs in which
SCT's number is better than ECT's for the same teacher and seed.

The target table measures, per time t, the bias and variance per dimension of the x0 estimate in the Euler target
(ECT: the sample's own x0; SCT: the self-normalised batch score identity at the recipe's batch size) against the
exact posterior mean over the whole training set, by Monte Carlo: for each of `queries` points x_t = x0 + t eps,
`replicates` batches, each of the own x0 drawn from p(x0 | x_t) and batch - 1 others drawn from the data.
ECT's estimate is unbiased by construction; `sct_bias2` comes with `sct_bias2_noise` = sct_var / replicates, the
level a bias-free estimate shows by chance. `sct_delta_var` is the delta-method variance fsg logs as `target_var`
and `sct_ess` the mean effective number of references 1 / sum_j w_j^2 (1: SCT's target is ECT's).

Runs go to runs/ect_vs_sct/ (runs/bench_quick/ect_vs_sct/ with --quick) and are retrained on every call; teachers
are kept. Writes benchmarks/results/ect_vs_sct.json (ect_vs_sct_digits.json, ect_vs_sct_quick.json).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, mean_std, report  # noqa: E402

from fsg.app.train import train  # noqa: E402
from fsg.data import build_dataset  # noqa: E402
from fsg.eval.images import to_uint8  # noqa: E402
from fsg.eval.quality import digits_fid, toy_distances  # noqa: E402
from fsg.methods.ect import estimate_variance, posterior_mean, reference_weights  # noqa: E402
from fsg.models.load import load_model  # noqa: E402
from fsg.sampling.generate import iter_samples  # noqa: E402
from fsg.train.recipe import load_recipe  # noqa: E402

MID_T = 0.821                      # ECT's CIFAR-10 two-step time
MODES = ("ect", "sct")
TOY_TEACHERS = (1, 2, 3)
TUNING_SEEDS = (0, 1, 2)
T_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 80.0)
RECOGNISED_P = 0.9


def toy_teacher(seed: int, base: Path, max_steps: int | None = None) -> Path:
    """The EDM toy teacher of `recipes/tiny/edm_toy.yaml` under `seed` (trained once, then kept)."""
    run = base / "ect_vs_sct" / "teachers" / f"edm_toy_t{seed}"
    if not (run / "model.safetensors").is_file():
        shutil.rmtree(run, ignore_errors=True)
        train("train-diffusion", ROOT / "recipes/tiny/edm_toy.yaml", run_dir=run, device="cpu", seed=seed,
              max_steps=max_steps, progress=False)
    return run


@torch.no_grad()
def recognised(x: torch.Tensor) -> float:
    """Share of images to which the digits classifier gives some class a probability >= RECOGNISED_P."""
    from fsg.eval.digits import load_digits_net, prepare_digits

    net = load_digits_net()[0].eval()
    p = torch.cat([net(prepare_digits(to_uint8(chunk))).softmax(1) for chunk in x.split(512)])   # (n, 10)
    return float((p.max(1).values >= RECOGNISED_P).float().mean())


def moons_shape(x: torch.Tensor) -> dict[str, float]:
    """`off`: share of points farther than 0.2 from the noiseless moons curve (fsg.data.toys: half circles of
    radius 1, centred at (1/2, 1/4), scaled by sqrt(2)); `thick`: RMS distance to the curve of the others (the
    data's is about 0.05 sqrt(2) = 0.071, the scaled noise); `spread`: RMS of the coordinates' std (data 0.999)."""
    s = torch.linspace(0, math.pi, 2001, dtype=torch.float64)
    upper = torch.stack([torch.cos(s), torch.sin(s)], 1)
    curve = (torch.cat([upper, torch.tensor([1.0, 0.5], dtype=torch.float64) - upper]) - torch.tensor([0.5, 0.25])) * math.sqrt(2)
    dist = torch.cdist(x.double(), curve).min(1).values
    on = dist < 0.2
    return {"off": 1 - on.double().mean().item(), "thick": dist[on].pow(2).mean().sqrt().item(),
            "spread": x.double().var(0).mean().sqrt().item()}


def metrics(data: str, x: torch.Tensor, shape: bool = False) -> dict[str, float]:
    if data == "toy":
        return toy_distances(x) | (moons_shape(x) if shape else {})
    return {"fid": digits_fid(x), "recognised": recognised(x)}


def samples(model, n: int, **kw) -> torch.Tensor:
    stream = iter_samples(model, n, seed=0, batch_size=min(n, 2500), device="cpu", **kw)
    return torch.cat([x for _, x, _ in stream])


def tune(job: dict) -> dict:
    """One (teacher, tuning seed, mode) run with its mode's shipped recipe; its metrics at 1 and 2 steps."""
    torch.set_num_threads(1)
    data, mode, run = job["data"], job["mode"], Path(job["run"])
    shutil.rmtree(run, ignore_errors=True)
    train("tune-sct", ROOT / f"recipes/tiny/{mode}_{data}.yaml", job["overrides"], run_dir=run, device="cpu",
          seed=job["seed"], teacher=job["teacher_path"], progress=False)
    model = load_model(run)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    row = {k: job[k] for k in ("data", "mode", "teacher", "seed")}
    for name, kw in (("1step", {"steps": 1}), ("2step", {"sigmas": [80.0, MID_T]})):
        row.update({f"{k}_{name}": v for k, v in metrics(data, samples(model, job["n"], **kw), name == "1step").items()})
    row["target_var"] = statistics.mean(ln["target_var"] for ln in lines)
    row["ref_ess"] = statistics.mean(ln["ref_ess"] for ln in lines)
    print(json.dumps(row), flush=True)
    return row


@torch.no_grad()
def target_stats(x_data: torch.Tensor, batch: int, queries: int, replicates: int, seed: int = 0) -> list[dict]:
    """Bias^2 and variance per dimension of ECT's and SCT's x0 estimate given x_t, per t (see the docstring)."""
    gen = torch.Generator().manual_seed(seed)
    pool = x_data.flatten(1).double()                                            # (P, d)
    d = pool.shape[1]
    rows = []
    for t in T_GRID:
        own0 = pool[torch.randint(len(pool), (queries,), generator=gen)]         # (Q, d)
        x_t = own0 + t * torch.randn(own0.shape, generator=gen, dtype=torch.float64)
        tq = torch.full((queries,), t, dtype=torch.float64)
        p_all = reference_weights(x_t, tq, pool)                                 # (Q, P): the exact posterior
        truth = p_all @ pool                                                     # (Q, d)
        est = {"ect": [], "sct": []}
        delta, ess = [], []
        for _ in range(replicates):
            own = pool[torch.multinomial(p_all, 1, generator=gen)[:, 0]]        # (Q, d): x0 ~ p(x0 | x_t)
            others = pool[torch.randint(len(pool), (queries, batch - 1), generator=gen)]   # (Q, B-1, d)
            refs = torch.cat([own[:, None], others], 1)                          # (Q, B, d), own first
            for q in range(queries):
                w = reference_weights(x_t[q:q + 1], tq[q:q + 1], refs[q])       # (1, B)
                m = posterior_mean(w, refs[q])
                est["sct"].append(m[0])
                delta.append(estimate_variance(w, refs[q], m).item())
                ess.append(1 / w.pow(2).sum().item())
            est["ect"].extend(own)
        row = {"t": t}
        for mode, values in est.items():
            e = torch.stack(values).reshape(replicates, queries, d)            # (R, Q, d)
            row[f"{mode}_var"] = (e - e.mean(0)).pow(2).sum(-1).mean().item() / d * replicates / (replicates - 1)
            if mode == "sct":                  # ECT's own x0 ~ p(x0 | x_t) is unbiased by construction
                row["sct_bias2"] = (e.mean(0) - truth).pow(2).sum(-1).mean().item() / d - row["sct_var"] / replicates
                row["sct_bias2_noise"] = row["sct_var"] / replicates           # what an unbiased estimate shows by chance
        row["sct_delta_var"], row["sct_ess"] = statistics.mean(delta), statistics.mean(ess)
        # both ~0 (< 1e-9) where the posterior is one training point (digits at t <= 0.3): 1, not 0 / round-off
        tiny = 1e-9
        row["var_ratio"] = row["ect_var"] / row["sct_var"] if row["sct_var"] > tiny else float("inf") if row["ect_var"] > tiny else 1.0
        rows.append(row)
    return rows


def summarise(rows: list[dict], keys: list[str]) -> list[dict]:
    """Mean and sample std over all (teacher, tuning seed) runs of each mode."""
    out = []
    for mode in MODES:
        group = [r for r in rows if r["mode"] == mode]
        row = {"mode": mode, "runs": len(group)}
        row.update(mean_std(group, keys))
        out.append(row)
    return out


def per_teacher(rows: list[dict], keys: list[str]) -> list[dict]:
    out = []
    for teacher in dict.fromkeys(r["teacher"] for r in rows):
        for mode in MODES:
            group = [r for r in rows if r["teacher"] == teacher and r["mode"] == mode]
            out.append({"teacher": teacher, "mode": mode, **{k: statistics.mean(r[k] for r in group) for k in keys}})
    return out


def wins(rows: list[dict], keys: list[str]) -> dict[str, str]:
    higher_better = {k for k in keys if k.startswith("recognised")}
    pairs = {(r["teacher"], r["seed"]): {} for r in rows}
    for r in rows:
        pairs[(r["teacher"], r["seed"])][r["mode"]] = r
    out = {}
    for k in keys:
        n = sum((p["sct"][k] > p["ect"][k]) if k in higher_better else (p["sct"][k] < p["ect"][k]) for p in pairs.values())
        out[k] = f"{n}/{len(pairs)}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="toy, 1 teacher x 1 seed x 300 steps under runs/bench_quick/")
    ap.add_argument("--data", choices=("toy", "digits"), default="toy")
    ap.add_argument("--teachers", type=int, nargs="+", default=list(TOY_TEACHERS), help="toy teacher seeds (0: the bundled one)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(TUNING_SEEDS), help="tuning seeds")
    ap.add_argument("--steps", type=int, default=None,
                    help="train.max_steps of every run (default: the recipes'); method.double_steps scales with it")
    ap.add_argument("--jobs", type=int, default=1, help="runs in parallel, one thread each")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = ROOT / "runs" / ("bench_quick" if args.quick else "")
    runs = base / "ect_vs_sct"
    data = "toy" if args.quick else args.data
    if args.quick:
        args.teachers, args.seeds, args.steps = [1], [0], 300
    overrides = []
    if args.steps is not None:         # shorter runs keep the recipes' number of stages
        recipe = load_recipe(ROOT / f"recipes/tiny/sct_{data}.yaml")
        double = max(1, round(recipe.method.double_steps * args.steps / recipe.train.max_steps))
        overrides = [f"train.max_steps={args.steps}", f"method.double_steps={double}"]
    if data == "toy":
        teachers = {f"t{k}": (ROOT / "assets/edm_toy" if k == 0 else toy_teacher(k, base, 300 if args.quick else None))
                    for k in args.teachers}
        n = 5000
    else:
        teachers, n = {"bundled": ROOT / "assets/edm_digits"}, 2000
    jobs = [{"data": data, "mode": mode, "teacher": name, "teacher_path": str(path), "seed": seed, "n": n,
             "overrides": overrides, "run": str(runs / f"{mode}_{data}_{name}_s{seed}")}
            for name, path in teachers.items() for seed in args.seeds for mode in MODES]
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(tune, jobs))
    else:
        rows = [tune(job) for job in jobs]

    keys = [f"{m}_{s}" for s in ("1step", "2step") for m in (("sw", "mmd") if data == "toy" else ("fid", "recognised"))]
    diag = (["off_1step", "thick_1step", "spread_1step"] if data == "toy" else []) + ["target_var", "ref_ess"]
    summary = summarise(rows, keys + diag)
    batch = load_recipe(ROOT / f"recipes/tiny/sct_{data}.yaml").train.batch_size
    dataset = build_dataset(load_recipe(ROOT / f"recipes/tiny/sct_{data}.yaml").data)
    x_data = torch.stack([dataset[i]["x"] for i in range(len(dataset))])
    targets = target_stats(x_data, batch, queries=16 if args.quick else 64, replicates=8 if args.quick else 32)

    name = "ect_vs_sct_quick" if args.quick else ("ect_vs_sct" if data == "toy" else "ect_vs_sct_digits")
    won, teacher_rows = wins(rows, keys), per_teacher(rows, keys + diag)
    print(f"x0 estimate of the Euler target per t ({data}, batch {batch}): bias^2 and variance per dimension")
    for r in targets:
        print("  " + "  ".join(f"{k} {v:.3g}" for k, v in r.items()))
    print("per teacher, mean over tuning seeds")
    for r in teacher_rows:
        print("  " + "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    table = [{"mode": r["mode"], "runs": r["runs"], **{k: f"{r[k]:.4g} ± {r[k + '_std']:.2g}" for k in keys + diag}}
             for r in summary]
    report(name, f"ECT vs SCT at equal steps over {len(teachers)} teacher(s) x {len(args.seeds)} tuning seed(s) ({data}; "
           "mean ± std over runs)", ["mode", "runs", *keys, *diag], table,
           {"summary": summary, "wins": won, "runs": rows, "per_teacher": teacher_rows, "targets": targets, "batch": batch,
            "mid_t": MID_T, "overrides": overrides, "teachers": {k: str(v) for k, v in teachers.items()}})
    for k, v in won.items():
        print(f"SCT better than ECT (same teacher and tuning seed) in {k}: {v} runs")

if __name__ == "__main__":
    main()
