"""The public Python API (`import fsg`): what it exports, its runnable docstrings, the README's example, and that it
gives what the command line gives."""

import doctest
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import fsg
from fsg.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
README_START, README_END = "<!-- api-example -->", "<!-- /api-example -->"


@pytest.fixture(scope="module")
def cd():
    return fsg.load("cd_digits")


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    """A tiny class-conditional consistency model (3 classes, 8x8 gray) saved as a file."""
    from fsg.io.checkpoint import save_model
    from tests.helpers import tiny_model

    m = tiny_model(shape=(1, 8, 8), precond="consistency", sampler="consistency", steps=1, num_classes=3)
    path = tmp_path_factory.mktemp("classes") / "model.safetensors"
    save_model(path, m.denoiser.net.state_dict(), m.meta)
    return path


def test_the_public_names():
    assert set(fsg.__all__) == {"Model", "__version__", "list_models", "list_recipes", "load", "to_pil", "train"}
    for name in fsg.__all__:
        assert getattr(fsg, name) is not None and name in dir(fsg)
    assert set(fsg.list_models()) == {"cd_digits", "edm_digits", "edm_toy"}
    assert "tiny/edm_toy" in fsg.list_recipes()
    with pytest.raises(AttributeError):
        fsg.no_such_name


def test_the_docstring_examples_run():
    """The `>>>` examples of fsg.app.api (load, sample, denoise, edit, interpolate, train) give what they show."""
    import fsg.app.api

    result = doctest.testmod(fsg.app.api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 20 and result.failed == 0


def test_the_readme_example_runs(tmp_path, monkeypatch):
    """The README's API section, between the markers, runs as written from an empty folder."""
    text = (ROOT / "README.md").read_text()
    if README_START not in text or README_END not in text:
        pytest.skip(f"README.md has no {README_START} ... {README_END} section yet")
    section = text.split(README_START, 1)[1].split(README_END, 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the API section holds no ```python block"
    monkeypatch.chdir(tmp_path)
    exec(compile("\n".join(blocks), "README.md (api-example)", "exec"), {"__name__": "readme"})


def test_load_by_name_from_any_folder_and_the_same_pixels_as_fsg_sample(tmp_path, monkeypatch, capsys, cd):
    from fsg.cli import main
    from fsg.io.images import to_uint8

    monkeypatch.chdir(tmp_path)
    x = fsg.load("cd_digits").sample(5, steps=2, seed=3, batch_size=2)
    assert x.shape == (5, 1, 16, 16) and x.dtype == torch.float32 and x.abs().max() <= 1
    with pytest.raises(SystemExit) as info:
        main(["sample", "--seed", "3", "-n", "5", "--steps", "2", "--out", "s.npz", "--device", "cpu"])
    assert info.value.code == 0
    assert np.array_equal(np.load(tmp_path / "s.npz")["arr_0"], to_uint8(x))
    with pytest.raises(UserError, match="did you mean cd_digits"):
        fsg.load("cd_digit")


def test_a_generator_stands_for_the_seed(cd):
    a = cd.sample(3, steps=1, generator=torch.Generator().manual_seed(7))
    drawn = cd.seed
    b = cd.sample(3, steps=1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and cd.seed == drawn                              # an equally seeded generator
    assert torch.allclose(cd.sample(3, steps=1, seed=drawn), a, atol=1e-6)     # model.seed reproduces it
    g = torch.Generator().manual_seed(7)
    first, second = cd.sample(3, steps=1, generator=g), cd.sample(3, steps=1, generator=g)
    assert torch.equal(first, a) and not torch.allclose(first, second)        # one generator advances
    expected = int(torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(7)))
    assert drawn == expected                                                   # its next draw is the run seed
    with pytest.raises(UserError, match="not both"):
        cd.sample(2, seed=1, generator=torch.Generator())


def test_labels_per_sample_and_refused_where_they_do_not_apply(cd, classes):
    model = fsg.load(classes)
    assert model.num_classes == 3
    x = model.sample(4, labels=[0, 1, 2, 0], seed=1)
    same = model.sample(1, labels=1, seed=1, batch_size=1)
    assert torch.allclose(fsg.load(classes).sample(2, labels=[0, 1], seed=1)[1:], x[1:2], atol=1e-6)
    assert x.shape == (4, 1, 8, 8) and same.shape == (1, 1, 8, 8)
    for bad, needle in (([0, 3, 1, 1], "one class in"), ([0, 1], "2 labels for 4 samples"), (5, "classes 0 to 2")):
        with pytest.raises(UserError, match=needle):
            model.sample(4, labels=bad)
    with pytest.raises(UserError, match="unconditional"):
        cd.sample(2, labels=1)


def test_denoise_is_the_identity_at_the_consistency_boundary_and_passes_gradients(cd):
    """A consistency model's D(x, t_min) = x exactly (c_skip = 1, c_out = 0 at the boundary: Eq. 7 of Song et al.
    2023); away from it the estimate moves, and gradients reach x when x asks for them."""
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    assert torch.allclose(cd.denoise(x, cd.sigma_min), x, atol=1e-5)
    assert not torch.allclose(cd(x, 2.0), x, atol=1e-2)                           # __call__ is denoise
    assert torch.allclose(cd.denoise(x, torch.full((2,), 2.0)), cd.denoise(x, 2.0), atol=1e-6)  # sigma per sample
    leaf = x.clone().requires_grad_(True)
    cd.denoise(leaf, 1.0).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
    assert cd.sigma_max == pytest.approx(80.0) and cd.sigma_min == pytest.approx(0.002)


def test_edit_keeps_what_each_task_keeps(cd):
    y = cd.sample(3, steps=1, seed=5)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    out = cd.edit("inpaint", y.flip(-1), mask=mask, steps=2)
    assert torch.equal(out * (1 - mask), y.flip(-1) * (1 - mask)) and cd.nfe == 2     # known pixels exactly
    noisy = cd.edit("denoise", y, sigma=0.5, add_noise=True)
    assert noisy.shape == y.shape and cd.nfe == 1
    stroke = cd.edit("stroke", y, t_start=1.0, steps=2)
    assert stroke.shape == y.shape and cd.nfe == 2
    for task, kw, needle in (("inpaint", {}, "needs mask"), ("colorize", {}, "RGB"), ("invert", {}, "unknown editing"),
                             ("stroke", {"t_start": 1000.0}, "--t-start must lie in")):
        with pytest.raises(UserError, match=needle):
            cd.edit(task, y, **kw)


def test_colorize_keeps_the_luma(tmp_path):
    from fsg.io.checkpoint import save_model
    from tests.helpers import tiny_model

    m = tiny_model(shape=(3, 8, 8), precond="consistency", sampler="consistency", steps=1)
    save_model(tmp_path / "rgb.safetensors", m.denoiser.net.state_dict(), m.meta)
    model = fsg.load(tmp_path / "rgb.safetensors")
    gray = torch.rand(2, 1, 8, 8) * 1.6 - 0.8
    out = model.edit("colorize", gray, steps=1)
    luma = (out * torch.tensor([0.2989, 0.5870, 0.1140]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    assert out.shape == (2, 3, 8, 8) and torch.allclose(luma, gray, atol=1e-4)        # 0.2989 + 0.587 + 0.114 = 1


def test_interpolate_ends_are_the_seeds_samples_and_latents_are_taken(cd):
    path = cd.interpolate(4, seeds=(2, 9))
    assert torch.allclose(path[-1], cd.sample(1, steps=1, seed=9)[0], atol=1e-5)
    za, zb = torch.randn(1, 16, 16), torch.randn(1, 16, 16)
    given = cd.interpolate(3, latents=(za, zb))
    assert given.shape == (3, 1, 16, 16) and cd.nfe == 1
    with pytest.raises(UserError, match="at least 2 points"):
        cd.interpolate(1)


def test_sample_progress_goes_to_stderr_when_asked(cd, capsys):
    cd.sample(4, steps=1, batch_size=2)
    assert "ETA" not in capsys.readouterr().err
    cd.sample(4, steps=1, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "sample 4/4 (100%)" in err and "ETA" in err


def test_to_pil_rounds_as_fsg_sample_writes():
    images = fsg.to_pil(torch.tensor([-1.0, 0.0, 1.0, 2.0]).view(1, 1, 1, 4))
    assert np.asarray(images[0]).tolist() == [[0, 128, 255, 255]]         # round(127.5 (x + 1)), clipped
    rgb = fsg.to_pil(torch.zeros(3, 2, 2))                                 # one image (C, H, W)
    assert rgb[0].mode == "RGB" and rgb[0].size == (2, 2)
    with pytest.raises(UserError, match="gray or RGB"):
        fsg.to_pil(torch.zeros(5, 2))


def test_train_takes_overrides_as_a_mapping(tmp_path):
    model = fsg.train("tiny/edm_toy", run_dir=tmp_path / "toy", max_steps=2, overrides={"sample.steps": 4},
                      device="cpu", progress=False)
    assert isinstance(model, fsg.Model) and (tmp_path / "toy" / "model.safetensors").is_file()
    assert model.meta["sample"]["steps"] == 4
    model.sample(3)
    assert model.nfe == 7                                                 # Heun on 4 points: 2 * 4 - 1
