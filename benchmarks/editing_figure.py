"""The README's editing figure: zero-shot inpainting, super-resolution, stroke guidance and denoising of
digits by the tiny CD model, plus an interpolation path, each panel made by one `fsg` command.

    python benchmarks/editing_figure.py --model runs/cd_digits            # prints every command it runs
    python benchmarks/editing_figure.py --quick                           # fewer digits, fewer steps

It writes the inputs (16x16 digits, a mask, 8x8 low-resolution digits, stroke paintings) to
assets/editing/inputs/, each panel to assets/editing/<task>/comparison.png (rows: input, observation,
result) and assets/editing/interpolate.png, and a table of the kept-part error and the error to the clean
digit (RMSE in 8-bit levels, of the written PNGs) to benchmarks/results/editing_figure.json.
A missing model is trained first with the tiny recipes (teacher, then consistency distillation).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 16
FACTOR = 2                    # super-resolution from 8x8 (the digits' native size) to 16x16
DENOISE_SIGMA = 0.5           # noise std of the denoising panel, in [-1, 1] pixel units


def fsg(*args) -> tuple[float, int | None]:
    """Run `fsg ARGS` (printed first, with its output); the seconds it took and the NFE it reported."""
    print("$ fsg " + " ".join(map(str, args)), flush=True)
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "fsg", *map(str, args)], check=True, cwd=ROOT,
                          capture_output=True, text=True)
    print(done.stderr + done.stdout, end="", flush=True)
    nfe = re.search(r"NFE (\d+)", done.stdout)
    return time.time() - start, int(nfe[1]) if nfe else None


def ensure_model(model: Path, quick: bool) -> None:
    """Train the tiny digits teacher and distil it when `model` has no model file yet."""
    if (model / "model.safetensors").is_file() or model.suffix == ".safetensors":
        return
    teacher = model.parent / "edm_digits"
    if not (teacher / "model.safetensors").is_file():
        fsg("train-diffusion", "--recipe", "recipes/tiny/edm_digits.yaml", "--run-dir", teacher, "--no-progress",
            *(["--max-steps", "300"] if quick else []))
    fsg("distill", "--teacher", teacher, "--recipe", "recipes/tiny/cd_digits.yaml", "--run-dir", model,
        "--no-progress", *(["--max-steps", "200"] if quick else []))


def save_gray(x: torch.Tensor, path: Path) -> None:
    """(1, H, W) in [-1, 1] -> 8-bit gray PNG."""
    pixels = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


def read_gray(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.array(Image.open(path).convert("L"))).double()      # (H, W) levels 0..255


def clean_digits(n: int) -> torch.Tensor:
    """The last digit of each class 0..n-1 in scikit-learn's set, at 16x16 as the tiny recipes train on."""
    from fsg.data.builtin import digits
    from fsg.data.images import resize_square

    images, labels = digits()
    picks = [int((labels == k).nonzero()[-1]) for k in range(n)]
    return torch.stack([resize_square(images[i], RESOLUTION) for i in picks])      # (n, 1, 16, 16)


def stroke_paintings() -> list[Image.Image]:
    """Rough white-on-black strokes of a 0, 1, 4 and 7, as a user would paint them."""
    shapes = [
        lambda d: d.ellipse((4, 2, 11, 13), outline=255, width=2),
        lambda d: d.line((8, 2, 8, 13), fill=255, width=2),
        lambda d: (d.line((10, 2, 4, 10), fill=255, width=2), d.line((4, 10, 12, 10), fill=255, width=2),
                   d.line((10, 6, 10, 14), fill=255, width=2)),
        lambda d: (d.line((3, 3, 12, 3), fill=255, width=2), d.line((12, 3, 6, 14), fill=255, width=2)),
    ]
    out = []
    for draw in shapes:
        img = Image.new("L", (RESOLUTION, RESOLUTION), 0)
        draw(ImageDraw.Draw(img))
        out.append(img)
    return out


def make_inputs(folder: Path, n: int) -> torch.Tensor:
    """Write the inputs of every panel under `folder`; returns the clean digits (n, 1, 16, 16)."""
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("digits", "low_res", "strokes"):
        (folder / sub).mkdir(parents=True)
    x = clean_digits(n)
    for i, digit in enumerate(x):
        save_gray(digit, folder / "digits" / f"{i}.png")
        save_gray(F.avg_pool2d(digit[None], FACTOR)[0], folder / "low_res" / f"{i}.png")   # (1, 8, 8)
    mask = np.zeros((RESOLUTION, RESOLUTION), np.uint8)
    mask[RESOLUTION // 2:] = 255                                      # regenerate the lower half
    Image.fromarray(mask).save(folder / "mask.png")
    for i, img in enumerate(stroke_paintings()):
        img.save(folder / "strokes" / f"{i}.png")
    return x


def rmse(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> float:
    d = (a - b) ** 2
    return float((d[where] if where is not None else d).mean().sqrt())


def measure(task: str, folder: Path, out: Path, truth: torch.Tensor) -> dict:
    """Errors of the written results (8-bit levels): the kept part against the input's, the whole against the
    clean digit, and the degraded observation against the clean digit for comparison."""
    truth = ((truth[:, 0].clamp(-1, 1) + 1) * 127.5).round().double()              # (n, 16, 16) levels
    result = torch.stack([read_gray(out / f"{i}.png") for i in range(len(truth))])
    if task == "inpaint":
        hole = read_gray(folder / "mask.png") > 127
        kept = (result[:, ~hole] - truth[:, ~hole]).abs().max()
        observed = torch.where(hole, 127.5, truth)
        return {"kept_max_err": float(kept), "rmse_hole": rmse(result, truth, hole.expand_as(truth)),
                "rmse_hole_gray_fill": rmse(observed, truth, hole.expand_as(truth))}
    if task == "superres":
        low = torch.stack([read_gray(folder / "low_res" / f"{i}.png") for i in range(len(truth))])
        means = F.avg_pool2d(result[:, None], FACTOR)[:, 0]
        upsampled = low.repeat_interleave(FACTOR, -2).repeat_interleave(FACTOR, -1)
        return {"kept_max_err": float((means - low).abs().max()), "rmse": rmse(result, truth),
                "rmse_nearest_upsampling": rmse(upsampled, truth)}
    # denoise: the noisy inputs are re-drawn from the per-input streams (input i's noise is the first draw of
    # the stream (seed 0, i)), clipped to [-1, 1] as a saved picture would be
    from fsg.sampling.noise import SampleNoise

    clean = torch.stack([read_gray(folder / "digits" / f"{i}.png") for i in range(len(truth))]) / 127.5 - 1
    z = SampleNoise(0, range(len(truth))).randn((len(truth), 1, RESOLUTION, RESOLUTION), torch.float64)[:, 0]
    noisy = ((clean + DENOISE_SIGMA * z).clamp(-1, 1) + 1) * 127.5
    return {"rmse": rmse(result, truth), "rmse_noisy_input": rmse(noisy, truth)}


def commands(model: Path, out: Path, quick: bool) -> dict[str, list]:
    """The one `fsg` command of each panel; an editing panel is <out>/<task>/comparison.png."""
    inputs, steps = out / "inputs", (["--steps", "2"] if quick else [])   # default: every grid point but the last
    model_opts = ["--model", model, "--device", "cpu"]
    common = [*model_opts, "--seed", "0"]
    return {
        "inpaint": ["edit", "inpaint", "--input", inputs / "digits", "--mask", inputs / "mask.png", *steps, *common],
        "superres": ["edit", "superres", "--input", inputs / "low_res", "--factor", FACTOR, *steps, *common],
        "stroke": ["edit", "stroke", "--input", inputs / "strokes", "--t-start", "1.2", "--steps", "2", *common],
        "denoise": ["edit", "denoise", "--input", inputs / "digits", "--sigma", DENOISE_SIGMA, "--add-noise",
                    *common],
        "interpolate": ["interpolate", "-n", "10", "--seeds", "0,1", *model_opts],
    }


def print_table(rows: dict) -> None:
    baselines = {"inpaint": "gray fill", "superres": "nearest upsampling", "denoise": "the noisy input"}
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"\n{'task':<12}{'NFE':>5}{'kept max err':>14}{'RMSE result':>13}{'RMSE baseline':>15}   (8-bit levels)")
    for task, r in rows.items():
        result = r.get("rmse_hole", r.get("rmse"))
        base = r.get("rmse_hole_gray_fill", r.get("rmse_nearest_upsampling", r.get("rmse_noisy_input")))
        print(f"{task:<12}{r['nfe']:>5}{fmt(r.get('kept_max_err')):>14}{fmt(result):>13}{fmt(base):>15}   "
              f"{baselines.get(task, '')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/cd_digits"), help="CD model (trained if missing)")
    parser.add_argument("--out", type=Path, default=Path("assets/editing"))
    parser.add_argument("--quick", action="store_true", help="four digits, two steps (short training if needed)")
    args = parser.parse_args()
    ensure_model(args.model, args.quick)
    n = 4 if args.quick else 8
    truth = make_inputs(args.out / "inputs", n)
    rows = {}
    for task, cmd in commands(args.model, args.out, args.quick).items():
        target = args.out / ("interpolate.png" if task == "interpolate" else task)
        seconds, nfe = fsg(*cmd, "--out", target)
        rows[task] = {"command": "fsg " + " ".join(map(str, [*cmd, "--out", target])), "nfe": nfe,
                      "seconds": round(seconds, 2)}
        if task in ("inpaint", "superres", "denoise"):
            rows[task].update(measure(task, args.out / "inputs", target, truth))
    print_table(rows)
    results = ROOT / "benchmarks" / "results" / "editing_figure.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"model": str(args.model), "digits": n, "tasks": rows}, indent=2))
    print(f"wrote {results}; panels {args.out}/<task>/comparison.png and {args.out}/interpolate.png")


if __name__ == "__main__":
    main()
