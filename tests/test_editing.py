"""Zero-shot editing (Algorithm 4 of Song et al. 2023) and interpolation: the kept parts are the input's,
the loop matches a hand-unrolled one on a Gaussian, the endpoints of a path are plain samples, and bad
inputs end in one line and exit code 2."""

import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fsg.core.edm import EDMProcess
from fsg.io.checkpoint import save_model
from fsg.sampling.editing import LUMA, Colorize, Inpaint, SuperRes, edit_batches, orthogonal_basis, sample_edit, sdedit_times
from fsg.sampling.noise import SlerpNoise, slerp
from fsg.sampling.generate import plan_sampler
from fsg.sampling.noise import SampleNoise
from fsg.sampling.samplers import CountingDenoiser, sample_consistency
from tests.gaussian import ExactConsistency
from tests.helpers import collect, tiny_model

T_MIN = 0.002
EDM = EDMProcess(sigma_min=T_MIN)


def images(n, c=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, size, size, generator=g, dtype=torch.float64) * 2 - 1)


def edit(model, y, replace, steps=3, seed=0):
    times = plan_sampler(model, "consistency", steps=steps).times
    run = lambda d, yb, z: sample_edit(d, yb, times, z, EDM, replace)  # noqa: E731
    return edit_batches(model, y, run, seed, batch_size=len(y), device="cpu")


# ---------------------------------------------------------------------------------------------- replacements

@pytest.mark.parametrize("v", [LUMA, [1.0] * 4, [1.0] * 16])
def test_orthogonal_basis_is_orthogonal_with_the_given_first_axis(v):
    v = torch.tensor(v, dtype=torch.float64)
    q = orthogonal_basis(v)
    assert torch.allclose(q.T @ q, torch.eye(len(v), dtype=torch.float64), atol=1e-12)
    assert torch.allclose(q[:, 0], v / math.sqrt(float((v * v).sum())), atol=1e-12)


def test_colorize_keeps_the_luma_and_takes_the_chroma():
    y, x = images(2, seed=1), images(2, seed=2)
    out = Colorize()(y, x)
    w = torch.tensor(LUMA, dtype=torch.float64)
    luma = lambda im: torch.einsum("nchw,c->nhw", im, w)  # noqa: E731
    assert torch.allclose(luma(out), luma(y), atol=1e-12)
    # the chroma (the part orthogonal to the luma direction) is x's: out - x lies along the luma axis
    along = (out - x).permute(0, 2, 3, 1)                 # (N, H, W, 3)
    assert torch.allclose(torch.linalg.cross(along, w.expand_as(along), dim=-1), torch.zeros_like(along), atol=1e-12)


def test_superres_keeps_the_patch_means_and_the_detail_of_x():
    y, x = images(2, c=1, size=8, seed=3), images(2, c=1, size=8, seed=4)
    out = SuperRes(4)(y, x)
    assert torch.allclose(F.avg_pool2d(out, 4), F.avg_pool2d(y, 4), atol=1e-12)
    # the detail within each patch is x's: out - x is constant on every 4x4 patch
    diff = out - x
    assert torch.allclose(diff, F.avg_pool2d(diff, 4).repeat_interleave(4, -2).repeat_interleave(4, -1), atol=1e-12)
    assert torch.allclose(SuperRes(4).observation(y), F.avg_pool2d(y, 4).repeat_interleave(4, -2).repeat_interleave(4, -1), atol=1e-12)


def test_inpaint_takes_the_hole_from_x_and_the_rest_from_y():
    y, x = images(1, seed=5), images(1, seed=6)
    omega = torch.zeros(1, 1, 8, 8)
    omega[..., 2:5, 3:7] = 1
    out = Inpaint(omega)(y, x)
    hole = omega.bool().expand_as(y)
    assert torch.equal(out[hole], x[hole]) and torch.equal(out[~hole], y[~hole])


# ------------------------------------------------------------------------------------------------ Algorithm 4

def test_algorithm_4_unrolled_by_hand_on_a_gaussian():
    """Two steps of inpainting with the exact consistency function of N(0, s^2 I) data, f(x, t) = c(t) x."""
    s, (t1, t2) = 0.5, (80.0, 1.5)
    c = lambda t: math.sqrt((s**2 + T_MIN**2) / (s**2 + t**2))  # noqa: E731
    f = ExactConsistency(s, T_MIN)
    y = images(2, c=1, seed=7)
    omega = torch.zeros(1, 1, 8, 8)
    omega[..., :4, :] = 1
    with torch.no_grad():
        out = sample_edit(f, y, torch.tensor([t1, t2]), SampleNoise(9, [0, 1]), EDM, Inpaint(omega))
    z = SampleNoise(9, [0, 1])
    z1, z2 = z.randn(y.shape, torch.float64), z.randn(y.shape, torch.float64)
    hole = omega.bool()
    known = torch.where(hole, 0.0, y)                                   # line 2: y's hole zeroed
    x = torch.where(hole, c(t1) * (known + t1 * z1), y)                 # lines 3-5
    x = torch.where(hole, c(t2) * (x + math.sqrt(t2**2 - T_MIN**2) * z2), y)   # lines 7-9
    assert torch.allclose(out, x, atol=1e-12)


def test_stroke_guidance_is_consistency_sampling_from_the_noised_painting():
    model = tiny_model(shape=(1, 8, 8), precond="consistency")
    y = images(2, c=1, seed=8)
    times = sdedit_times(2.0, 2, T_MIN)
    d = CountingDenoiser(model.denoiser, clip=True)
    with torch.no_grad():
        out = sample_edit(d, y, times, SampleNoise(1, [0, 1]), EDM, None)
        z = SampleNoise(1, [0, 1])
        ref = sample_consistency(d, y + 2.0 * z.randn(y.shape, torch.float64), times, z, EDM)
    assert torch.equal(out, ref)


def test_sdedit_times_start_at_t_start_and_follow_the_karras_grid():
    times = sdedit_times(2.0, 3, T_MIN, rho=7.0)
    ramp = torch.tensor([0, 1 / 3, 2 / 3], dtype=torch.float64)
    expected = (2.0 ** (1 / 7) + ramp * (T_MIN ** (1 / 7) - 2.0 ** (1 / 7))) ** 7
    assert torch.allclose(times, expected, rtol=1e-12) and float(times[0]) == pytest.approx(2.0)


def test_inpainting_keeps_every_known_pixel_exactly():
    model = tiny_model(shape=(3, 8, 8), precond="consistency")
    y = images(3, seed=10).float()
    omega = (torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    out, nfe = edit(model, y, Inpaint(omega), steps=3)
    keep = ~omega.bool().expand_as(y)
    assert nfe == 3
    assert torch.equal(out[keep], y[keep])
    assert not torch.allclose(out[~keep], y[~keep])


def test_colorization_keeps_the_input_luma():
    model = tiny_model(shape=(3, 8, 8), precond="consistency")
    y = images(3, seed=11).float()
    out, _ = edit(model, y, Colorize(), steps=2)
    w = torch.tensor(LUMA)
    assert torch.allclose(torch.einsum("nchw,c->nhw", out, w), torch.einsum("nchw,c->nhw", y, w), atol=1e-5)


def test_superres_keeps_the_input_patch_means():
    model = tiny_model(shape=(1, 8, 8), precond="consistency")
    y = images(3, c=1, seed=12).float()
    out, _ = edit(model, y, SuperRes(2), steps=2)
    assert torch.allclose(F.avg_pool2d(out, 2), F.avg_pool2d(y, 2), atol=1e-5)


def test_editing_contract_seed_determinism_and_batch_independence():
    model = tiny_model(shape=(1, 8, 8), precond="consistency")
    y = images(5, c=1, seed=13).float()
    times = plan_sampler(model, "consistency", steps=2).times
    run = lambda d, yb, z: sample_edit(d, yb, times, z, EDM, SuperRes(2))  # noqa: E731
    a, nfe = edit_batches(model, y, run, seed=3, batch_size=5, device="cpu")
    b, _ = edit_batches(model, y, run, seed=3, batch_size=2, device="cpu")
    c, _ = edit_batches(model, y, run, seed=4, batch_size=5, device="cpu")
    d, _ = edit_batches(model, y[:2], run, seed=3, batch_size=2, device="cpu")
    assert nfe == 2 and a.shape == y.shape and torch.isfinite(a).all()
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a[:2], d, atol=1e-5)
    assert not torch.allclose(a, c)


# ----------------------------------------------------------------------------------------------- interpolation

def test_slerp_endpoints_and_midpoint():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    path = slerp(e1, e2, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(path[0], e1.double()) and torch.equal(path[2], e2.double())
    assert torch.allclose(path[1], torch.tensor([1.0, 1.0], dtype=torch.float64) / math.sqrt(2))


@pytest.mark.parametrize("steps", [1, 2])
def test_interpolation_endpoints_are_the_plain_samples_of_the_two_seeds(steps):
    model = tiny_model(shape=(1, 8, 8), precond="consistency")
    plan = plan_sampler(model, "consistency", steps=steps)
    a, b = SampleNoise(5, [0]), SampleNoise(6, [0])
    z0, z1 = a.randn((1, 1, 8, 8), torch.float64)[0], b.randn((1, 1, 8, 8), torch.float64)[0]
    alpha = torch.linspace(0, 1, 4, dtype=torch.float64)
    d = CountingDenoiser(model.denoiser, clip=True)
    with torch.no_grad():
        path = plan.run(d, float(plan.times[0]) * slerp(z0, z1, alpha), SlerpNoise(a, b, alpha)).float()
    assert d.nfe == steps
    plain_a, _ = collect(model, 1, seed=5, steps=steps, sampler="consistency")
    plain_b, _ = collect(model, 1, seed=6, steps=steps, sampler="consistency")
    assert torch.allclose(path[0], plain_a[0], atol=1e-5) and torch.allclose(path[-1], plain_b[0], atol=1e-5)
    assert not torch.allclose(path[1], path[0], atol=1e-3)


# ---------------------------------------------------------------------------------------------------- the CLI

@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny 1-channel 8x8 consistency model on disk."""
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    m = tiny_model(shape=(1, 8, 8), precond="consistency")
    save_model(path, m.denoiser.net.state_dict(), m.meta)
    return path


def write_png(path, pixels):
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)
    return path


def digit_pngs(folder, n=2, size=8):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(folder / f"img{i}.png", rng.integers(0, 256, (size, size)))
    return folder


def run_cli(monkeypatch, capsys, *args):
    """`fsg ARGS` through the console entry point: (exit code, stdout, stderr)."""
    from fsg.cli import main

    monkeypatch.setattr(sys, "argv", ["fsg", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code or 0, out, err


def test_cli_inpaint_keeps_the_known_pixels_of_the_files(tmp_path, monkeypatch, capsys, model_file):
    inputs = digit_pngs(tmp_path / "in")
    hole = np.zeros((8, 8))
    hole[2:6, 1:5] = 255
    mask = write_png(tmp_path / "mask.png", hole)
    code, out, err = run_cli(monkeypatch, capsys, "edit", "inpaint", "--model", model_file, "--input", inputs,
                             "--mask", mask, "--steps", "2", "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    assert "NFE 2" in out
    for i in range(2):
        before = np.array(Image.open(inputs / f"img{i}.png"))
        after = np.array(Image.open(tmp_path / "out" / f"img{i}.png"))
        assert np.array_equal(after[hole == 0], before[hole == 0])
    grid = Image.open(tmp_path / "out" / "comparison.png")
    assert grid.size == ((2 * 9 + 1) * 8, (3 * 9 + 1) * 8)   # 2 inputs x 3 rows of 8x8 cells, 1 px padding, x8


@pytest.mark.parametrize("mask_pixels,message", [
    (np.full((6, 8), 255), "mask is 8x6 but the input images are 8x8"),
    (np.full((8, 8), 128), "not binary"),
])
def test_cli_bad_masks_exit_2_with_one_line(tmp_path, monkeypatch, capsys, model_file, mask_pixels, message):
    inputs = digit_pngs(tmp_path / "in", n=1)
    mask = write_png(tmp_path / "mask.png", mask_pixels)
    code, _, err = run_cli(monkeypatch, capsys, "edit", "inpaint", "--model", model_file, "--input", inputs,
                           "--mask", mask, "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and message in err and err.count("\n") == 1


def test_cli_unreadable_image_and_rgb_only_colorize_exit_2(tmp_path, monkeypatch, capsys, model_file):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    code, _, err = run_cli(monkeypatch, capsys, "edit", "superres", "--model", model_file, "--input", tmp_path / "in",
                           "--factor", "2", "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "cannot decode" in err and err.count("\n") == 1
    inputs = digit_pngs(tmp_path / "ok", n=1)
    code, _, err = run_cli(monkeypatch, capsys, "edit", "colorize", "--model", model_file, "--input", inputs,
                           "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "RGB (3-channel) model" in err
    code, _, err = run_cli(monkeypatch, capsys, "edit", "superres", "--model", model_file, "--input", inputs,
                           "--factor", "3", "--out", tmp_path / "out", "--device", "cpu")
    assert code == 2 and "divide the model's resolution 8" in err


def test_cli_superres_from_a_low_res_file_and_resize_warning(tmp_path, monkeypatch, capsys, model_file):
    low = np.array([[0, 255, 64, 128], [255, 0, 32, 200], [10, 20, 30, 40], [250, 240, 230, 220]])
    write_png(digit_pngs(tmp_path / "in", n=1, size=16) / "low.png", low)    # a 16x16 image and a 4x4 one
    code, out, err = run_cli(monkeypatch, capsys, "edit", "superres", "--model", model_file, "--input", tmp_path / "in",
                             "--factor", "2", "--steps", "2", "--out", tmp_path / "out", "--device", "cpu")
    assert code == 0, err
    assert "img0.png: 16x16 resized to the model's 8x8" in err and "low.png" not in err
    assert Image.open(tmp_path / "out" / "low.png").size == (8, 8)


def test_cli_interpolate_writes_the_path(tmp_path, monkeypatch, capsys, model_file):
    np.save(tmp_path / "a.npy", np.random.default_rng(0).standard_normal((1, 8, 8)))
    np.save(tmp_path / "b.npy", np.random.default_rng(1).standard_normal((1, 8, 8)))
    code, out, err = run_cli(monkeypatch, capsys, "interpolate", "--model", model_file, "-n", "5",
                             "--latents", f"{tmp_path / 'a.npy'},{tmp_path / 'b.npy'}", "--out", tmp_path / "path.png",
                             "--device", "cpu")
    assert code == 0, err
    assert "5 points, NFE 1" in out and (tmp_path / "path.png").is_file()
    np.save(tmp_path / "c.npy", np.zeros((3, 8, 8)))
    code, _, err = run_cli(monkeypatch, capsys, "interpolate", "--model", model_file,
                           "--latents", f"{tmp_path / 'a.npy'},{tmp_path / 'c.npy'}", "--out", tmp_path / "p.png",
                           "--device", "cpu")
    assert code == 2 and "shape (1, 8, 8)" in err


def test_an_earlier_edits_comparison_grid_is_not_an_input(tmp_path):
    from fsg.app.edit import input_files

    for name in ("a.png", "comparison.png", "sub/comparison.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8)).save(tmp_path / name)
    assert [n for _, n in input_files(tmp_path)] == ["a.png", "sub/comparison.png"]
    assert [n for _, n in input_files(tmp_path / "comparison.png")] == ["comparison.png"]   # named: taken
