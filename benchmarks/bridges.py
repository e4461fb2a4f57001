"""Diffusion bridges on the tiny edges -> digits task: DDBM's hybrid sampler and DBIM against CBD and CBT.

The claim of He et al. 2024 (CDBM) in miniature: CBT at 2 NFE at least as good as DDBM's hybrid sampler at
119 NFE, the speedup measured as a ratio of wall-clock times. The models are the tiny recipes
recipes/tiny/{ddbm,cbd,cbt}_edges_digits.yaml (UNet 16 ch, conditions: Canny edges of the bundled digits
at 16x16, 10% held out); CBT fine-tunes the DDBM (--init), CBD distils it (--teacher).

    python benchmarks/bridges.py            # trains runs/{ddbm,cbd,cbt}_edges_digits if missing (3000/1500/1500 steps)
    python benchmarks/bridges.py --quick    # 1000/400/400-step models under runs/bench_quick/, 180 samples

Samples: the 180 held-out conditions, each drawn `reps` times (sample i takes condition i mod 180), seed 0.
Quality: MSE in [-1, 1] against the held-out digit of the condition (sample-index order); FID in the feature
space of fsg's bundled digits classifier against the 1,797 digits; class accuracy of that classifier on the
samples against the held-out digit's class (the edges fix the class, as CA for ImageNet inpainting).
Time: sampling all samples in one process; speedup = time(DDBM hybrid, NFE 119) / time(row).
Writes benchmarks/results/bridges.json (bridges_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, report, sample_timed  # noqa: E402

import fsg.train.run  # noqa: E402
from fsg.data import build_dataset  # noqa: E402
from fsg.data.config import DataConfig  # noqa: E402
from fsg.eval.digits import load_digits_net, prepare_digits  # noqa: E402
from fsg.eval.images import to_uint8  # noqa: E402
from fsg.eval.quality import digits_fid  # noqa: E402
from fsg.io.config import from_dict  # noqa: E402
from fsg.io.images import save_samples_png  # noqa: E402
from fsg.nets.load import LoadedModel, load_model  # noqa: E402
from fsg.sampling.bridges import data_conds  # noqa: E402

RUNS = {  # key: (command, recipe, full steps, quick steps, source of the weights)
    "ddbm": ("train-diffusion", "recipes/tiny/ddbm_edges_digits.yaml", None, 1000, None),
    "cbd": ("distill", "recipes/tiny/cbd_edges_digits.yaml", None, 400, "teacher"),
    "cbt": ("train-consistency", "recipes/tiny/cbt_edges_digits.yaml", None, 400, "init"),
}
ROWS = [  # (method, model, sampler, steps)
    ("DDBM hybrid", "ddbm", "hybrid", 40),     # NFE 3N - 1 = 119 (DDBM's default N = 40)
    ("DDBM hybrid", "ddbm", "hybrid", 7),      # NFE 20
    ("DBIM", "ddbm", "dbim", 5),               # steps = NFE = N + 1
    ("DBIM", "ddbm", "dbim", 10),
    ("DBIM", "ddbm", "dbim", 20),
    ("DBIM 3rd order", "ddbm", "dbim3", 10),
    ("CBD", "cbd", "cdbm", 2),
    ("CBD", "cbd", "cdbm", 4),
    ("CBT", "cbt", "cdbm", 2),
    ("CBT", "cbt", "cdbm", 4),
]


def bridge_grid_writer(meta: dict, n: int, device):
    """Training grids with conditions: fsg.train.grid samples without them, which a bridge cannot. Top half the
    held-out conditions, bottom half their samples."""
    def write(denoiser, path: Path) -> None:
        was_training = denoiser.training
        denoiser.eval()
        conds = data_conds(meta)
        x, _, _ = sample_timed(LoadedModel(denoiser, meta, path), n, n, conds=conds)
        save_samples_png(torch.cat([conds(range(n)), x]), path, nrow=max(1, n // 4))
        denoiser.train(was_training)
    return write


def ensure(key: str, runs: dict[str, Path], quick: bool) -> Path:
    """Train run `key` unless its model exists (CBD and CBT start from the DDBM run)."""
    command, recipe, full, short, source = RUNS[key]
    run_dir = runs[key]
    if not (run_dir / "model.safetensors").is_file():
        start = {source: runs["ddbm"]} if source else {}
        fsg.train.run.train(command, ROOT / recipe, run_dir=run_dir, device="cpu", max_steps=short if quick else full,
                            resume="auto" if (run_dir / "checkpoints").is_dir() else None, progress=False, **start)
    return run_dir


def held_out_targets(meta: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out digits (M, 1, 16, 16) and their classes, in the order of their conditions."""
    cfg = replace(from_dict(DataConfig, meta["data"]), labels=True)
    test = build_dataset(cfg, "test")
    items = [test[i] for i in range(len(test))]
    return torch.stack([it["x"] for it in items]), torch.stack([it["label"] for it in items])


@torch.no_grad()
def class_accuracy(classifier, samples: torch.Tensor, labels: torch.Tensor) -> float:
    return float((classifier(prepare_digits(to_uint8(samples))).argmax(1) == labels).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short training under runs/bench_quick/ and one draw per condition")
    args = parser.parse_args(argv)
    base = ROOT / "runs" / "bench_quick" if args.quick else ROOT / "runs"
    runs = {key: base / f"{key}_edges_digits" for key in RUNS}
    fsg.train.run.grid_writer = bridge_grid_writer
    models = {key: load_model(ensure(key, runs, args.quick)) for key in RUNS}

    meta = models["ddbm"].meta
    targets, classes = held_out_targets(meta)
    reps = 1 if args.quick else 3
    n = reps * len(targets)
    order = torch.arange(n) % len(targets)                       # sample i <- condition i mod M
    conds = data_conds(meta)
    classifier = load_digits_net()[0].eval()
    rows, base_time = [], None
    for method, key, sampler, steps in ROWS:
        x, nfe, seconds = sample_timed(models[key], n, n, sampler=sampler, steps=steps, conds=conds)
        base_time = base_time or seconds
        rows.append({"method": method, "sampler": sampler, "NFE": nfe,
                     "MSE": float((x - targets[order]).square().flatten(1).mean(1).mean()),
                     "FID": digits_fid(x), "accuracy": class_accuracy(classifier, x, classes[order]),
                     "seconds": seconds, "speedup": base_time / seconds})
    hybrid = rows[0]
    cbt2 = next(r for r in rows if r["method"] == "CBT" and r["NFE"] == 2)
    claim = {"cbt_2nfe_fid": cbt2["FID"], "hybrid_119nfe_fid": hybrid["FID"],
             "holds": cbt2["FID"] <= hybrid["FID"], "speedup": cbt2["speedup"]}
    steps = {key: (RUNS[key][3] if args.quick else "recipe") for key in RUNS}
    report("bridges_quick" if args.quick else "bridges",
           f"edges -> digits 16x16, {n} samples of {len(targets)} held-out conditions (training steps: {steps})",
           ["method", "sampler", "NFE", "MSE", "FID", "accuracy", "seconds", "speedup"], rows,
           {"claim": claim, "training_steps": steps, "samples": n})
    verdict = "holds" if claim["holds"] else "does not hold"
    print(f"CBT at 2 NFE: FID {claim['cbt_2nfe_fid']:.3g} vs DDBM hybrid at 119 NFE: FID {claim['hybrid_119nfe_fid']:.3g} "
          f"(claim {verdict}), {claim['speedup']:.1f}x faster")


if __name__ == "__main__":
    main()
