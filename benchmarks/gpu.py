"""The CUDA path at the headline size, in one process tree on one GPU: training throughput of the CIFAR-10
DDPM++ teacher (recipes/edm_cifar10.yaml, 55.7M parameters) in fp32, bf16 autocast, bf16 + channels_last,
bf16 + torch.compile, and bf16 under `torchrun --nproc_per_node 1` (nccl, DDP); the cost of a
consistency-distillation step against a teacher step; and sampling throughput of the distilled model
(1 and 2 steps) against the teacher's Heun sampler (35 NFE), as ratios.

The runs are the real commands (`fsg train-diffusion`, `fsg distill`) on a CIFAR-10 folder of random pixels
(written here: the speed does not depend on the pixels); images/s is read from the runs' metrics.jsonl
(`it_s` x batch), the first logging window (warm-up, compilation) left out.

    python benchmarks/gpu.py [--batch 256] [--steps 60] [--skip-compile]
    python benchmarks/gpu.py --recipe recipes/ddm_cifar10.yaml --training-only --set method.reconstruction=l1

Writes benchmarks/results/gpu.json (gpu_RECIPE.json for another recipe). Needs a CUDA GPU. (Not named
cuda.py: run as a script, that name would shadow the `cuda` package torch imports.)
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, report  # noqa: E402

TEACHER = "recipes/edm_cifar10.yaml"
CD = "recipes/cd_cifar10_lpips.yaml"


def fake_cifar(root: Path, seed: int = 0) -> Path:
    """CIFAR-10's python layout (data_batch_1..5, test_batch) filled with random pixels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (10000, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, 10000).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return root


def steady_images_per_s(run_dir: Path, batch: int) -> float:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [line["it_s"] for line in lines[1:-1]] or [lines[-1]["it_s"]]   # the last window includes saving
    return batch * statistics.median(rates)


def run_fsg(args: list[str], torchrun: bool = False) -> float:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"] if torchrun \
        else [sys.executable]
    start = time.perf_counter()
    r = subprocess.run([*launcher, "-m", "fsg", *args], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if r.returncode != 0:
        raise SystemExit(f"fsg {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - start


def training_rows(recipe: str, data: Path, work: Path, batch: int, steps: int, compile_too: bool,
                  overrides: list[str]) -> tuple[list[dict], Path]:
    common = [*(x for o in overrides for x in ("--set", o)), "--set", f"data.path={data}", "--set", f"train.batch_size={batch}", "--set", f"train.max_steps={steps}",
              "--set", f"train.log_every={max(1, steps // 6)}", "--set", "train.ckpt_every=100000",
              "--set", "train.warmup_steps=0", "--no-progress", "--device", "cuda"]
    configs = [("fp32", {"bf16": "false", "channels_last": "false"}, False),
               ("bf16", {"bf16": "true", "channels_last": "false"}, False),
               ("bf16 + channels_last", {"bf16": "true", "channels_last": "true"}, False),
               ("bf16, torchrun 1 GPU (nccl DDP)", {"bf16": "true", "channels_last": "false"}, True)]
    if compile_too:
        configs.append(("bf16 + compile", {"bf16": "true", "channels_last": "false", "compile": "true"}, False))
    rows, teacher = [], None
    for name, train, torchrun in configs:
        run_dir = work / name.split(",")[0].replace(" + ", "_").replace(" ", "_") / ("ddp" if torchrun else "one")
        sets = [x for k, v in train.items() for x in ("--set", f"train.{k}={v}")]
        wall = run_fsg(["train-diffusion", "--recipe", str(ROOT / recipe), "--run-dir", str(run_dir), *common, *sets],
                       torchrun=torchrun)
        rows.append({"run": f"{Path(recipe).stem} train, {name}", "batch": batch, "images_per_s": steady_images_per_s(run_dir, batch),
                     "wall_s": wall})
        teacher = teacher or run_dir
        print(rows[-1], flush=True)
    fp32 = rows[0]["images_per_s"]
    for row in rows:
        row["ratio"] = row["images_per_s"] / fp32
    return rows, teacher


def distill_row(data: Path, work: Path, teacher: Path, batch: int, steps: int, teacher_rate: float) -> tuple[dict, Path]:
    run_dir = work / "cd"
    wall = run_fsg(["distill", "--teacher", str(teacher), "--recipe", str(ROOT / CD), "--run-dir", str(run_dir),
                    "--set", "method.distance=l2", "--set", f"data.path={data}", "--set", f"train.batch_size={batch}",
                    "--set", f"train.max_steps={steps}", "--set", f"train.log_every={max(1, steps // 6)}",
                    "--set", "train.ckpt_every=100000", "--set", "train.warmup_steps=0", "--set", "train.channels_last=false",
                    "--no-progress", "--device", "cuda"])
    rate = steady_images_per_s(run_dir, batch)
    # a CD step: student forward + backward, two teacher forwards (Heun), one target forward ~ 2x a teacher step
    return {"run": "CD step (l2, Heun teacher), bf16", "batch": batch, "images_per_s": rate,
            "wall_s": wall, "ratio": rate / teacher_rate}, run_dir


@torch.no_grad()
def sampling_rows(teacher: Path, student: Path, n: int) -> list[dict]:
    from fsg.models.load import load_model
    from fsg.sampling.generate import iter_samples

    device = torch.device("cuda")
    models = {"teacher": load_model(teacher, device), "student": load_model(student, device)}

    def seconds(key: str, **kw) -> float:
        def go():
            for _ in iter_samples(models[key], n, batch_size=n, device=device, **kw):
                pass
            torch.cuda.synchronize()
        go()                                   # warm-up (cuDNN autotuning)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            go()
            best = min(best, time.perf_counter() - start)
        return best

    base = seconds("teacher", sampler="heun", steps=18)
    rows = [{"run": "sample: teacher Heun, 35 NFE", "batch": n, "images_per_s": n / base, "ratio": 1.0, "nfe_ratio": 1.0}]
    for k in (1, 2):
        sec = seconds("student", sampler="consistency", steps=k)
        rows.append({"run": f"sample: CD, {k} step{'s' if k > 1 else ''}", "batch": n, "images_per_s": n / sec,
                     "ratio": base / sec, "nfe_ratio": 35 / k})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per training run")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile run")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--recipe", default=TEACHER, help=f"a CIFAR-10 training recipe (default {TEACHER})")
    parser.add_argument("--set", action="append", default=[], help="a recipe override for the training runs (repeatable)")
    parser.add_argument("--training-only", action="store_true", help="leave out the CD step and sampling")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU")
    work = args.work or Path(tempfile.mkdtemp(prefix="fsg_cuda_"))
    data = fake_cifar(work / "cifar10")
    rows, teacher = training_rows(args.recipe, data, work, args.batch, args.steps, not args.skip_compile, args.set)
    if not args.training_only:
        bf16 = next(r for r in rows if r["run"].endswith("train, bf16"))["images_per_s"]
        cd, student = distill_row(data, work, teacher, args.batch, args.steps, bf16)
        print(cd, flush=True)
        rows.append(cd)
        rows += sampling_rows(teacher, student, 512)
    props = torch.cuda.get_device_properties(0)
    name = "gpu" if args.recipe == TEACHER and not args.training_only else f"gpu_{Path(args.recipe).stem}"
    report(name, f"CUDA path at CIFAR-10 size on {props.name}",
           ["run", "batch", "images_per_s", "ratio", "nfe_ratio", "wall_s"], rows,
           {"gpu": props.name, "torch": torch.__version__, "steps_per_run": args.steps})


if __name__ == "__main__":
    main()
