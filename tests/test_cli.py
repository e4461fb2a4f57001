"""The command line as a user meets it: help, recipe validation, errors with exit code 2, a toy pipeline."""

import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from fsg.cli import app

runner = CliRunner()
ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def fsg(*args, env=None):
    import os
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "fsg", *map(str, args)], capture_output=True, text=True, env=e, cwd=ROOT)


def test_help_lists_the_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("train-diffusion", "distill", "train-consistency", "sample", "recipe"):
        assert cmd in r.output


def test_recipe_show_rejects_unknown_key_with_exit_2():
    r = fsg("recipe", "show", "recipes/tiny/cd_toy.yaml", "--set", "train.bogus=1")
    assert r.returncode == 2
    assert "train.bogus" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    ok = fsg("recipe", "show", "recipes/tiny/cd_toy.yaml", "--set", "train.lr=2e-4")
    assert ok.returncode == 0 and "lr: 0.0002" in ok.stdout


@pytest.mark.parametrize("args,needle", [
    (["sample", "--model", "no/such/run", "--grid", "x.png"], "model not found"),
    (["train-diffusion", "--recipe", "no/such.yaml"], "recipe not found"),
    (["train-diffusion"], "needs --recipe"),
    (["sample", "--model", "recipes", "--grid", "x.png"], "without model.safetensors"),
])
def test_user_errors_are_one_line_exit_2(args, needle):
    r = fsg(*args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_empty_data_folder_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    r = fsg("train-diffusion", "--recipe", "recipes/tiny/edm_digits.yaml", "--set", "data.source=folder",
            "--set", f"data.path={tmp_path / 'empty'}", "--run-dir", tmp_path / "run")
    assert r.returncode == 2 and "empty" in r.stderr.lower()


def test_recipe_sample_section_sets_the_exported_default(tmp_path):
    """`sample.sampler` / `sample.steps` of a recipe become the model's default (they were ignored until a GPU
    test caught it); an unknown sampler is refused before training."""
    run = tmp_path / "run"
    r = fsg("train-diffusion", "--recipe", "recipes/tiny/edm_toy.yaml", "--run-dir", run, "--max-steps", 2,
            "--set", "sample.sampler=euler", "--set", "sample.steps=5", "--no-progress", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = fsg("sample", "--model", run, "-n", 4, "--out", tmp_path / "s.npz")
    assert r.returncode == 0 and "sampler euler, NFE 5" in r.stdout, r.stdout + r.stderr
    bad = fsg("train-diffusion", "--recipe", "recipes/tiny/edm_toy.yaml", "--run-dir", tmp_path / "bad",
              "--max-steps", 2, "--set", "sample.sampler=hune", "--no-progress", "--device", "cpu")
    assert bad.returncode == 2 and "unknown sampler 'hune'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_toy_pipeline_train_sample_distill(tmp_path):
    teacher, student = tmp_path / "edm", tmp_path / "cd"
    r = fsg("train-diffusion", "--recipe", "recipes/tiny/edm_toy.yaml", "--run-dir", teacher, "--max-steps", 60, "--no-progress")
    assert r.returncode == 0, r.stderr
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors"):
        assert (teacher / name).exists()
    assert list((teacher / "checkpoints").glob("state-*.pt")) and list((teacher / "samples").glob("*.png"))
    again = fsg("train-diffusion", "--recipe", "recipes/tiny/edm_toy.yaml", "--run-dir", teacher, "--max-steps", 60)
    assert again.returncode == 2 and "--resume auto" in again.stderr          # never overwrite a run
    r = fsg("sample", "--model", teacher, "--steps", 18, "-n", 300, "--out", tmp_path / "s.npz", "--grid", tmp_path / "s.png")
    assert r.returncode == 0, r.stderr
    assert "NFE 35" in r.stdout
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert arr.shape == (300, 2) and arr.dtype == np.float32
    r = fsg("distill", "--teacher", teacher, "--recipe", "recipes/tiny/cd_toy.yaml", "--run-dir", student, "--max-steps", 40, "--no-progress")
    assert r.returncode == 0, r.stderr
    r = fsg("sample", "--model", student, "--steps", 1, "-n", 100, "--out", tmp_path / "cd1.npz")
    assert r.returncode == 0 and "NFE 1" in r.stdout, r.stderr
    r = fsg("distill", "--teacher", teacher, "--recipe", "recipes/tiny/cd_digits.yaml", "--run-dir", tmp_path / "bad", "--max-steps", 1)
    assert r.returncode == 2 and "shape" in r.stderr                          # a teacher of other data


@pytest.mark.slow
def test_image_sampling_writes_npz_pngs_and_grid(tmp_path):
    from fsg.io.checkpoint import save_model
    from tests.helpers import tiny_model
    m = tiny_model(shape=(1, 8, 8), precond="consistency", sampler="consistency", steps=1)
    save_model(tmp_path / "model.safetensors", m.denoiser.net.state_dict(), m.meta)
    r = fsg("sample", "--model", tmp_path, "-n", 5, "--out", tmp_path / "s.npz", "--grid", tmp_path / "g.png")
    assert r.returncode == 0, r.stderr
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert arr.shape == (5, 8, 8, 1) and arr.dtype == np.uint8
    r = fsg("sample", "--model", tmp_path, "-n", 3, "--out", str(tmp_path / "pngs") + "/")
    assert r.returncode == 0 and len(list((tmp_path / "pngs").glob("*.png"))) == 3


@pytest.mark.slow
def test_vp_process_and_class_conditional_training(tmp_path):
    r = fsg("train-diffusion", "--recipe", "recipes/tiny/edm_toy.yaml", "--run-dir", tmp_path / "vp", "--max-steps", 20,
            "--set", "process.name=vp", "--set", "process.P_mean=-1.2", "--no-progress")
    assert r.returncode == 2 and "unknown key 'process." in r.stderr      # the recipe's EDM-only keys on the VP process
    r = fsg("train-diffusion", "--recipe", "recipes/tiny/edm_toy.yaml", "--run-dir", tmp_path / "vp", "--max-steps", 20,
            "--set", "process={name: vp}", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = fsg("sample", "--model", tmp_path / "vp", "--steps", 6, "-n", 10, "--out", tmp_path / "vp.npz")
    assert r.returncode == 0 and "NFE 11" in r.stdout, r.stderr
    r = fsg("train-diffusion", "--recipe", "recipes/tiny/edm_digits.yaml", "--run-dir", tmp_path / "cond", "--max-steps", 3,
            "--set", "data.resolution=8", "--set", "data.labels=true", "--set", "train.label_dropout=0.1",
            "--set", "train.batch_size=16", "--set", "network.channel_mult=[1, 2]", "--set", "sample.grid=4", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = fsg("sample", "--model", tmp_path / "cond", "--steps", 2, "-n", 4, "--class-label", 3, "--guidance", 2.0,
            "--out", tmp_path / "c.npz")
    assert r.returncode == 0 and "NFE 6" in r.stdout, r.stderr           # guidance: two passes per step
    assert (np.load(tmp_path / "c.npz")["arr_1"] == 3).all()           # ADM's layout: labels in arr_1


@pytest.mark.slow
def test_demo_runs_from_any_folder(tmp_path):
    """`fsg demo` (the README's first command) from a folder without the repository: the bundled teacher and
    recipes are found through fsg.resources; the table and the picture are written."""
    import json
    import os

    e = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "fsg", "demo", "-n", "200", "--run-dir", str(tmp_path / "demo"),
                        "--device", "cpu"], capture_output=True, text=True, env=e, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "demo" / "demo.json").read_text())["rows"]
    assert {row["nfe"] for row in rows} >= {1, 2, 35}
    assert all(np.isfinite(row["ms_per_sample"]) for row in rows)
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 0
