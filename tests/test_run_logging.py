"""What a training run records (fsg.train.runlog): metrics.jsonl's keys on every line, a line for the last step of a
run stopped early, run.json, --max-steps' meaning (the recipe's horizon stays), grids by default, TensorBoard."""

from __future__ import annotations

import json
import math
import sys
import time
import types

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fsg.app.train import train
from fsg.errors import EXIT_PREEMPTED, UserError
from fsg.train.engine import TrainingStopped
from fsg.train.runlog import default_sample_every

RECIPE = """
data: {{source: "toy:moons", toy_size: 1024}}
network: {{arch: mlp, hidden: 16, depth: 1, emb_dim: 8}}
method: {{name: diffusion}}
process: {{name: edm}}
train: {{batch_size: 32, max_steps: {steps}, lr: 1e-2, lr_decay: cosine, ema: [0.9], log_every: {log},
         ckpt_every: {ckpt}, seed: 1}}
sample: {{grid: 8, steps: 2}}
"""
BATCH, LR = 32, 1e-2


def recipe(tmp_path, steps=8, log=3, ckpt=4):
    p = tmp_path / "tiny.yaml"
    p.write_text(RECIPE.format(steps=steps, log=log, ckpt=ckpt))
    return p


def lines(run):
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def record(run):
    return json.loads((run / "run.json").read_text())


def fit(tmp_path, run, overrides=(), **kw):
    return train("train-diffusion", recipe(tmp_path, **kw.pop("recipe", {})), overrides, run_dir=tmp_path / run,
                 device="cpu", progress=False, **kw)


def test_every_line_carries_step_images_seen_wall_time_and_time(tmp_path):
    before = time.time()
    fit(tmp_path, "run")
    after = time.time()
    got = lines(tmp_path / "run")
    assert [ln["step"] for ln in got] == [3, 6, 8]               # every log_every steps, and the last
    for ln in got:
        assert list(ln)[:4] == ["step", "images_seen", "wall_time", "time"]
        assert ln["images_seen"] == ln["step"] * BATCH
        assert before <= ln["time"] <= after
        assert {"loss", "lr", "mse", "it_s"} <= set(ln)          # the diffusion method's key set
    walls = [ln["wall_time"] for ln in got]
    assert 0 < walls[0] < walls[1] < walls[2] <= after - before
    rec = record(tmp_path / "run")
    assert rec["status"] == "finished" and rec["stopped_by"] is None and rec["step"] == 8


def test_a_run_stopped_before_its_first_interval_still_writes_a_line(tmp_path):
    fit(tmp_path, "short", max_steps=2, recipe=dict(log=50))
    assert [ln["step"] for ln in lines(tmp_path / "short")] == [2]
    rec = record(tmp_path / "short")
    assert (rec["status"], rec["step"], rec["max_steps"], rec["requested_max_steps"], rec["stopped_by"]) == \
        ("stopped", 2, 8, 2, "--max-steps 2")

    with pytest.raises(TrainingStopped) as stop:                 # a budget spent after the first step
        fit(tmp_path, "budget", time_budget=1e-9, recipe=dict(log=50))
    assert stop.value.code == EXIT_PREEMPTED
    assert [ln["step"] for ln in lines(tmp_path / "budget")] == [1]
    assert record(tmp_path / "budget")["stopped_by"] == "time budget"


def test_max_steps_keeps_the_recipe_horizon_and_a_resume_continues_exactly(tmp_path):
    fit(tmp_path, "parts", max_steps=4)
    fit(tmp_path, "parts", max_steps=6, resume="auto")
    fit(tmp_path, "parts", resume="auto")
    fit(tmp_path, "whole")
    a, b = load_file(tmp_path / "parts" / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # cosine over the recipe's 8 steps, not over --max-steps: the line of step s shows the rate of its last
    # optimizer step s - 1, lr * (1 + cos(pi (s - 1) / 8)) / 2
    for ln in lines(tmp_path / "parts"):
        want = LR * (1 + math.cos(math.pi * (ln["step"] - 1) / 8)) / 2
        assert ln["lr"] == pytest.approx(want, abs=1e-6)             # lines keep 6 decimals
    assert [ln["step"] for ln in lines(tmp_path / "parts")] == [3, 4, 6, 8]
    rec = record(tmp_path / "parts")
    assert [(t["from_step"], t["to_step"], t["stopped_by"]) for t in rec["attempts"]] == \
        [(0, 4, "--max-steps 4"), (4, 6, "--max-steps 6"), (6, 8, None)]
    # the training clock goes on across resumes: each attempt starts from the wall time kept in the checkpoint
    walls = [ln["wall_time"] for ln in lines(tmp_path / "parts")]
    assert walls == sorted(walls) and rec["wall_time"] >= walls[-1]


def test_grids_by_default_at_checkpoints(tmp_path):
    # about 10 grids over train.max_steps, at multiples of ckpt_every: ceil(max / (10 ckpt)) * ckpt
    assert default_sample_every(3000, 1000) == 1000
    assert default_sample_every(400_000, 10_000) == 40_000
    assert default_sample_every(60, 1) == 6
    assert default_sample_every(100, 500) == 500
    fit(tmp_path, "run", recipe=dict(ckpt=2))
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == \
        [f"grid-{s:08d}.png" for s in (2, 4, 6, 8)]
    fit(tmp_path, "every3", overrides=["train.sample_every=3"])
    assert sorted(p.name for p in (tmp_path / "every3" / "samples").iterdir()) == \
        [f"grid-{s:08d}.png" for s in (3, 6, 8)]


class FakeWriter:
    calls: list = []

    def __init__(self, log_dir):
        self.log_dir = log_dir

    def add_scalar(self, tag, value, step, walltime=None):
        self.calls.append(("scalar", tag, step, value))

    def add_image(self, tag, image, step, dataformats="CHW"):
        self.calls.append(("image", tag, step, image.shape, image.dtype, dataformats))

    def flush(self):
        pass

    def close(self):
        self.calls.append(("close",))


def test_tensorboard_gets_the_metrics_and_the_grids(tmp_path, monkeypatch):
    FakeWriter.calls = []
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    fit(tmp_path, "run", overrides=["train.tensorboard=true"])
    scalars = {(c[1], c[2]): c[3] for c in FakeWriter.calls if c[0] == "scalar"}
    for ln in lines(tmp_path / "run"):
        for key, value in ln.items():
            if key not in ("step", "time"):
                assert scalars[(key, ln["step"])] == value
    images = [c for c in FakeWriter.calls if c[0] == "image"]
    assert [c[2] for c in images] == [4, 8]             # the grids: by default at the checkpoint, and the end
    assert all(len(c[3]) == 3 and c[3][2] == 3 and c[4] == "uint8" and c[5] == "HWC" for c in images)
    assert FakeWriter.calls[-1] == ("close",)


def test_tensorboard_missing_is_one_line_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)      # import fails as without the package
    fit(tmp_path, "run", overrides=["train.tensorboard=true"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if "tensorboard" in ln]
    assert len(err) == 1 and "not installed" in err[0]
    assert [ln["step"] for ln in lines(tmp_path / "run")] == [3, 6, 8]


def test_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    fit(tmp_path, "run", overrides=["train.tensorboard=true"])
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_max_steps_help_and_range(tmp_path):
    from fsg.cli import app

    shown = CliRunner().invoke(app, ["train-diffusion", "--help"], terminal_width=400)
    assert "train.max_steps stays the horizon" in " ".join(shown.output.split()), shown.output
    with pytest.raises(UserError, match=r"^--max-steps: must be at least 1, got 0$"):
        fit(tmp_path, "run", max_steps=0)
