"""`fsg export --diffusers`: diffusers' ConsistencyModelPipeline, loaded from the exported folder, reproduces an fsg
consistency model on the ADM network: its denoiser at any sigma, and its 1- and 2-step samples for the same noise.

The expected values are fsg's own denoiser and sampler on the same weights (the identity under test: two
implementations of one function), with diffusers drawing from the per-sample generators fsg seeds
(`fsg.sampling.noise.sample_seed`), so the prior and the re-noising of Algorithm 1 of Song et al. 2023 use the
same numbers on both sides.
"""

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import fsg
from fsg.core.edm import EDMProcess
from fsg.errors import UserError
from fsg.io.checkpoint import save_model
from fsg.io.config import to_dict
from fsg.models.diffusers_export import export_refusal
from fsg.models.meta import build_denoiser
from fsg.nets.adm import ADMConfig
from fsg.sampling.noise import sample_seed

TOL = 1e-5          # float32 round-off of the same arithmetic
TIME_TOL = 2e-4     # when each side feeds the network its own time: fsg rounds 1000 (ln(sigma) / 4) in float32,
                    # diffusers 250 ln(sigma) in float64 to float32, which can differ by one ulp (1.2e-4 at |t| ~ 1500,
                    # moving the sinusoidal embedding by as much; measured effect on F: 6e-5 at sigma = 0.002)


def adm_meta(shape=(3, 16, 16), num_classes=0, precond="consistency", train_grid=40, process=None, **net) -> dict:
    cfg = ADMConfig(**{"model_channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (8,),
                       "num_head_channels": 16, **net})
    return {"format": 1, "process": process or to_dict(EDMProcess()), "precond": precond, "network": to_dict(cfg),
            "shape": list(shape), "out_channels": shape[0], "cond_channels": 0, "num_classes": num_classes,
            "method": "cd", "step": 0, "sample": {"sampler": "consistency", "steps": 1}, "train_grid": train_grid}


def write_model(folder, meta, seed=0):
    """A randomly initialised model file (every tensor drawn, so the zero-initialised output layers do not make the
    network's output trivially zero)."""
    torch.manual_seed(seed)
    den = build_denoiser(meta)
    with torch.no_grad():
        for p in den.net.parameters():
            p.normal_(0, 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder / "model.safetensors", den.net.state_dict(), meta)
    return folder


VARIANTS = {
    # RGB 16x16, flash-attn qkv order, resblock up/down, attention on the last level, unconditional
    "rgb_resblock_updown": {},
    # gray 8x8, guided-diffusion's legacy qkv order, conv resampling, attention on the first level, 3 classes, ECT's
    # preconditioning, the 18-point grid of the bundled digits models, sigma_data 0.6
    "gray_legacy_conv_labels": {"shape": (1, 8, 8), "num_classes": 3, "precond": "ect", "train_grid": 18,
                                "process": to_dict(EDMProcess(sigma_data=0.6)), "new_attention_order": False,
                                "resblock_updown": False, "use_scale_shift_norm": False},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory):
    """(fsg model, diffusers pipeline loaded from the exported folder, the folder)."""
    from diffusers import ConsistencyModelPipeline

    from fsg.app.export import export_diffusers

    root = tmp_path_factory.mktemp(request.param)
    src = write_model(root / "model", adm_meta(**VARIANTS[request.param]))
    export_diffusers(src, root / "diffusers")
    pipe = ConsistencyModelPipeline.from_pretrained(root / "diffusers")
    pipe.set_progress_bar_config(disable=True)
    return fsg.load(src), pipe, root / "diffusers"


def labels_for(model, n):
    return (torch.arange(n) % model.num_classes).tolist() if model.num_classes else None


def diffusers_samples(pipe, n, seed, labels, **steps):
    """The pipeline's images, back in [-1, 1], with sample i drawn from fsg's generator of (seed, i)."""
    gens = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in range(n)]
    images = pipe(batch_size=n, generator=gens, class_labels=labels, output_type="pt", **steps).images   # (x + 1) / 2
    return images * 2 - 1


def test_denoiser_matches_at_every_noise_level(exported):
    """UNet2DModel is fsg's ADM network at the same input and time, and c_skip x + c_out UNet(c_in x, 250 ln sigma)
    with the scheduler's scalings and time is fsg's D(x, sigma)."""
    model, pipe, _ = exported
    gen = torch.Generator().manual_seed(0)
    n = 3
    z = torch.randn(n, *model.shape, generator=gen)
    labels = labels_for(model, n)
    labels = None if labels is None else torch.tensor(labels)
    sched = pipe.scheduler
    for sigma in (0.002, 0.01, 0.3, 2.0, 80.0):
        x = sigma * z
        s = torch.tensor(sigma, dtype=torch.float32)
        c_skip, c_out = sched.get_scalings_for_boundary_condition(s)
        c_in = 1 / (s**2 + sched.config.sigma_data**2).sqrt()
        with torch.no_grad():
            raw = model.loaded.denoiser(x, s.expand(n), labels=labels, raw=True)   # fsg's F(c_in x, c_noise = ln(sigma) / 4)
            same_time = pipe.unet(c_in * x, 1000 * (s.log() / 4), class_labels=labels).sample
            F = pipe.unet(c_in * x, torch.tensor(sched.sigma_to_t(sigma)), class_labels=labels).sample
        assert raw.abs().mean() > 0.1                                 # random weights: the network's output is not ~0
        torch.testing.assert_close(same_time, raw, atol=TOL, rtol=0)
        torch.testing.assert_close(c_skip * x + c_out * F, model.denoise(x, sigma, labels=labels), atol=TIME_TOL, rtol=0)


@pytest.mark.parametrize("steps", [1, 2])
def test_pipeline_reproduces_fsg_samples(exported, steps):
    """num_inference_steps=K on the recorded grid is fsg's --steps K when both pick the same grid indices (K = 1
    always; K = 2 on the 40-point grid: index 20 both); on the 18-point grid, diffusers' 18 // 2 = 9 is not fsg's
    round(17 / 2) = 8, and `timesteps=` gives fsg's indices exactly."""
    model, pipe, _ = exported
    n, seed = 4, 7
    labels = labels_for(model, n)
    grid = pipe.scheduler.config.num_train_timesteps
    idx = [round(i * (grid - 1) / steps) for i in range(steps)]        # fsg's --steps K: evenly spaced grid indices
    by_count = all(i * (grid // steps) == j for i, j in enumerate(idx))
    ours = model.sample(n, steps=steps, seed=seed, labels=labels)
    theirs = diffusers_samples(pipe, n, seed, labels, **({"num_inference_steps": steps} if by_count else
                                                        {"num_inference_steps": None, "timesteps": idx[::-1]}))
    assert model.nfe == steps
    assert (ours.abs() < 0.999).float().mean() > 0.5          # mostly not clamped: the comparison sees the network
    torch.testing.assert_close(theirs, ours, atol=TIME_TOL, rtol=0)


def test_explicit_timesteps_match_fsg_timesteps(exported):
    """fsg's --timesteps 0,a,N-1 (openai's --ts) is diffusers' timesteps=[a, 0]: calls at indices 0 and a."""
    model, pipe, _ = exported
    n, seed = 2, 3
    labels = labels_for(model, n)
    last = pipe.scheduler.config.num_train_timesteps - 1
    ours = model.sample(n, timesteps=[0, 5, last], seed=seed, labels=labels)
    theirs = diffusers_samples(pipe, n, seed, labels, num_inference_steps=None, timesteps=[5, 0])
    torch.testing.assert_close(theirs, ours, atol=TIME_TOL, rtol=0)


def test_exported_folder(exported):
    _, pipe, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ["fsg_export.json", "model_index.json", "scheduler", "unet"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]      # no temporary folder left
    assert json.loads((folder / "fsg_export.json").read_text())["method"] == "cd"
    assert type(pipe.scheduler).__name__ == "CMStochasticIterativeScheduler"
    assert pipe.scheduler.config.clip_denoised


def run_cli(capsys, *args):
    """`fsg ARGS` through the console entry point: (exit code, stdout, stderr)."""
    from fsg.cli import main

    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code or 0, out, err


def test_cli_exports_into_an_empty_folder_and_refuses_a_full_one(tmp_path, capsys):
    src = write_model(tmp_path / "model", adm_meta(shape=(3, 8, 8)))
    (tmp_path / "out").mkdir()
    code, out, err = run_cli(capsys, "export", src, "--diffusers", tmp_path / "out", "--json", "-")
    assert code == 0, err
    assert "UNet2DModel" in err and (tmp_path / "out" / "unet" / "config.json").is_file()
    result = json.loads(out)
    assert result["out"] == str(tmp_path / "out") and result["scheduler"]["num_train_timesteps"] == 40
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")}
    code, out, err = run_cli(capsys, "export", src, "--diffusers", tmp_path / "out")
    assert code == 2 and err.startswith("fsg: error: --diffusers") and "not empty" in err and len(err.splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").rglob("*")} == before


def test_cli_refuses_the_bundled_digits_model(tmp_path, capsys):
    """cd_digits is a consistency model on fsg's small DDPM++-style 'unet', not ADM: refused, nothing written."""
    code, _, err = run_cli(capsys, "export", "cd_digits", "--diffusers", tmp_path / "out")
    assert code == 2 and "network.arch adm" in err and "'unet'" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("change, reason", [
    ({"precond": "diffusion"}, "preconditioning is 'diffusion'"),
    ({"process": {"name": "vp"}}, "process is 'vp'"),
    ({"time_scale": 500.0}, "network.time_scale 500"),
    ({"channel_mult": (2, 2)}, "network.channel_mult starts with 2"),
    ({"null_label": True}, "network.null_label"),
    ({"double_norm": True}, "network.double_norm"),
    ({"two_times": True}, "network.two_times"),
    ({"shape": (3, 8, 16)}, "square images"),
])
def test_refusals_name_the_reason(change, reason):
    meta = adm_meta(**change)
    assert reason in export_refusal(meta)
    assert export_refusal(adm_meta()) is None
    for key, value in (("cond_channels", 3), ("out_channels", 6)):
        assert export_refusal({**adm_meta(), key: value}) is not None


def test_export_refuses_before_writing(tmp_path):
    from fsg.app.export import export_diffusers

    src = write_model(tmp_path / "teacher", adm_meta(precond="diffusion"))
    with pytest.raises(UserError, match="consistency model"):
        export_diffusers(src, tmp_path / "out")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(UserError, match="a file of that name exists"):
        export_diffusers(src, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "teacher"]
