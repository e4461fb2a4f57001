"""CPU threads on a busy machine (issue #18): fsg's default thread count (fsg.runtime) against fixed ones.

With `--busy` background processes spinning (pure Python, started here), on the 2-core CI machine:

1. training speed of recipes/tiny/edm_toy.yaml (steps/s from metrics.jsonl's step and wall_time, the first line
   left out as warm-up when there are three or more) at the default, `--threads 1` and `--threads 2`;
   target: default / best >= 0.7;
2. `fsg demo` wall time at the default; target: busy <= 2 x idle.

The same figures are taken idle first (no background process of ours). The runs get no OMP_NUM_THREADS or
FSG_THREADS, so the default is what is measured. The machine may be shared with other work: every figure carries the
1-minute load average when it was taken, and the default's choice (fsg.runtime.default_threads at that moment).
Results: benchmarks/results/threads.json, and a markdown table on stdout.

    python benchmarks/threads.py [--seconds 25] [--busy 2] [--warmup 75] [--skip-demo]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RECIPE = ROOT / "recipes" / "tiny" / "edm_toy.yaml"
SPIN = "while True: pass"
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "FSG_THREADS")


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def default_choice() -> int:
    from fsg.runtime import default_threads

    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    return default_threads(environ=env)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_rate(threads: int | None, seconds: float) -> dict:
    """Steps/s of the tiny EDM recipe trained for `seconds` (--time-budget) at `threads` (None: the default)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "fsg", "train-diffusion", "--recipe", str(RECIPE), "--run-dir", str(run),
               "--device", "cpu", "--no-progress", "--time-budget", str(seconds), "--set", "train.log_every=10"]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        row = {"threads": threads if threads is not None else f"default ({default_choice()})", "load1": load1()}
        done = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
        if done.returncode not in (0, 3):
            raise SystemExit(f"training failed ({done.returncode}):\n{done.stderr[-3000:]}")
        lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    first = lines[1] if len(lines) >= 3 else {"step": 0, "wall_time": 0.0}     # a slow run: warm-up included
    steps, wall = lines[-1]["step"] - first["step"], lines[-1]["wall_time"] - first["wall_time"]
    return {**row, "it_s": round(steps / wall, 2), "steps": lines[-1]["step"]}


def demo_time() -> dict:
    """Wall seconds of `fsg demo` at the default thread count."""
    with tempfile.TemporaryDirectory() as tmp:
        row = {"threads": f"default ({default_choice()})", "load1": load1()}
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "fsg", "demo", "--run-dir", str(Path(tmp) / "demo"),
                               "--device", "cpu"], capture_output=True, text=True, env=child_env())
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"fsg demo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {**row, "seconds": round(seconds, 1)}


def measure(phase: str, seconds: float, demo: bool) -> list[dict]:
    rows = []
    for threads in (None, 1, 2):
        rows.append({"phase": phase, "what": "train it/s", **train_rate(threads, seconds)})
        print(rows[-1], flush=True)
    if demo:
        rows.append({"phase": phase, "what": "demo s", **demo_time()})
        print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict], summary: dict) -> str:
    out = ["| machine | run | threads | result | load average (1 min) |", "|---|---|---|---|---|"]
    for r in rows:
        value = f"{r['it_s']} it/s" if "it_s" in r else f"{r['seconds']} s"
        out.append(f"| {r['phase']} | {r['what'].split()[0]} | {r['threads']} | {value} | {r['load1']} |")
    out.append("")
    out.append(f"Busy: default / best thread count = {summary['train_default_over_best_busy']} (target >= 0.7)"
               + (f"; demo busy / idle = {summary['demo_busy_over_idle']} (target <= 2)"
                  if "demo_busy_over_idle" in summary else ""))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=25.0, help="training time of each thread setting")
    ap.add_argument("--busy", type=int, default=2, help="background processes that spin")
    ap.add_argument("--warmup", type=float, default=75.0,
                    help="seconds the spinners run before the busy figures (the default reads the 1-minute load)")
    ap.add_argument("--skip-demo", action="store_true", help="leave out `fsg demo` (about 2 minutes idle)")
    args = ap.parse_args()

    rows = measure("idle", args.seconds, not args.skip_demo)
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    try:
        time.sleep(args.warmup)
        rows += measure(f"busy ({args.busy} spinning)", args.seconds, not args.skip_demo)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    train = {(r["phase"].split()[0], str(r["threads"]).split()[0]): r["it_s"] for r in rows if "it_s" in r}
    busy = [v for (phase, _), v in train.items() if phase == "busy"]
    summary = {"train_default_over_best_busy": round(train[("busy", "default")] / max(busy), 2),
               "train_default_over_best_idle": round(train[("idle", "default")] /
                                                     max(v for (p, _), v in train.items() if p == "idle"), 2)}
    demos = {r["phase"].split()[0]: r["seconds"] for r in rows if "seconds" in r}
    if demos:
        summary["demo_busy_over_idle"] = round(demos["busy"] / demos["idle"], 2)
    import torch

    result = {"machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}, {date.today()}", "seconds": args.seconds,
              "busy": args.busy, "rows": rows, **summary,
              "targets": {"train_default_over_best_busy": ">= 0.7", "demo_busy_over_idle": "<= 2"}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "threads.json").write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows, summary))


if __name__ == "__main__":
    main()
