"""The consistency family side by side in miniature: CD, iCT, ECT, SCT, sCT and sCD (Song et al. 2023; Song &
Dhariwal 2023; Geng et al. 2024; Wang et al. 2024; Lu & Song 2025) at 1 and 2 steps, at equal training steps and at
equal wall-clock, over teachers (teacher seeds) x training seeds, and the cost of one training step as a multiple of
a forward plus backward pass of the same network.

Every method runs its shipped tiny recipe (recipes/tiny/{cd,ict,ect,sct,scm_ct,scm_cd}_{toy,digits}.yaml) with
`train.max_steps` set to the same number of steps S. Methods with a teacher (CD, ECT, SCT, sCD) run once per teacher;
iCT and sCT train from data and run once per training seed only. Equal wall-clock: the step cost of each method is
measured in one process (1 thread, the same batch), the budget is CD's S steps, and each method trains
round(S cost_CD / cost_method) steps with its recipe otherwise unchanged.

Metrics. Toy: sliced Wasserstein-2 and RBF MMD^2 to 5,000 fresh moons points (fsg.eval.quality.toy_distances).
Digits: digits-FID (fsg's digits classifier features, against the 1,797 digits) and `recognised`, the share of
samples the same classifier assigns to one class with probability >= 0.9 (the samples are unconditional, so there
is no class to agree with: this measures how many look like some digit). 2 steps: CD and iCT on their training
grids (`--steps 2`), ECT and SCT at sigma 80 then 0.821 (ECT's CIFAR-10 time), sCT and sCD at t_max then 1.1.

Toy teachers: teacher 0 is the bundled assets/edm_toy; teacher k > 0 is recipes/tiny/edm_toy.yaml trained under seed
k, the teacher of benchmarks/ect_vs_sct.py (runs/ect_vs_sct/teachers/, trained once and shared).
sCD's criterion of issue 21 is measured per toy teacher: sliced W2 of 1-step sCD samples to the teacher's 35-NFE Heun
samples against that of the teacher's own 19-NFE Heun samples (`scd_criterion` in the JSON).

    python benchmarks/consistency_family.py --jobs 2            # toy: 3 teachers x 3 seeds, equal steps and equal time
    python benchmarks/consistency_family.py --data digits       # digits: the bundled teacher x 1 seed (see --help)
    python benchmarks/consistency_family.py --quick             # toy: 1 teacher x 1 seed x 200 steps

Writes benchmarks/results/consistency_family[_digits|_quick].json; runs go to runs/consistency_family/.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ect_vs_sct  # noqa: E402
from common import ROOT, mean_std, report  # noqa: E402

from fsg.app.train import train  # noqa: E402
from fsg.data import sample_toy  # noqa: E402
from fsg.eval.quality import TOY_REF_SEED, digits_fid, toy_distances  # noqa: E402
from fsg.eval.stats import sliced_wasserstein  # noqa: E402
from fsg.models.load import load_model  # noqa: E402
from fsg.sampling.generate import iter_samples  # noqa: E402
from fsg.train.recipe import load_recipe  # noqa: E402

# method -> (command, recipe stem, needs a teacher, 2-step sampling keywords)
METHODS = {
    "CD": ("distill", "cd", True, dict(steps=2)),
    "iCT": ("train-consistency", "ict", False, dict(steps=2)),
    "ECT": ("tune-sct", "ect", True, dict(sigmas=[80.0, 0.821])),
    "SCT": ("tune-sct", "sct", True, dict(sigmas=[80.0, 0.821])),
    "sCT": ("train-consistency", "scm_ct", False, dict(steps=2)),
    "sCD": ("distill", "scm_cd", True, dict(steps=2)),
}


def recipe(name: str, data: str) -> Path:
    stem = METHODS[name][1]
    path = ROOT / "recipes" / "tiny" / f"{stem}_{data}.yaml"
    if data == "digits" and not path.is_file():
        path = ROOT / "recipes" / "tiny" / f"{stem}_digits.yaml"
    return path


def samples(model, n: int, seed: int = 0, **kw) -> torch.Tensor:
    stream = iter_samples(model, n, seed=seed, batch_size=min(n, 1000), device="cpu", **kw)
    return torch.cat([x for _, x, _ in stream])


def recognised(x: torch.Tensor) -> float:
    """Share of digit samples the digits classifier puts in one class with probability >= 0.9."""
    from fsg.eval.digits import load_digits_net, prepare_digits
    from fsg.eval.images import to_uint8

    net, _ = load_digits_net()
    with torch.no_grad():
        probs = torch.cat([net(prepare_digits(to_uint8(chunk))).softmax(1) for chunk in x.split(512)])
    return float((probs.max(1).values >= 0.9).float().mean())


def metrics(data: str, x: torch.Tensor) -> dict[str, float]:
    if data == "toy":
        d = toy_distances(x)
        return {"sw": d["sw"], "mmd": d["mmd"]}
    return {"fid": digits_fid(x), "recognised": recognised(x)}


def toy_teacher(k: int, quick: bool) -> Path:
    """Teacher k of the toy: the bundled one for k = 0, else benchmarks/ect_vs_sct.py's teacher of seed k (trained
    once by recipes/tiny/edm_toy.yaml under runs/ect_vs_sct/teachers/, shared by both benchmarks)."""
    if k == 0 and not quick:
        return ROOT / "assets" / "edm_toy"
    return ect_vs_sct.toy_teacher(k, ROOT / "runs" / ("bench_quick" if quick else ""), 300 if quick else None)


def sw_to_teacher(x: torch.Tensor, ref: torch.Tensor) -> float:
    return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))


def teacher_reference(teacher: Path, n: int) -> dict[str, float | torch.Tensor]:
    """The teacher's 35-NFE Heun samples (seed 1, the reference of sCD's criterion) and the sliced W2 of its own
    19-NFE Heun samples (seed 2) to them."""
    model = load_model(teacher)
    ref = samples(model, n, steps=18, seed=1)
    fresh = sample_toy("moons", n, torch.Generator().manual_seed(TOY_REF_SEED + 1))
    return {"ref": ref, "heun19": sw_to_teacher(samples(model, n, steps=10, seed=2), ref),
            "heun35_fresh_data": sw_to_teacher(fresh, ref)}


def resume_or_clear(run: Path) -> str | None:
    """Continue a run of ours that has a checkpoint; a folder of ours without one (a run killed early) starts over."""
    if (run / "checkpoints").is_dir():
        return "auto"
    shutil.rmtree(run, ignore_errors=True)
    return None


def run_method(name: str, data: str, teacher: Path | None, seed: int, steps: int, runs: Path, n: int,
               tag: str, teacher_ref: torch.Tensor | None = None) -> dict:
    torch.set_num_threads(1)
    command, stem, needs_teacher, two_step = METHODS[name]
    run = runs / f"{tag}_{stem}_{data}_t{teacher.name if teacher else 'none'}_s{seed}"
    start = time.perf_counter()
    train(command, recipe(name, data), [f"train.max_steps={steps}"] if steps else [], run_dir=run, device="cpu", seed=seed,
          resume=resume_or_clear(run), teacher=teacher if needs_teacher else None,
          progress=False)
    seconds = time.perf_counter() - start
    model = load_model(run)
    row = {"method": name, "data": data, "teacher": teacher.name if needs_teacher else "-", "seed": seed,
           "steps": steps or load_recipe(recipe(name, data)).train.max_steps, "train_s": seconds}
    for k, kw in (("1", dict(steps=1)), ("2", two_step)):
        x = samples(model, n, **kw)
        for metric, value in metrics(data, x).items():
            row[f"{metric}_{k}"] = value
        if teacher_ref is not None and needs_teacher:
            row[f"sw_teacher35_{k}"] = sw_to_teacher(x, teacher_ref)
    return row


def step_costs(data: str, teacher: Path, repeats: int) -> dict[str, float]:
    """Seconds per training step of each method and of a plain forward + backward of its network, in this process,
    on the same batch (the recipe's batch size): cost = step / (forward + backward)."""
    from fsg.train.engine import RunOptions, Trainer
    from fsg.train.setup import build_run

    out = {}
    for name, (command, _, needs_teacher, _) in METHODS.items():
        rec = load_recipe(recipe(name, data), ["train.log_every=1000000", "train.ckpt_every=1000000"])
        parts = build_run(rec, command, torch.device("cpu"), teacher=teacher if needs_teacher else None)
        trainer = Trainer(rec, parts.method, parts.meta, RunOptions(Path("/tmp/fsg_step_cost"), torch.device("cpu")),
                          transform=parts.transform)
        dataset = parts.dataset
        batch = {k: torch.stack([dataset[i % len(dataset)][k] for i in range(rec.train.batch_size)])
                 for k in ("x", "index")}
        model = parts.method.model
        t = torch.full((rec.train.batch_size,), 0.5)

        def plain():
            model.zero_grad(set_to_none=True)
            model(batch["x"], t).pow(2).mean().backward()

        def step():
            trainer.train_step(batch)

        timings = {}
        for key, fn in (("plain", plain), ("step", step)):
            fn()                                                           # warm-up
            begin = time.perf_counter()
            for _ in range(repeats):
                fn()
            timings[key] = (time.perf_counter() - begin) / repeats
        out[name] = timings["step"] / timings["plain"]
        out[f"{name}_step_s"] = timings["step"]
    return out


def summarise(rows: list[dict], keys: list[str]) -> list[dict]:
    out = []
    for group_key in dict.fromkeys((r["budget"], r["method"]) for r in rows):
        group = [r for r in rows if (r["budget"], r["method"]) == group_key]
        row = {"budget": group_key[0], "method": group_key[1], "runs": len(group),
               "steps": statistics.mean(r["steps"] for r in group)}
        row.update(mean_std(group, keys))
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("toy", "digits"), default="toy")
    ap.add_argument("--quick", action="store_true", help="toy: 1 teacher x 1 seed x 200 steps")
    ap.add_argument("--teachers", type=int, default=None, help="teacher seeds (toy: 3; digits: the bundled teacher)")
    ap.add_argument("--seeds", type=int, default=None, help="training seeds (toy: 3; digits: 1)")
    ap.add_argument("--steps", type=int, default=None, help="training steps S (toy: 2000; digits: 400)")
    ap.add_argument("--no-equal-time", action="store_true", help="skip the equal wall-clock runs")
    ap.add_argument("--time-teachers", type=int, default=None,
                    help="teachers of the equal wall-clock runs (default: all of --teachers)")
    ap.add_argument("--time-seeds", type=int, default=None, help="training seeds of the equal wall-clock runs (default: --seeds)")
    ap.add_argument("--jobs", type=int, default=1, help="training runs in parallel, one thread each")
    ap.add_argument("--scd-criterion", action="store_true",
                    help="toy: only sCD with its shipped recipe as it is (its own max_steps) over the teachers and seeds, "
                         "for issue 21's criterion; writes consistency_family_scd.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    toy = args.data == "toy"
    steps = args.steps or (200 if args.quick else 2000 if toy else 400)
    n_teachers = args.teachers or (1 if args.quick or not toy else 3)
    n_seeds = args.seeds or (1 if args.quick or not toy else 3)
    time_seeds = args.time_seeds or n_seeds
    runs = ROOT / "runs" / "consistency_family" / ("quick" if args.quick else args.data)
    teachers = ([toy_teacher(k, args.quick) for k in range(n_teachers)] if toy
                else [ROOT / "assets" / "edm_digits"])
    n = 2000 if toy else 1000
    refs = {t: teacher_reference(t, n) for t in teachers} if toy else {}
    costs = step_costs(args.data, teachers[0], repeats=3 if args.quick else 10)
    budgets = [("equal steps", {m: steps for m in METHODS}, teachers, n_seeds)]
    if args.scd_criterion:
        budgets = [("recipe steps", {"sCD": None}, teachers, n_seeds)]
    elif not args.no_equal_time:
        budgets.append(("equal time", {m: max(1, round(steps * costs["CD"] / costs[m])) for m in METHODS},
                        teachers[:args.time_teachers or len(teachers)], time_seeds))
    jobs = []
    for budget, method_steps, pool, seeds in budgets:
        for name, (_, _, needs_teacher, _) in METHODS.items():
            if name not in method_steps:
                continue
            for teacher in (pool if needs_teacher else [None]):
                for seed in range(seeds):
                    ref = refs[teacher]["ref"] if teacher in refs else None
                    jobs.append((budget, (name, args.data, teacher, seed, method_steps[name], runs, n,
                                          {"equal steps": "steps", "equal time": "time"}.get(budget, "recipe"), ref)))
    rows = []
    with ProcessPoolExecutor(max_workers=args.jobs) as ex:
        futures = [(budget, ex.submit(run_method, *job)) for budget, job in jobs]
        for budget, future in futures:
            row = {"budget": budget, **future.result()}
            rows.append(row)
            print(row, flush=True)
    extra: dict = {}
    if toy:
        scd = [r for r in rows if r["method"] == "sCD" and r["budget"] == budgets[0][0]]
        extra["scd_criterion"] = [
            {"teacher": t.name, "teacher_heun19_sw_to_heun35": refs[t]["heun19"],
             "fresh_data_sw_to_heun35": refs[t]["heun35_fresh_data"],
             "scd_1step_sw_to_heun35": [r["sw_teacher35_1"] for r in scd if r["teacher"] == t.name],
             "holds": all(r["sw_teacher35_1"] <= refs[t]["heun19"] for r in scd if r["teacher"] == t.name)}
            for t in teachers]
        for c in extra["scd_criterion"]:
            print(f"sCD criterion, teacher {c['teacher']}: 1-step sCD {c['scd_1step_sw_to_heun35']} vs the teacher's "
                  f"19-NFE Heun {c['teacher_heun19_sw_to_heun35']:.4f} (sliced W2 to its 35-NFE samples): "
                  f"{'holds' if c['holds'] else 'FAILS'}", flush=True)
    keys = ["sw_1", "mmd_1", "sw_2", "mmd_2"] if toy else ["fid_1", "recognised_1", "fid_2", "recognised_2"]
    summary = summarise(rows, keys)
    for row in summary:
        row["step_cost"] = costs[row["method"]]
    name = "consistency_family_quick" if args.quick else ("consistency_family" if toy else "consistency_family_digits")
    if args.scd_criterion:
        name += "_scd"
    report(name, f"The consistency family in miniature ({args.data}; {n_teachers} teacher(s) x {n_seeds} seed(s); "
                 f"lower sw/mmd/fid is better)",
           ["budget", "method", "runs", "steps", *keys, "step_cost"], summary,
           {"runs": rows, "step_costs": costs, "steps": steps, "teachers": [str(t) for t in teachers],
            "seeds": n_seeds, "time_seeds": time_seeds, **extra})


if __name__ == "__main__":
    main()
