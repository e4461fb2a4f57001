"""The shipped tiny EDM2 recipes end to end on digits: an EDM2 teacher with post-hoc EMA snapshots, a profile
reconstructed with `fsg phema`, its Stable Consistency Tuning and an sCD run with the settings of
recipes/scd_imagenet512.yaml, sampled at 1 and 2 steps. The default (slow) test runs a few steps of each; the long
one (-m long) trains long enough to check the quality of the result."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from fsg.cli import app
from fsg.cli.phema import phema
from fsg.io.checkpoint import read_model

ROOT = Path(__file__).resolve().parents[1]
TEACHER, SCT = ROOT / "recipes/tiny/edm2_digits.yaml", ROOT / "recipes/tiny/sct_edm2_digits.yaml"
SCD512 = ROOT / "recipes/scd_imagenet512.yaml"


def _fsg(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


def _phema(*args):
    command = typer.Typer()
    command.command()(phema)
    r = CliRunner().invoke(command, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.slow
def test_tiny_edm2_teacher_phema_and_sct_run(tmp_path):
    small = ("--set", "train.batch_size=16", "--set", "sample.grid=4", "--set", "sample.steps=2", "--no-progress",
             "--device", "cpu")
    _fsg("train-diffusion", "--recipe", TEACHER, "--run-dir", tmp_path / "teacher", "--max-steps", 4,
         "--set", "train.phema.every=2", *small)
    _, meta = read_model(tmp_path / "teacher")
    assert meta["network"]["arch"] == "edm2" and meta["num_classes"] == 10 and meta["step"] == 4
    assert "from 4 snapshots" in _phema(tmp_path / "teacher", "--std", "0.08", "--out", tmp_path / "ema008")

    _fsg("tune-sct", "--teacher", tmp_path / "ema008", "--recipe", SCT, "--run-dir", tmp_path / "sct", "--max-steps", 3,
         "--set", "train.batch_size=16", "--set", "sample.grid=4", "--no-progress", "--device", "cpu")
    _, meta = read_model(tmp_path / "sct")
    assert (meta["method"], meta["precond"], meta["network"]["arch"]) == ("sct", "ect", "edm2")
    assert "NFE 1" in _fsg("sample", "--model", tmp_path / "sct", "-n", 4, "--out", tmp_path / "one.npz", "--device", "cpu")
    assert "NFE 2" in _fsg("sample", "--model", tmp_path / "sct", "--sigmas", "80,0.821", "--class-label", 3, "-n", 4,
                           "--out", tmp_path / "two.npz", "--device", "cpu")

    # the shipped sCD ImageNet-512 recipe's method and training settings on the same teacher (digits instead of latents)
    recipe = yaml.safe_load(SCD512.read_text())
    recipe["data"] = {"source": "digits", "resolution": 16, "labels": True}
    recipe["train"].update(batch_size=8, micro_batch=None, bf16=False, phema={"stds": [0.05], "every": 2})
    (tmp_path / "scd.yaml").write_text(yaml.safe_dump(recipe))
    _fsg("distill", "--teacher", tmp_path / "ema008", "--recipe", tmp_path / "scd.yaml", "--run-dir", tmp_path / "scd",
         "--max-steps", 2, "--set", "sample.grid=4", "--no-progress", "--device", "cpu")
    _, meta = read_model(tmp_path / "scd")
    assert (meta["method"], meta["network"]["arch"]) == ("scm-cd", "edm2")
    assert "NFE 2" in _fsg("sample", "--model", tmp_path / "scd", "--steps", 2, "-n", 4, "--out", tmp_path / "scd.npz",
                           "--device", "cpu")


@pytest.mark.long
def test_tiny_edm2_teacher_and_sct_learn_digits(tmp_path):
    """A shortened teacher (600 steps) and SCT run (200 steps) give digits: digits-FID far below noise's. Minutes on
    2 cores: `pytest -m long tests/test_edm2_digits.py`."""
    from fsg.eval.quality import digits_fid
    from fsg.models.load import load_model
    from fsg.sampling.generate import iter_samples

    def fid(run, **kw):
        stream = iter_samples(load_model(run), 1000, seed=0, batch_size=500, **kw)
        return digits_fid(torch.cat([x for _, x, _ in stream]))

    _fsg("train-diffusion", "--recipe", TEACHER, "--run-dir", tmp_path / "teacher", "--max-steps", 600,
         "--set", "train.phema.every=100", "--set", "sample.grid=4", "--no-progress", "--device", "cpu")
    _phema(tmp_path / "teacher", "--std", "0.10", "--out", tmp_path / "ema")
    _fsg("tune-sct", "--teacher", tmp_path / "ema", "--recipe", SCT, "--run-dir", tmp_path / "sct", "--max-steps", 200,
         "--set", "sample.grid=4", "--no-progress", "--device", "cpu")
    noise = digits_fid(torch.rand(1000, 1, 16, 16) * 2 - 1)
    teacher, one_step = fid(tmp_path / "ema", steps=18), fid(tmp_path / "sct", steps=1)
    assert teacher < 0.1 * noise and one_step < 0.2 * noise, (teacher, one_step, noise)
