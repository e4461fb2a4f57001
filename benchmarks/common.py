"""Shared helpers of the benchmark scripts: make sure a run exists, time a sampler, print and save a table."""

from __future__ import annotations

import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def ensure_run(command: str, recipe: str, run_dir: Path, teacher: Path | None = None, max_steps: int | None = None) -> Path:
    """Train `recipe` into `run_dir` unless its model already exists; returns the run folder."""
    from fsg.app.train import train

    if not (run_dir / "model.safetensors").is_file():
        resume = "auto" if (run_dir / "checkpoints").is_dir() else None
        train(command, ROOT / recipe, run_dir=run_dir, device="cpu", teacher=teacher, max_steps=max_steps,
              resume=resume, progress=False)
    return run_dir


def sample_timed(model, n: int, batch_size: int, seed: int = 0, **kw) -> tuple[torch.Tensor, int, float]:
    """All n samples, the NFE and the wall time of sampling them (one process); `model` loaded or a path."""
    from fsg.models.load import LoadedModel, load_model
    from fsg.sampling.generate import iter_samples

    model = model if isinstance(model, LoadedModel) else load_model(model)
    start = time.perf_counter()
    stream = iter_samples(model, n, seed=seed, batch_size=batch_size, device="cpu", **kw)
    x = torch.cat([b for _, b, _ in stream])
    return x, stream.nfe, time.perf_counter() - start


def mean_std(rows: list[dict], keys: list[str]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one run) of each key over rows: {k: mean, k_std: sd}."""
    out = {}
    for k in keys:
        values = [r[k] for r in rows]
        out[k] = statistics.mean(values)
        out[f"{k}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {date.today()}"


def report(name: str, title: str, columns: list[str], rows: list[dict], extra: dict | None = None) -> None:
    table = Table(title=f"{title}\n[dim]{machine()}[/]")
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns])
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), "rows": rows, **(extra or {})}, indent=2))
