"""A battery of mistaken and malicious inputs across every command: each must end as expected (exit 2 with one
`fsg: error:` line for a user error, or work), never with a traceback, and leave every file the user had unchanged.

Each case runs `python -m fsg ...` as a subprocess, with a timeout, in its own copy of a workspace that holds what a
careless or hostile user brings: an existing run, the output of `fsg convert`, recipes that are alias bombs or random
bytes, pickles whose unpickling would run `touch pwned`, NaN samples and latents, 16-bit and float images, a file where
a folder belongs. The workspace is hashed before and after; a changed or deleted file fails the case, and so does a
new one after a refusal (a run.lock in a folder the refused run claimed excepted).

    python benchmarks/hostile_inputs.py                 # all cases, 2 at a time; prints each failure and held/total
    python benchmarks/hostile_inputs.py -k edit -j 1    # the cases whose name contains 'edit'

Writes benchmarks/results/hostile_inputs.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
T = ["--max-steps", "2", "--no-progress", "--device", "cpu"]     # training options of every training case
TINY = ["--set", "train.batch_size=32", "--set", "data.toy_size=256", "--set", "sample.grid=16"]


@dataclass(frozen=True)
class Case:
    name: str
    args: tuple[str, ...]
    code: int = 2                  # the expected exit code: 2 a user error, 0 it works


def case(name: str, *args: str, code: int = 2) -> Case:
    return Case(name, tuple(args), code)


CASES = [
    # ------------------------------------------------------------------ recipes
    case("recipe show: alias bomb", "recipe", "show", "bomb.yaml"),
    case("recipe show: random bytes", "recipe", "show", "noise.yaml"),
    case("recipe show: a folder", "recipe", "show", "imgs"),
    case("recipe show: lr nan", "recipe", "show", "tiny/edm_toy", "--set", "train.lr=nan"),
    case("recipe show: lr .inf in a file", "recipe", "show", "nan.yaml"),
    case("recipe show: ckpt_every 0", "recipe", "show", "tiny/edm_toy", "--set", "train.ckpt_every=0"),
    case("recipe show: unknown alias", "recipe", "show", "tiny/edm_toy", "--set", "description=*nowhere"),
    case("recipe show: keep_ckpts -1 works", "recipe", "show", "tiny/edm_toy", "--set", "train.keep_ckpts=-1", code=0),
    # ------------------------------------------------------------------ train-diffusion
    case("train-diffusion: log_every 0", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "new", *T, "--set", "train.log_every=0"),
    case("train-diffusion: seed -1", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "new", *T, "--seed", "-1"),
    case("train-diffusion: max-steps -5", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "new", "--max-steps", "-5", "--device", "cpu"),
    case("train-diffusion: sigma_min -1", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "new", *T, "--set", "process.sigma_min=-1"),
    case("train-diffusion: lr nan", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "new", *T, "--set", "train.lr=.nan"),
    case("train-diffusion: keep_ckpts 0", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "new", *T, "--set", "train.keep_ckpts=0"),
    case("train-diffusion: alias bomb recipe", "train-diffusion", "-r", "bomb.yaml", "--run-dir", "new", *T),
    case("train-diffusion: random-bytes recipe", "train-diffusion", "-r", "noise.yaml", "--run-dir", "new", *T),
    case("train-diffusion: run-dir is a file", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "afile", *T),
    case("train-diffusion: run-dir below a file", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "afile/run", *T),
    case("train-diffusion: over a convert output", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "converted", *T),
    case("train-diffusion: resume auto on a convert output", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "converted", *T, "--resume", "auto"),
    case("train-diffusion: over a finished run", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "done", *T, *TINY),
    case("train-diffusion: resume with another network", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "done", "--max-steps", "4",
         "--no-progress", "--device", "cpu", "--resume", "auto", *TINY, "--set", "network.hidden=24"),
    case("train-diffusion: resume a pickle that runs code", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "new", *T, "--resume", "evil.pt"),
    case("train-diffusion: init from a pickle that runs code", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "new", *T, "--init", "evil.pt"),
    case("train-diffusion: resume a missing state", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "new", *T, "--resume", "nope.pt"),
    case("train-diffusion: overwrite and resume", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "done", *T, "--overwrite", "--resume", "auto"),
    case("train-diffusion: time budget -1", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "new", *T, "--time-budget", "-1"),
    case("train-diffusion: resume auto on a new folder works", "train-diffusion", "-r", "tiny/edm_toy", "--run-dir", "fresh", *T, *TINY,
         "--resume", "auto", code=0),
    # ------------------------------------------------------------------ distill, train-consistency, tune-sct, grow-decoder
    case("distill: teacher runs code (zip)", "distill", "-r", "tiny/cd_toy", "--teacher", "evil.pt", "--run-dir", "new", *T),
    case("distill: teacher runs code (legacy pickle)", "distill", "-r", "tiny/cd_toy", "--teacher", "evil_legacy.pt", "--run-dir", "new", *T),
    case("distill: teacher is a text file", "distill", "-r", "tiny/cd_toy", "--teacher", "afile", "--run-dir", "new", *T),
    case("distill: no teacher", "distill", "-r", "tiny/cd_toy", "--run-dir", "new", *T),
    case("distill: teacher metadata lacks network", "distill", "-r", "tiny/cd_toy", "--teacher", "nometa.safetensors", "--run-dir", "new", *T),
    case("train-consistency: batch_size 0", "train-consistency", "-r", "tiny/ct_toy", "--run-dir", "new", *T, "--set", "train.batch_size=0"),
    case("train-consistency: ema rate 1.5", "train-consistency", "-r", "tiny/ct_toy", "--run-dir", "new", *T, "--set", "train.ema=[1.5]"),
    case("train-consistency: method float nan", "train-consistency", "-r", "tiny/ct_toy", "--run-dir", "new", *T, "--set", "method.mu0=.nan"),
    case("tune-sct: teacher runs code", "tune-sct", "-r", "tiny/sct_toy", "--teacher", "evil.pt", "--run-dir", "new", *T),
    case("tune-sct: grad_clip -1", "tune-sct", "-r", "tiny/sct_toy", "--teacher", "edm_toy", "--run-dir", "new", *T, "--set", "train.grad_clip=-1"),
    case("grow-decoder: encode with --max-steps", "grow-decoder", "--stage", "encode", "-r", "tiny/pagoda_mnist_distill", "--max-steps", "3", "--run-dir", "lat"),
    case("grow-decoder: teacher runs code", "grow-decoder", "-r", "tiny/pagoda_mnist_distill", "--teacher", "evil.pt", "--run-dir", "new", *T),
    case("grow-decoder: random-bytes recipe", "grow-decoder", "-r", "noise.yaml", "--run-dir", "new", *T),
    # ------------------------------------------------------------------ sample
    case("sample: model runs code", "sample", "--model", "evil.pt", "-n", "4", "--out", "s.npz"),
    case("sample: metadata lacks network", "sample", "--model", "nometa.safetensors", "-n", "4", "--out", "s.npz"),
    case("sample: metadata sample section is text", "sample", "--model", "badsample.safetensors", "-n", "4", "--out", "s.npz"),
    case("sample: batch-size 0", "sample", "--model", "cd_digits", "-n", "4", "--batch-size", "0", "--out", "s.npz"),
    case("sample: sigmas nan", "sample", "--model", "cd_digits", "-n", "4", "--sigmas", "nan", "--out", "s.npz"),
    case("sample: sigmas unparsable", "sample", "--model", "cd_digits", "-n", "4", "--sigmas", "80,x", "--out", "s.npz"),
    case("sample: steps 0", "sample", "--model", "edm_toy", "-n", "4", "--steps", "0", "--out", "s.npz"),
    case("sample: out below a file", "sample", "--model", "cd_digits", "-n", "4", "--out", "afile/s.npz"),
    case("sample: class-label on an unconditional model", "sample", "--model", "edm_toy", "-n", "4", "--class-label", "3", "--out", "s.npz"),
    # ------------------------------------------------------------------ interpolate
    case("interpolate: NaN latents", "interpolate", "--model", "cd_digits", "--latents", "nan.npy,nan.npy", "--out", "i.png", "--device", "cpu"),
    case("interpolate: latents run code", "interpolate", "--model", "cd_digits", "--latents", "evil.pt,evil.pt", "--out", "i.png", "--device", "cpu"),
    case("interpolate: negative seed", "interpolate", "--model", "cd_digits", "--seeds", "-1,2", "--out", "i.png", "--device", "cpu"),
    case("interpolate: out below a file", "interpolate", "--model", "cd_digits", "--out", "afile/i.png", "--device", "cpu"),
    case("interpolate: out is a folder", "interpolate", "--model", "cd_digits", "--out", "imgs", "--device", "cpu"),
    # ------------------------------------------------------------------ edit
    case("edit denoise: out is the input folder", "edit", "denoise", "--input", "imgs", "--out", "imgs", "--sigma", "0.5", "--device", "cpu"),
    case("edit denoise: out holds the user's files", "edit", "denoise", "--input", "imgs", "--out", "photos", "--sigma", "0.5", "--device", "cpu"),
    case("edit denoise: sigma nan", "edit", "denoise", "--input", "imgs", "--out", "o", "--sigma", "nan", "--device", "cpu"),
    case("edit denoise: sigma -1", "edit", "denoise", "--input", "imgs", "--out", "o", "--sigma", "-1", "--device", "cpu"),
    case("edit denoise: seed -1", "edit", "denoise", "--input", "imgs", "--out", "o", "--sigma", "0.5", "--seed", "-1", "--device", "cpu"),
    case("edit denoise: class-label on an unconditional model", "edit", "denoise", "--input", "imgs", "--out", "o", "--sigma", "0.5",
         "--class-label", "2", "--device", "cpu"),
    case("edit denoise: a float image", "edit", "denoise", "--input", "float.png", "--out", "o", "--sigma", "0.5", "--device", "cpu"),
    case("edit denoise: 16-bit PNGs work", "edit", "denoise", "--input", "imgs16", "--out", "o16", "--sigma", "0.5", "--device", "cpu", code=0),
    case("edit stroke: t-start 1e9", "edit", "stroke", "--input", "imgs", "--out", "o", "--t-start", "1e9", "--device", "cpu"),
    case("edit colorize: gray model", "edit", "colorize", "--input", "imgs", "--out", "o", "--device", "cpu"),
    case("edit superres: factor 0", "edit", "superres", "--input", "imgs", "--out", "o", "--factor", "0", "--device", "cpu"),
    case("edit invert: consistency model", "edit", "invert", "--input", "imgs", "--out", "o", "--device", "cpu"),
    case("edit inpaint: mask is not binary", "edit", "inpaint", "--input", "imgs", "--out", "o", "--mask", "imgs/1.png", "--device", "cpu"),
    case("edit denoise: batch-size 0", "edit", "denoise", "--input", "imgs", "--out", "o", "--sigma", "0.5", "--batch-size", "0", "--device", "cpu"),
    # ------------------------------------------------------------------ eval-fid
    case("eval-fid: NaN samples", "eval-fid", "--samples", "nan.npz", "--ref", "digits", "--features", "digits", "--device", "cpu"),
    case("eval-fid: batch-size 0", "eval-fid", "--samples", "s16.npz", "--ref", "digits", "--features", "digits", "--batch-size", "0", "--device", "cpu"),
    case("eval-fid: json below a file", "eval-fid", "--samples", "s16.npz", "--ref", "digits", "--features", "digits", "--json", "afile/r.json", "--device", "cpu"),
    case("eval-fid: make-ref over its source", "eval-fid", "--make-ref", "s16.npz", "--out", "s16.npz", "--features", "digits", "--device", "cpu"),
    case("eval-fid: samples are a pickle", "eval-fid", "--samples", "evil.pt", "--ref", "digits", "--features", "digits", "--device", "cpu"),
    case("eval-fid: reference pickle runs code", "eval-fid", "--samples", "s16.npz", "--ref", "evil_ref.pkl", "--features", "digits", "--device", "cpu"),
    case("eval-fid: inception file runs code", "eval-fid", "--samples", "s16.npz", "--ref", "digits", "--protocol", "clean", "--inception", "evil.pt", "--device", "cpu"),
    # ------------------------------------------------------------------ convert, demo
    case("convert: pickle runs code", "convert", "evil.pt", "--out", "cv"),
    case("convert: legacy pickle runs code (info)", "convert", "evil_legacy.pt", "--info"),
    case("convert: over a model", "convert", "converted/model.safetensors", "--out", "converted"),
    case("convert: random bytes", "convert", "noise.yaml", "--out", "cv"),
    case("convert: out below a file", "convert", "converted/model.safetensors", "--out", "afile/m.safetensors"),
    case("demo: run-dir is a file", "demo", "--run-dir", "afile", "--device", "cpu"),
    case("demo: -n 0", "demo", "--run-dir", "d", "-n", "0", "--device", "cpu"),
]


# ---------------------------------------------------------------------------------------------------- workspace

class _Touch:
    """Unpickling this runs `touch pwned` in the current folder."""

    def __reduce__(self):
        return os.system, ("touch pwned",)


def _png16(path: Path, pixels, color_type: int) -> None:
    """A 16-bit PNG written byte by byte (PIL cannot write 16-bit RGB)."""
    h = pixels.shape[0]
    raw = b"".join(b"\x00" + pixels[i].astype(">u2").tobytes() for i in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", pixels.shape[1], h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def build_workspace(ws: Path) -> None:
    """The files a user brings (see the module docstring); `done` is a real two-step run with checkpoints."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import save_file

    from fsg.app.train import train

    ws.mkdir(parents=True)
    (ws / "afile").write_text("a file of the user's\n")
    (ws / "notes.txt").write_text("keep me\n")
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (ws / "bomb.yaml").write_text("\n".join(lines + ["description: *a8"]) + "\n")
    (ws / "noise.yaml").write_bytes(bytes(np.random.default_rng(0).integers(128, 256, 600, dtype=np.uint8)))
    (ws / "nan.yaml").write_text("data: {source: 'toy:moons'}\ntrain: {lr: .inf}\n")
    torch.save({"w": torch.zeros(2), "x": _Touch()}, ws / "evil.pt")
    with open(ws / "evil_legacy.pt", "wb") as f:
        pickle.dump({"x": _Touch()}, f, protocol=4)
    with open(ws / "evil_ref.pkl", "wb") as f:
        pickle.dump({"num_images": 4, "fid": _Touch()}, f, protocol=4)
    for folder in ("imgs", "photos"):
        (ws / folder).mkdir()
        for i in range(2):
            Image.fromarray(np.full((16, 16), 60 + 100 * i, np.uint8)).save(ws / folder / f"{i}.png")
    (ws / "imgs16").mkdir()
    _png16(ws / "imgs16" / "g.png", np.arange(256, dtype=np.uint16).reshape(16, 16) * 257, 0)
    _png16(ws / "imgs16" / "rgb.png", np.full((16, 16, 3), 40000, np.uint16), 2)
    Image.new("F", (16, 16), 0.5).save(ws / "float.png", format="TIFF")            # a float image named .png
    np.savez(ws / "nan.npz", np.full((4, 16, 16, 1), np.nan, np.float32))
    np.savez(ws / "s16.npz", np.zeros((4, 16, 16, 1), np.uint8))
    np.save(ws / "nan.npy", np.full((1, 16, 16), np.nan, np.float32))
    (ws / "converted").mkdir()
    model = ROOT / "assets" / "cd_digits" / "model.safetensors"
    shutil.copy(model, ws / "converted" / "model.safetensors")
    with safe_open(str(model), "pt") as f:
        meta, tensors = json.loads(f.metadata()["fsg"]), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(ws / "nometa.safetensors"), {"fsg": json.dumps({k: v for k, v in meta.items() if k != "network"})})
    save_file(tensors, str(ws / "badsample.safetensors"), {"fsg": json.dumps(dict(meta, sample="heun"))})
    overrides = ["train.batch_size=32", "data.toy_size=256", "sample.grid=16", "train.ckpt_every=1"]
    train("train-diffusion", "tiny/edm_toy", overrides, run_dir=ws / "done", device="cpu", max_steps=2, progress=False)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_case(c: Case, template: Path, scratch: Path, timeout: float) -> dict:
    ws = scratch / f"case{CASES.index(c):03d}"
    shutil.copytree(template, ws)
    before = snapshot(ws)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="120")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(key, None)
    start = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "fsg", *c.args], cwd=ws, env=env, capture_output=True, text=True,
                           timeout=timeout)
        code, err = r.returncode, r.stderr
    except subprocess.TimeoutExpired as e:
        code, err = None, (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    seconds = time.perf_counter() - start
    after = snapshot(ws)
    problems = []
    if code is None:
        problems.append(f"timed out after {timeout:g} s")
    elif code != c.code:
        problems.append(f"exit {code}, expected {c.code}")
    if "Traceback" in err:
        problems.append("a traceback")
    errors = [line for line in err.splitlines() if line.startswith("fsg: error:")]
    if c.code == 2 and code == 2 and errors and err.strip().splitlines()[-1] != errors[-1]:
        problems.append("more after the error line")
    if c.code == 2 and code == 2 and not errors and "Error" not in err:
        problems.append("exit 2 without an error message")
    changed = [k for k in before if after.get(k) != before[k]]
    if changed:
        problems.append(f"changed or deleted the user's {', '.join(changed[:3])}")
    new = [k for k in after if k not in before and Path(k).name != "run.lock"]
    if "pwned" in [Path(k).name for k in after]:
        problems.append("RAN CODE from a file")
    elif c.code != 0 and new:
        problems.append(f"a refused command wrote {', '.join(new[:3])}")
    shutil.rmtree(ws, ignore_errors=True)
    tail = errors[-1] if errors else (err.strip().splitlines() or [""])[-1]
    return {"name": c.name, "args": list(c.args), "expected": c.code, "exit": code, "held": not problems,
            "problems": problems, "stderr_tail": tail[:300], "seconds": round(seconds, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", default="", help="run only the cases whose name contains this text")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="cases at a time")
    parser.add_argument("--timeout", type=float, default=180, help="seconds per case")
    args = parser.parse_args()
    cases = [c for c in CASES if args.k in c.name]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fsg-hostile-") as tmp:
        template = Path(tmp) / "template"
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        build_workspace(template)
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = list(pool.map(lambda c: run_case(c, template, Path(tmp), args.timeout), cases))
    held = sum(r["held"] for r in rows)
    for r in rows:
        status = "held" if r["held"] else "FAIL"
        print(f"{status}  {r['name']}  ({r['seconds']:.1f} s)  {r['stderr_tail'][:140]}")
        for p in r["problems"]:
            print(f"      - {p}")
    print(f"\nheld {held}/{len(rows)}   ({time.perf_counter() - start:.0f} s)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hostile_inputs.json").write_text(json.dumps({"held": held, "total": len(rows), "cases": rows}, indent=2))
    return 0 if held == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
