"""`fsg demo`: the whole few-step pipeline on tiny data, in a few minutes on a laptop CPU.

1. the EDM teacher of the two-moons toy (bundled in assets/, or trained with --train-teacher),
2. consistency distillation of it (recipes/tiny/cd_toy.yaml),
3. samples of the teacher (Heun, 35 NFE; Euler at 1, 2, 4 NFE) and of the student (1, 2, 4 steps),
4. quality (sliced Wasserstein to fresh data) and time per sample for each, as a table and JSON,
5. a comparison picture; plus the bundled digits teacher and 1-step model when present.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from fsg.app.train import train
from fsg.data import sample_toy
from fsg.eval.quality import digits_fid, toy_distances
from fsg.errors import UserError
from fsg.io.checkpoint import atomic_write, check_output_dir
from fsg.io.images import grid_image, save_png, scatter_image
from fsg.models.load import load_model
from fsg.resources import shipped
from fsg.sampling.generate import iter_samples

ASSETS = shipped("assets")
RECIPES = shipped("recipes", "tiny")


def _sample(model, n: int, device, **kw) -> tuple[torch.Tensor, int, float]:
    start = time.perf_counter()
    stream = iter_samples(model, n, seed=0, batch_size=n, device=device, **kw)
    x = torch.cat([b for _, b, _ in stream])
    return x, stream.nfe, time.perf_counter() - start


def _panel(img: Image.Image, title: str, size: int = 256) -> Image.Image:
    img = img.convert("RGB").resize((size, size), Image.NEAREST)
    out = Image.new("RGB", (size, size + 22), "white")
    out.paste(img, (0, 22))
    ImageDraw.Draw(out).text((6, 5), title, fill=(0, 0, 0))
    return out


def _row(panels: list[Image.Image]) -> Image.Image:
    w, h = sum(p.width for p in panels) + 4 * (len(panels) - 1), max(p.height for p in panels)
    out = Image.new("RGB", (w, h), "white")
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 4
    return out


def _teacher(run_dir: Path, device, train_teacher: bool, console: Console) -> Path:
    bundled = ASSETS / "edm_toy" / "model.safetensors"
    if bundled.is_file() and not train_teacher:
        console.print(f"[bold]1/4[/] teacher: bundled EDM toy teacher (assets/{bundled.parent.name})")
        return bundled
    own = run_dir / "teacher"
    if (own / "model.safetensors").is_file():
        console.print(f"[bold]1/4[/] teacher: reusing {own}")
        return own
    console.print("[bold]1/4[/] teacher: training the EDM toy teacher (recipes/tiny/edm_toy.yaml)")
    train("train-diffusion", RECIPES / "edm_toy.yaml", run_dir=own, device=str(device), resume="auto")
    return own


def run_demo(run_dir: Path, device: torch.device, n: int = 5000, train_teacher: bool = False,
             console: Console | None = None) -> dict:
    """Run the pipeline; returns the results dict also written to run_dir/demo.json."""
    console = console or Console(stderr=True)
    if n < 2:
        raise UserError(f"-n: the toy distances need at least 2 samples, got {n}")
    check_output_dir(run_dir, "--run-dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    teacher_path = _teacher(run_dir, device, train_teacher, console)
    student = run_dir / "cd"
    if (student / "model.safetensors").is_file():
        console.print(f"[bold]2/4[/] student: reusing {student}")
    else:
        console.print("[bold]2/4[/] distilling the teacher into a consistency model (recipes/tiny/cd_toy.yaml)")
        train("distill", RECIPES / "cd_toy.yaml", run_dir=student, device=str(device), teacher=teacher_path,
              resume="auto")                # a demo killed half-way continues where it stopped
    console.print(f"[bold]3/4[/] sampling and evaluating ({n} samples each against fresh data)")
    teacher, cd = load_model(teacher_path, device), load_model(student, device)
    settings = [("EDM teacher, Heun", teacher, dict(sampler="heun", steps=18)),
                *[("EDM teacher, Euler", teacher, dict(sampler="euler", steps=k)) for k in (1, 2, 4)],
                *[("consistency model (CD)", cd, dict(steps=k)) for k in (1, 2, 4)]]
    rows, shown = [], {}
    for name, model, kw in settings:
        x, nfe, seconds = _sample(model, n, device, **kw)
        rows.append({"model": name, "data": "toy:moons", "nfe": nfe, **toy_distances(x), "ms_per_sample": 1000 * seconds / n})
        shown[(name, nfe)] = x
    digits = _digits_rows(device, console)
    rows += [r for r, _ in digits]
    base = next(r for r in rows if r["nfe"] == 35 and r["data"] == "toy:moons")
    for r in rows:
        ref = next(b for b in rows if b["nfe"] == 35 and b["data"] == r["data"])
        r["speedup"] = ref["ms_per_sample"] / r["ms_per_sample"]

    console.print("[bold]4/4[/] results")
    table = Table(title=f"fsg demo: quality and time per NFE ({n} toy samples, {device.type})")
    for col in ("data", "model", "NFE", "quality", "ms/sample", "speed-up vs 35 NFE"):
        table.add_column(col, justify="right" if col not in ("data", "model") else "left")
    for r in rows:
        quality = f"SW {r['sw']:.3f}" if "sw" in r else f"digits-FID {r['fid']:.2f}"
        table.add_row(r["data"], r["model"], str(r["nfe"]), quality, f"{r['ms_per_sample']:.3f}", f"{r['speedup']:.1f}x")
    Console().print(table)

    fresh = _fresh_toy(n)
    panels = [_panel(scatter_image(fresh), "data"),
              _panel(scatter_image(shown[("EDM teacher, Heun", 35)]), "teacher, 35 NFE"),
              _panel(scatter_image(shown[("EDM teacher, Euler", 1)]), "teacher Euler, 1 NFE"),
              _panel(scatter_image(shown[("consistency model (CD)", 1)]), "CD, 1 NFE"),
              _panel(scatter_image(shown[("consistency model (CD)", 2)]), "CD, 2 NFE")]
    picture = _row(panels)
    if digits:
        digit_panels = [_panel(img, title) for _, (img, title) in digits]
        both = Image.new("RGB", (max(picture.width, _row(digit_panels).width), picture.height + digit_panels[0].height + 6), "white")
        both.paste(picture, (0, 0))
        both.paste(_row(digit_panels), (0, picture.height + 6))
        picture = both
    save_png(picture, run_dir / "demo.png")
    result = {"rows": rows, "teacher": str(teacher_path), "student": str(student), "device": str(device),
              "baseline_ms": base["ms_per_sample"]}
    atomic_write(run_dir / "demo.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    console.print(f"wrote {run_dir / 'demo.png'} and {run_dir / 'demo.json'}")
    return result


def _fresh_toy(n: int) -> torch.Tensor:
    return sample_toy("moons", n, torch.Generator().manual_seed(1))


def _digits_rows(device, console: Console, n: int = 512):
    """The bundled digits teacher (35 NFE) against the bundled 1-step model, when both are present."""
    teacher, student = ASSETS / "edm_digits" / "model.safetensors", ASSETS / "cd_digits" / "model.safetensors"
    if not (teacher.is_file() and student.is_file()):
        return []
    out = []
    for name, path, kw in [("EDM teacher, Heun", teacher, dict(sampler="heun", steps=18)),
                           ("consistency model (CD)", student, dict(steps=1)),
                           ("consistency model (CD)", student, dict(steps=2))]:
        x, nfe, seconds = _sample(load_model(path, device), n, device, **kw)
        row = {"model": name, "data": "digits 16x16", "nfe": nfe, "fid": digits_fid(x), "ms_per_sample": 1000 * seconds / n}
        out.append((row, (grid_image(x[:36], nrow=6), f"digits: {name.split(',')[0].split(' (')[0]}, {nfe} NFE")))
    return out
