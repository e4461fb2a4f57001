"""PaGoDA end to end on digits (16x16 images, an 8x8 teacher): the encode stage's sharded, resumable latents,
training from them, growing, sampling at the grown resolution, and super-resolution / inversion with the
generator's recorded teacher."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fsg.cli import app
from fsg.data import build_dataset
from fsg.data.config import DataConfig
from fsg.errors import UserError
from fsg.models.load import load_model
from fsg.core.inversion import encode
from fsg.data.latents import LatentStore, shard_name
from fsg.app.pagoda_encode import encode_dataset

runner = CliRunner()
TINY_NET = ["network.model_channels=8", "network.channel_mult=[1,2]", "network.attn_resolutions=[]"]
DIGITS = ["data.source=digits", "data.resolution=16"]
PGD = ["method.inversion_steps=2", "method.shard_size=500", "method.disc_channels=4", "method.grow_channels=8",
       "train.batch_size=16", "train.log_every=2", "train.ckpt_every=1000"]


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def _user_error(args) -> str:
    """The one-line message a user error ends in (`fsg.cli.main` prints it and exits with code 2)."""
    r = runner.invoke(app, [str(a) for a in args])
    if r.exit_code == 2:                      # typer's own usage errors
        return r.output
    assert isinstance(r.exception, UserError), (r.output, r.exception)
    return str(r.exception)


def _ok(args):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, (r.output, r.exception)
    return r


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    run = tmp_path_factory.mktemp("pgd") / "teacher"
    _ok(["train-diffusion", "--recipe", "recipes/tiny/pagoda_mnist_teacher.yaml", "--run-dir", run, "--max-steps", 10,
         "--no-progress", *_sets(DIGITS + ["data.downsample=2", "train.batch_size=16", *TINY_NET])])
    return run


@pytest.fixture(scope="module")
def latents(teacher):
    out = teacher.parent / "latents"
    _ok(["grow-decoder", "--stage", "encode", "--teacher", teacher, "--recipe", "recipes/tiny/pagoda_mnist_distill.yaml",
         "--run-dir", out, "--no-progress", *_sets(DIGITS + ["data.downsample=2", *PGD])])
    return out


def test_encode_stage_writes_every_item_in_shards(latents):
    manifest = json.loads((latents / "latents.json").read_text())
    assert manifest["count"] == 1797 and manifest["shards"] == 4 and not manifest["flips"]
    shards = [load_file(latents / shard_name(k)) for k in range(4)]
    index = torch.cat([s["index"] for s in shards])
    assert torch.equal(index, torch.arange(1797)) and shards[0]["z"].shape == (500, 1, 8, 8)


def test_encode_stage_resumes_and_ranks_split_the_shards(teacher, latents, tmp_path):
    before = load_file(latents / shard_name(2))
    partial = tmp_path / "partial"
    shutil.copytree(latents, partial)
    (partial / shard_name(2)).unlink()
    (partial / "latents.json").unlink()
    t = load_model(teacher)
    data = build_dataset(DataConfig(source="digits", resolution=16, downsample=2))
    cfg = DataConfig(source="digits", resolution=16, downsample=2)
    kw = dict(steps=2, flips=False, shard_size=500, batch_size=64, device="cpu", progress=False)
    (partial / "latents.pending.json").write_text(json.dumps({**json.loads((latents / "latents.json").read_text()),
                                                              "inversion_steps": 3}))
    with pytest.raises(UserError, match="another inversion_steps"):    # an unfinished encode of other settings
        encode_dataset(t, data, cfg, partial, **kw)
    (partial / "latents.pending.json").unlink()
    resumed = encode_dataset(t, data, cfg, partial, **kw)
    assert resumed["encoded_now"] == 1                           # only the missing shard is encoded again
    assert torch.equal(load_file(partial / shard_name(2))["z"], before["z"])
    split = tmp_path / "split"
    done = [encode_dataset(t, data, cfg, split, rank=r, world=3, **kw)["encoded_now"] for r in range(3)]
    assert done == [2, 1, 1]                                     # shards 0,3 / 1 / 2
    for k in range(4):
        assert torch.equal(load_file(split / shard_name(k))["z"], load_file(latents / shard_name(k))["z"])


def test_store_lookup_matches_the_encoder_and_checks_the_images(teacher, latents):
    t = load_model(teacher)
    data = build_dataset(DataConfig(source="digits", resolution=16, downsample=2))
    idx = torch.tensor([3, 1500, 0])
    x = torch.stack([data[int(i)]["x"] for i in idx])
    store = LatentStore(latents)
    z = store.lookup(idx, torch.zeros(3, dtype=torch.bool), x)
    assert torch.allclose(z, encode(t.denoiser, x, 8, 2), atol=1e-5)
    with pytest.raises(UserError, match="another image"):
        store.lookup(idx, torch.zeros(3, dtype=torch.bool), x.flip(0))
    with pytest.raises(UserError, match="no latent"):
        store.lookup(idx, torch.ones(3, dtype=torch.bool), x)     # encoded without flipped copies


def test_encode_refuses_a_folder_of_another_teachers_latents(teacher, latents, tmp_path):
    other = tmp_path / "other"
    _ok(["train-diffusion", "--recipe", "recipes/tiny/pagoda_mnist_teacher.yaml", "--run-dir", other, "--max-steps", 2,
         "--seed", 5, "--no-progress", *_sets(DIGITS + ["data.downsample=2", "train.batch_size=16", *TINY_NET])])
    message = _user_error(["grow-decoder", "--stage", "encode", "--teacher", other, "--recipe",
                           "recipes/tiny/pagoda_mnist_distill.yaml", "--run-dir", latents, "--no-progress",
                           *_sets(DIGITS + ["data.downsample=2", *PGD])])
    assert "another teacher" in message
    message = _user_error(["grow-decoder", "--teacher", other, "--recipe", "recipes/tiny/pagoda_mnist_distill.yaml",
                           "--run-dir", tmp_path / "g", "--max-steps", 2, "--no-progress",
                           *_sets(DIGITS + ["data.downsample=2", *PGD, f"method.latents={latents}"])])
    assert "another teacher" in message


@pytest.fixture(scope="module")
def grown(teacher, latents):
    g8, g16 = teacher.parent / "g8", teacher.parent / "g16"
    _ok(["grow-decoder", "--teacher", teacher, "--recipe", "recipes/tiny/pagoda_mnist_distill.yaml", "--run-dir", g8,
         "--max-steps", 6, "--no-progress", *_sets(DIGITS + ["data.downsample=2", *PGD, f"method.latents={latents}"])])
    _ok(["grow-decoder", "--teacher", teacher, "--init", g8, "--recipe", "recipes/tiny/pagoda_mnist_grow32.yaml",
         "--run-dir", g16, "--max-steps", 6, "--no-progress",
         *_sets(DIGITS + ["data.downsample=1", *PGD, "method.activate_from=1", f"method.latents={latents}"])])
    return g16


def test_grown_generator_records_its_teacher_and_samples_at_the_new_resolution(teacher, grown, tmp_path):
    meta = load_model(grown).meta
    assert meta["teacher"] == str(teacher.resolve())                # the --teacher given, made absolute
    assert meta["latent_factor"] == 2 and meta["inversion_steps"] == 2 and len(meta["teacher_fingerprint"]) == 64
    metrics = [json.loads(line) for line in (grown / "metrics.jsonl").read_text().splitlines()]
    assert {"rec", "gan_d"} <= set(metrics[-1])          # generator and discriminator steps both logged
    r = _ok(["sample", "--model", grown, "--steps", 1, "-n", 5, "--out", tmp_path / "s.npz"])
    assert "NFE 1" in r.output
    assert np.load(tmp_path / "s.npz")["arr_0"].shape == (5, 16, 16, 1)


def _write_digits(folder, resolution, n=3):
    from PIL import Image

    folder.mkdir()
    data = build_dataset(DataConfig(source="digits", resolution=resolution))
    for i in range(n):
        pixels = ((data[i]["x"][0] + 1) * 127.5).round().clamp(0, 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"d{i}.png")
    return data


def test_edit_invert_and_superres_with_a_pagoda_generator(grown, tmp_path):
    _write_digits(tmp_path / "full", 16)
    r = _ok(["edit", "invert", "--model", grown, "--input", tmp_path / "full", "--out", tmp_path / "inv"])
    assert "NFE 1 + 4 teacher NFE" in r.output and "reconstruction MSE" in r.output
    z = np.load(tmp_path / "inv" / "latents.npy")
    assert z.shape == (3, 1, 8, 8)
    full = load_model(grown)
    from fsg.core.inversion import decode
    with torch.no_grad():                                  # the written results are G(z) of the written latents
        x_hat = decode(full.denoiser, torch.from_numpy(z), 2, full.process.sigma_max).clamp(-1, 1)
    from PIL import Image
    written = torch.from_numpy(np.asarray(Image.open(tmp_path / "inv" / "d2.png"), dtype=np.float32))
    assert (written - ((x_hat[2, 0] + 1) * 127.5)).abs().max() <= 1.0
    _write_digits(tmp_path / "low", 8)
    _ok(["edit", "superres", "--model", grown, "--input", tmp_path / "low", "--out", tmp_path / "sr"])
    assert Image.open(tmp_path / "sr" / "d1.png").size == (16, 16)


def test_pagoda_edit_errors_exit_2(grown, tmp_path):
    _write_digits(tmp_path / "full", 16, n=1)
    cases = [
        (["edit", "superres", "--factor", "4"], "growth factor 2"),
        (["edit", "inpaint", "--mask", str(tmp_path / "full" / "d0.png")], "runs edit superres and invert"),
        (["edit", "invert", "--teacher", str(grown)], "makes data of shape"),
        (["edit", "invert", "--steps", "2"], "No such option"),
    ]
    for args, needle in cases:
        message = _user_error([*args, "--model", grown, "--input", tmp_path / "full", "--out", tmp_path / "o"])
        assert needle in message, (args, message)


@pytest.mark.slow
def test_gan_steps_under_two_gloo_processes(teacher, latents, tmp_path):
    """Alternating generator / discriminator steps, the adaptive weight's autograd.grad and the latent store
    under DistributedDataParallel (two CPU processes); and `--stage encode` splits its shards between them."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fsg",
              "grow-decoder", "--teacher", str(teacher), "--recipe", "recipes/tiny/pagoda_mnist_distill.yaml",
              "--no-progress", "--device", "cpu"]
    enc = subprocess.run([*launch, "--stage", "encode", "--run-dir", str(tmp_path / "lat"),
                          *_sets(DIGITS + ["data.downsample=2", *PGD])], capture_output=True, text=True, env=env)
    assert enc.returncode == 0, enc.stderr
    for k in range(4):             # the latents one process wrote (up to float rounding: other batch sizes)
        assert torch.allclose(load_file(tmp_path / "lat" / shard_name(k))["z"], load_file(latents / shard_name(k))["z"],
                              rtol=1e-5, atol=1e-4)
    r = subprocess.run([*launch, "--run-dir", str(tmp_path / "g"), "--max-steps", "4",
                        *_sets(DIGITS + ["data.downsample=2", *PGD, f"method.latents={latents}"])],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "2 processes (gloo, DDP)" in r.stderr
    last = json.loads((tmp_path / "g" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 4 and {"rec", "gan_g", "gan_w", "gan_d"} <= set(last)


def test_interpolate_between_seeds_and_between_inverted_images(grown, tmp_path):
    """The path's ends are the seeds' plain samples (sample 0 of `fsg sample --seed S`); latents written by
    `fsg edit invert` (N(0, I) units) are interpolation endpoints that decode back to the reconstructions."""
    from fsg.app.edit import run_interpolation, run_pagoda_edit
    from fsg.models.load import load_model
    from fsg.sampling.generate import iter_samples

    path = run_interpolation(grown, 5, tmp_path / "path.png", seeds=(3, 8))
    assert path["nfe"] == 1 and path["result"].shape == (5, 1, 16, 16)
    for seed, end in ((3, 0), (8, -1)):
        plain = torch.cat([b for _, b, _ in iter_samples(load_model(grown), 1, seed=seed, batch_size=1)])
        assert torch.allclose(path["result"][end], plain[0], atol=1e-5)
    _write_digits(tmp_path / "full", 16, n=2)
    inv = run_pagoda_edit("invert", grown, tmp_path / "full", tmp_path / "inv", warn=lambda m: None)
    z = np.load(tmp_path / "inv" / "latents.npy")
    np.save(tmp_path / "a.npy", z[:1]), np.save(tmp_path / "b.npy", z[1:])
    between = run_interpolation(grown, 3, tmp_path / "ab.png", latents=(tmp_path / "a.npy", tmp_path / "b.npy"))
    assert torch.allclose(between["result"][0], inv["result"][0], atol=1e-4)
    assert torch.allclose(between["result"][-1], inv["result"][1], atol=1e-4)
