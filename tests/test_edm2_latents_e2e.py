"""The latent path end to end: digits encoded to SD-VAE latents by a
tiny local AutoencoderKL, an EDM2 trained on `data.source: latents`, and `fsg sample --vae DIR` decoding its samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fsg.cli import app
from fsg.data import build_dataset
from fsg.data.config import DataConfig
from fsg.data.vae import StabilityVAE, encode_dataset
from fsg.io.checkpoint import read_model


@pytest.mark.slow
def test_train_on_latents_and_sample_decoded_images(vae_folder, tmp_path):
    digits = build_dataset(DataConfig(source="digits", resolution=16, channels=3, labels=True))
    digits = torch.utils.data.Subset(digits, range(64))
    digits.num_classes = 10
    encode_dataset(digits, StabilityVAE(vae_folder), tmp_path / "latents", batch_size=32)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"data: {{source: latents, path: {tmp_path / 'latents'}, labels: true}}\n"
                      "network: {arch: edm2, model_channels: 16, channel_mult: [1, 2], num_blocks: 1, attn_resolutions: [4], channels_per_head: 16}\n"
                      "method: {name: diffusion}\ntrain: {batch_size: 16, max_steps: 3, ema: [], phema: {stds: [0.1], every: 3}}\n"
                      "sample: {steps: 2, grid: 4}\n")
    runner = CliRunner()
    r = runner.invoke(app, ["train-diffusion", "--recipe", str(recipe), "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    meta = read_model(tmp_path / "run")[1]
    assert meta["shape"] == [4, 8, 8] and meta["vae"]["kind"] == "stability-vae"
    r = runner.invoke(app, ["sample", "--model", str(tmp_path / "run"), "-n", "3", "--steps", "2", "--out", str(tmp_path / "s.npz"), "--device", "cpu"])
    assert r.exit_code != 0 and "pass --vae DIR" in str(r.exception)
    r = runner.invoke(app, ["sample", "--model", str(tmp_path / "run"), "-n", "3", "--steps", "2", "--vae", str(vae_folder),
                            "--out", str(tmp_path / "s.npz"), "--grid", str(tmp_path / "g.png"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert arr.shape == (3, 16, 16, 3) and arr.dtype == np.uint8
    r = runner.invoke(app, ["phema", str(tmp_path / "run"), "--std", "0.1", "--out", str(tmp_path / "ema")])
    assert r.exit_code == 0, r.output
