"""EDM's non-leaking augmentation pipe (fsg.data.augment), its network conditioning and its training wiring.

Expected values come from identities (p = 0, flips, an orthogonal filter, 90-degree rotations, integer
shifts) and from hand-derived probabilities, never from the pipe's own output.
"""

import math
import subprocess
import sys

import pytest
import torch

from fsg.core.edm import EDMProcess
from fsg.data.augment import LABELS, SYM6, AugmentPipe, rotate_matrix, scale_matrix, translate_matrix, warp
from fsg.errors import UserError
from fsg.models.denoiser import Denoiser
from fsg.nets.edm import DhariwalUNetConfig, SongUNetConfig
from fsg.nets.unet import UNetConfig

ONLY = dict(xflip=0, yflip=0, scale=0, rotate_frac=0, aniso=0, translate_frac=0)   # every op off


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth(n: int = 2, size: int = 16) -> torch.Tensor:
    """Periodic, band-limited images (n, 2, size, size) of amplitude <= 2."""
    yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    w = 2 * math.pi / size
    img = torch.stack([torch.sin(w * xx) + torch.cos(w * yy), torch.cos(w * (xx + yy))])
    return img[None].repeat(n, 1, 1, 1)


def binomial_ok(hits: int, n: int, p: float) -> bool:
    """|hits / n - p| within 4.5 standard deviations of a binomial proportion."""
    return abs(hits / n - p) <= 4.5 * math.sqrt(p * (1 - p) / n)


# ------------------------------------------------------------------------------------------ resampling

def test_sym6_is_an_orthogonal_low_pass_filter():
    h = torch.tensor(SYM6, dtype=torch.float64)
    assert h.sum().item() == pytest.approx(math.sqrt(2), abs=1e-12)
    assert (h * h).sum().item() == pytest.approx(1.0, abs=1e-10)
    for lag in range(1, 6):   # orthogonal to its even shifts: down(up(x)) = x
        assert (h[:-2 * lag] * h[2 * lag:]).sum().item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("size", [8, 11, 16])
def test_identity_matrix_reproduces_the_image(size):
    x = torch.randn(3, 2, size, size, generator=gen())
    assert torch.allclose(warp(x, torch.eye(3).repeat(3, 1, 1)), x, atol=1e-5)


def test_quarter_turn_is_rot90_up_to_resampling_error():
    # G maps output to input pixels; G = R(pi/2) = [[0, -1], [1, 0]] gives out(x, y) = in(-y, x) in centred
    # coordinates, i.e. out[row y, col x] = in[row x, col -y]: torch.rot90(k=1, dims=(-2, -1)).
    x = smooth()
    out = warp(x, rotate_matrix(torch.full((2,), math.pi / 2)))
    assert (out - torch.rot90(x, 1, dims=(-2, -1))).abs().max() < 0.1
    assert (out - torch.rot90(x, -1, dims=(-2, -1))).abs().max() > 1.0
    half = warp(x, rotate_matrix(torch.full((2,), math.pi)))          # R(pi) = -I: out(p) = in(-p), both axes flipped
    assert (half - x.flip(-1, -2)).abs().max() < 0.1


def test_integer_translation_is_roll_in_the_interior():
    # G = translate(-tx, -ty): out(p) = in(p - t), i.e. out[y, x] = in[y - ty, x - tx] = torch.roll(shifts=(ty, tx)).
    x = smooth()
    tx, ty = 2.0, -1.0
    out = warp(x, translate_matrix(torch.full((2,), -tx), torch.full((2,), -ty)))
    rolled = torch.roll(x, shifts=(int(ty), int(tx)), dims=(-2, -1))
    assert torch.allclose(out[..., 3:-3, 3:-3], rolled[..., 3:-3, 3:-3], atol=1e-5)


# ------------------------------------------------------------------------------------------ the pipe

def test_p_zero_is_the_identity_with_zero_labels():
    x = torch.randn(16, 3, 8, 8, generator=gen())
    y, labels = AugmentPipe(0.0)(x, gen(1))
    assert torch.equal(y, x)
    assert labels.shape == (16, 9) and torch.equal(labels, torch.zeros(16, 9))


def test_any_positive_p_flips_half_the_samples_in_x_exactly():
    # xflip = 1e8: the op fires whenever 1e8 p >= 1, then a fair coin flips; the other ops fire with p = 1e-6.
    n = 2000
    x = torch.randn(n, 1, 6, 6, generator=gen())
    y, labels = AugmentPipe(1e-6)(x, gen(2))
    flipped = labels[:, 0] == 1
    assert torch.equal(labels[:, 1:], torch.zeros(n, 8))
    assert set(labels[:, 0].tolist()) <= {0.0, 1.0}
    assert binomial_ok(int(flipped.sum()), n, 0.5)
    assert torch.equal(y[flipped], x[flipped].flip(-1)) and torch.equal(y[~flipped], x[~flipped])


def test_yflip_fires_with_p_and_flips_with_a_fair_coin():
    # EDM: fired with probability yflip * p, then w ~ {0, 1}: the y-flipped fraction is p / 2.
    n, p = 4000, 0.3
    x = torch.randn(n, 1, 4, 4, generator=gen())
    y, labels = AugmentPipe(p, **{**ONLY, "yflip": 1})(x, gen(3))
    flipped = labels[:, 1] == 1
    assert binomial_ok(int(flipped.sum()), n, p / 2)
    assert torch.equal(y[flipped], x[flipped].flip(-2)) and torch.equal(y[~flipped], x[~flipped])


def test_geometric_ops_fire_independently_with_probability_p():
    # four geometric ops, each firing with p (a fired op has a continuous, hence non-zero, label):
    # P(some geometric label is non-zero) = 1 - (1 - p)^4.
    n, p = 1500, 0.12
    x = torch.randn(n, 1, 8, 8, generator=gen())
    y, labels = AugmentPipe(p)(x, gen(4))
    moved = (labels[:, 2:] != 0).any(dim=1)
    assert binomial_ok(int(moved.sum()), n, 1 - (1 - p) ** 4)
    still = ~moved & (labels[:, 1] == 0)
    flip = labels[:, 0] == 1
    assert torch.equal(y[still & flip], x[still & flip].flip(-1))     # flip-only samples are exact
    assert torch.equal(y[still & ~flip], x[still & ~flip])            # all-zero labels: untouched
    assert (y[moved] - x[moved]).abs().amax(dim=(1, 2, 3)).min() > 0


@pytest.mark.parametrize("op,columns", [("xflip", [0]), ("yflip", [1]), ("scale", [2]), ("rotate_frac", [3, 4]),
                                        ("aniso", [5, 6]), ("translate_frac", [7, 8])])
def test_each_op_writes_only_its_label_columns(op, columns):
    n = 64
    _, labels = AugmentPipe(1.0, **{**ONLY, op: 1})(torch.randn(n, 1, 8, 8, generator=gen()), gen(5))
    others = [i for i in range(len(LABELS)) if i not in columns]
    assert labels.shape == (n, 9)
    assert torch.equal(labels[:, others], torch.zeros(n, len(others)))
    assert (labels[:, columns] != 0).any()
    if op == "rotate_frac":   # (cos w - 1, sin w) lies on the unit circle shifted by (-1, 0)
        assert torch.allclose((labels[:, 3] + 1) ** 2 + labels[:, 4] ** 2, torch.ones(n), atol=1e-5)


def test_images_follow_their_labels():
    x = smooth(n=32)
    size = x.shape[-1]
    y, lab = AugmentPipe(1.0, **{**ONLY, "rotate_frac": 1})(x, gen(6))
    angle = torch.atan2(lab[:, 4], lab[:, 3] + 1)
    assert torch.allclose(y, warp(x, rotate_matrix(angle)), atol=1e-4)
    y, lab = AugmentPipe(1.0, **{**ONLY, "translate_frac": 1})(x, gen(7))
    shift = 0.125 * size                                      # translate_frac_std of the image size
    assert torch.allclose(y, warp(x, translate_matrix(-lab[:, 7] * shift, -lab[:, 8] * shift)), atol=1e-4)
    y, lab = AugmentPipe(1.0, **{**ONLY, "scale": 1})(x, gen(8))
    s = torch.exp2(0.2 * lab[:, 2])                           # scale_std = 0.2 (log2)
    assert torch.allclose(y, warp(x, scale_matrix(1 / s, 1 / s)), atol=1e-4)


def test_the_generator_seed_determines_everything():
    x = torch.randn(32, 3, 8, 8, generator=gen())
    pipe = AugmentPipe(0.5)
    a, la = pipe(x, gen(9))
    b, lb = pipe(x, gen(9))
    c, lc = pipe(x, gen(10))
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert not torch.equal(la, lc)


def test_bf16_autocast_does_not_touch_the_pipe():
    x = torch.randn(16, 3, 8, 8, generator=gen())
    pipe = AugmentPipe(0.5)
    a, la = pipe(x, gen(12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b, lb = pipe(x, gen(12))
    assert b.dtype == torch.float32 and torch.equal(a, b) and torch.equal(la, lb)


# ------------------------------------------------------------------------------------------ networks

@pytest.mark.parametrize("cfg", [
    SongUNetConfig(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(), dropout=0.0, augment_dim=9),
    DhariwalUNetConfig(model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(), dropout=0.0, augment_dim=9),
])
def test_augment_labels_enter_the_noise_embedding(cfg):
    torch.manual_seed(0)
    net = cfg.build((1, 8, 8), 1).eval()
    with torch.no_grad():                       # the output layers (and DhariwalUNet's map_augment) start at zero
        for w in net.parameters():
            w.normal_(0, 0.2)
    model = Denoiser(net, EDMProcess())
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.7)
    with torch.no_grad():
        plain = model(x, t)
        zero = model(x, t, augment_labels=torch.zeros(4, 9))
        moved = model(x, t, augment_labels=torch.randn(4, 9))
    assert torch.equal(zero, plain)             # map_augment has no bias: zero labels = no labels
    assert (moved - plain).abs().max() > 1e-4


def test_a_network_without_augmentation_input_refuses_labels():
    net = UNetConfig(model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=()).build((1, 8, 8), 1)
    with pytest.raises(UserError, match="network.augment_dim"):
        Denoiser(net, EDMProcess())(torch.randn(2, 1, 8, 8), torch.ones(2), augment_labels=torch.zeros(2, 9))


# ------------------------------------------------------------------------------------------ training

TINY = """\
data:
  source: digits
network:
  arch: songunet
  model_channels: 16
  channel_mult: [1, 2]
  num_blocks: 1
  attn_resolutions: []
  dropout: 0.0
  augment_dim: 9
method:
  name: diffusion
process:
  name: edm
train:
  batch_size: 8
  max_steps: 3
  augment: 0.5
  ema: [0.9]
  log_every: 1
  ckpt_every: 3
sample:
  steps: 2
  grid: 4
"""

TINY_UNET = """\
data:
  source: digits
network:
  arch: unet
  model_channels: 16
  channel_mult: [1, 2]
  num_res_blocks: 1
  attn_resolutions: []
method:
  name: diffusion
process:
  name: edm
train:
  batch_size: 8
  max_steps: 3
  augment: 0.5
"""


def fsg(*args) -> subprocess.CompletedProcess:
    import os
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "fsg", *map(str, args)], capture_output=True, text=True, env=env)


def test_train_diffusion_with_augmentation_runs_and_refuses_a_plain_unet(tmp_path):
    (tmp_path / "song.yaml").write_text(TINY)
    (tmp_path / "unet.yaml").write_text(TINY_UNET)
    ok = fsg("train-diffusion", "--recipe", tmp_path / "song.yaml", "--run-dir", tmp_path / "song", "--device", "cpu", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "song" / "model.safetensors").is_file()
    bad = fsg("train-diffusion", "--recipe", tmp_path / "unet.yaml", "--run-dir", tmp_path / "unet", "--device", "cpu", "--no-progress")
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "network.augment_dim" in bad.stderr and "network.arch" in bad.stderr


def build(tmp_path, *overrides: str):
    from fsg.train.recipe import load_recipe
    from fsg.train.setup import build_run

    (tmp_path / "song.yaml").write_text(TINY)
    return build_run(load_recipe(tmp_path / "song.yaml", overrides), "train-diffusion", torch.device("cpu"))


@pytest.mark.parametrize("overrides,needle", [
    (["network.augment_dim=0"], "network.augment_dim: 9"),
    (["data.source=toy:moons"], "image data"),
    (["data.degrade=down2"], "data.degrade"),
    (["train.augment=1.5"], "train.augment"),
])
def test_unusable_augmentation_is_refused_at_construction(tmp_path, overrides, needle):
    with pytest.raises(UserError, match=needle):
        build(tmp_path, *overrides)


class _Spy(torch.nn.Module):
    """A model that records its augmentation labels and predicts zeros (x0 and every DDM head)."""

    def forward(self, x, t, cond=None, labels=None, augment_labels=None, heads=False):
        self.augment_labels = augment_labels
        zero = torch.zeros_like(x)
        return {"x0": zero, "C": zero, "eps": zero} if heads else zero


@pytest.mark.parametrize("method", ["diffusion", "ddm"])
def test_the_loss_regresses_the_augmented_image_and_passes_the_labels(tmp_path, method):
    extra = ["method.name=ddm", "process.name=ddm"] if method == "ddm" else []
    from fsg.train.setup import batch_transform

    m = build(tmp_path, *extra).method
    fake_labels = torch.randn(4, 9)
    pipe = lambda images, generator: (torch.ones_like(images), fake_labels)   # noqa: E731  (augmented image: all ones)
    spy = _Spy()
    batch = {"x": torch.randn(4, 1, 8, 8, generator=gen()), "label": torch.full((4,), -1)}
    _, logs = m.loss({"model": spy}, batch_transform(pipe, 0, 0.0)(batch, gen(11)), 0, gen(11))
    assert spy.augment_labels is fake_labels
    if method == "diffusion":
        assert logs["mse"] == pytest.approx(1.0)     # mean (0 - 1)^2: the target is the augmented image
    else:
        assert logs["rec"] == pytest.approx(1.0)     # mean |0 - 1|
        assert logs["mse_C"] == pytest.approx(1.0)   # C = -x0 = -1 of the augmented image


def test_other_methods_refuse_train_augment(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "fsg", "train-consistency", "--recipe", "tiny/ct_toy",
                        "--set", "train.augment=0.1", "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "train.augment" in r.stderr and "Traceback" not in r.stderr
