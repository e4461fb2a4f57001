"""EDM2's magnitude-preserving network (fsg.nets.edm2): each layer against a hand derivation or an identity, the
reference's parameter names and the exact sizes of the released models, forced weight normalisation outside the
forward, forward-mode derivatives, and the network inside fsg's Denoiser and training engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fsg.core.edm import EDMProcess
from fsg.models.denoiser import Denoiser
from fsg.nets.edm2 import (Block, EDM2UNetConfig, MPConv, MPFourier, MPPositional, mp_cat, mp_silu, mp_sum, normalize,
                           normalize_weights_, released_config, resample)

TINY = EDM2UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(4,),
                      channels_per_head=32, logvar_channels=16)
SHAPE = (1, 16, 16)


def _tiny(cfg=TINY, classes=10, shape=SHAPE, seed=0):
    """A tiny EDM2 network with every gain nonzero (at init the output gain 0 makes the UNet output 0)."""
    torch.manual_seed(seed)
    net = cfg.build(shape, shape[0], 0, classes)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim == 0:
                p.fill_(0.5 + torch.rand(()).item())
    return net


def _inputs(n=3, shape=SHAPE, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.linspace(-1.2, 1.0, n, dtype=dtype), torch.arange(n) % 10


# ---------------------------------------------------------------------- magnitude-preserving operations

def test_normalize_gives_unit_rms_slices():
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    # rows: RMS 5/sqrt(2) and 2/sqrt(2); x / (1e-4 + RMS)
    expected = torch.stack([x[0] / (1e-4 + 5 / math.sqrt(2)), x[1] / (1e-4 + math.sqrt(2))])
    assert torch.allclose(normalize(x), expected)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    assert torch.allclose(normalize(w).square().mean(dim=(1, 2, 3)).sqrt(), torch.ones(5, dtype=torch.float64), atol=2e-4)
    y = torch.randn(2, 6, 4, 4)
    assert torch.allclose(normalize(y, dim=1).square().mean(dim=1).sqrt(), torch.ones(2, 4, 4), atol=1e-3)


def test_mp_silu_has_unit_second_moment_under_a_standard_normal():
    z = np.linspace(-12, 12, 200_001)
    pdf = np.exp(-z**2 / 2) / math.sqrt(2 * math.pi)
    second_moment = np.trapezoid((z / (1 + np.exp(-z))) ** 2 * pdf, z)     # E[silu(z)^2] by quadrature
    assert math.sqrt(second_moment) == pytest.approx(0.596, abs=5e-4)
    assert torch.allclose(mp_silu(torch.tensor([0.0, 2.0])), torch.tensor([0.0, 2 / (1 + math.exp(-2)) / 0.596]))


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 0.9])
def test_mp_sum_preserves_unit_rms_of_orthogonal_inputs(t):
    a, b = torch.tensor([math.sqrt(2), 0.0]), torch.tensor([0.0, math.sqrt(2)])   # RMS 1 each, orthogonal
    y = mp_sum(a, b, t)
    assert torch.allclose(y, torch.tensor([(1 - t), t]) * math.sqrt(2) / math.sqrt((1 - t) ** 2 + t**2))
    assert y.square().mean().sqrt().item() == pytest.approx(1.0)


@pytest.mark.parametrize("na, nb, t", [(3, 5, 0.5), (8, 2, 0.3)])
def test_mp_cat_gives_unit_rms_and_the_parts_their_weights(na, nb, t):
    a, b = torch.ones(1, na, 2, 2), torch.ones(1, nb, 2, 2)                       # unit RMS each
    y = mp_cat(a, b, t=t)
    assert y.square().mean().item() == pytest.approx(1.0)                          # (Na wa^2 + Nb wb^2) / (Na + Nb) = 1
    energy_a, energy_b = y[:, :na].square().sum(), y[:, na:].square().sum()
    assert (energy_a / energy_b).item() == pytest.approx((1 - t) ** 2 / t**2)      # the shares (1 - t) : t


def test_resample_is_edm2s_fir_with_filter_1_1():
    x = torch.randn(2, 3, 8, 8)
    f = torch.full((3, 1, 2, 2), 0.25)                                             # outer([1,1],[1,1]) / 4
    assert torch.allclose(resample(x, "down"), F.conv2d(x, f, stride=2, groups=3))
    assert torch.allclose(resample(x, "up"), F.conv_transpose2d(x, 4 * f, stride=2, groups=3))
    assert resample(x, "keep") is x


def test_mpconv_rows_have_norm_gain_and_preserve_unit_variance():
    torch.manual_seed(0)
    linear = MPConv(64, 8, ())
    effective = linear(torch.eye(64), gain=2.5).t()                               # (out, in): x @ W^T with x = I
    assert torch.allclose(effective.norm(dim=1), torch.full((8,), 2.5), rtol=1e-3)
    conv = MPConv(16, 8, (3, 3))
    y = conv(torch.randn(4, 16, 64, 64))[:, :, 1:-1, 1:-1]                         # away from the zero padding
    assert y.var().item() == pytest.approx(1.0, abs=0.03)
    assert y.shape == (4, 8, 62, 62)


def test_embeddings_have_unit_rms():
    c = torch.linspace(-2, 2, 7)
    positional = MPPositional(64)(c)
    assert torch.allclose(positional.square().mean(dim=1), torch.ones(7))         # cos^2 + sin^2 = 1 per pair
    assert torch.allclose(positional[:, 0], math.sqrt(2) * c.cos()) and torch.allclose(positional[:, 32], math.sqrt(2) * c.sin())
    torch.manual_seed(0)
    fourier = MPFourier(4096)(c)
    assert torch.allclose(fourier.square().mean(dim=1), torch.ones(7), atol=0.05)


def test_activations_keep_unit_scale_through_the_network():
    """Magnitude preservation end to end: with random unit-variance input every block's output has RMS near 1."""
    net = EDM2UNetConfig(model_channels=32, channel_mult=(1, 2), num_blocks=2, attn_resolutions=(8,),
                         channels_per_head=32).build((3, 16, 16), 3, 0, 0).eval()
    rms = []
    for block in net.modules():
        if isinstance(block, Block):
            block.register_forward_hook(lambda m, inp, out: rms.append(out.square().mean().sqrt().item()))
    net(torch.randn(8, 3, 16, 16), torch.zeros(8))
    assert len(rms) == 14 and all(0.5 < r < 1.5 for r in rms), rms      # enc 2 + 1 + 2, dec 2 + 3 + 1 + 3


def test_attention_uses_edm2s_interleaved_qkv_layout():
    """Channel (head Ch + c) 3 + s of attn_qkv is q (s=0), k (1), v (2) of head `head`: a loop over heads and pixels."""
    torch.manual_seed(0)
    block = Block(8, 8, 4, "enc", attention=True, channels_per_head=4)
    x = torch.randn(2, 8, 3, 3)
    qkv = block.attn_qkv(x).reshape(2, 8 * 3, 9)

    def part(n, head, s):
        m = qkv[n, [(head * 4 + c) * 3 + s for c in range(4)]]                     # (Ch, P)
        return m / (1e-4 + m.square().mean(dim=0, keepdim=True).sqrt())

    out = torch.zeros(2, 8, 9)
    for n in range(2):
        for head in range(2):
            q, k, v = part(n, head, 0), part(n, head, 1), part(n, head, 2)
            for i in range(9):
                w = torch.softmax(torch.stack([q[:, i] @ k[:, j] / 2 for j in range(9)]), dim=0)    # sqrt(Ch) = 2
                out[n, head * 4:(head + 1) * 4, i] = (v * w).sum(dim=1)
    expected = block.attn_proj(out.reshape(2, 8, 3, 3))
    assert torch.allclose(block.attention(x), expected, atol=1e-6)


# ----------------------------------------------------------------------- names, sizes and configurations

def _reference_names(res0, channels, mc, mult, nb, attn, classes, cph, logvar):
    """State-dict names of NVlabs/edm2's Precond, from its constructor loops (networks_edm2.py UNet/Block/Precond)."""
    names = {"unet.out_gain", "unet.emb_fourier.freqs", "unet.emb_fourier.phases", "unet.emb_noise.weight",
             "unet.out_conv.weight", "logvar_fourier.freqs", "logvar_fourier.phases", "logvar_linear.weight"}
    if classes:
        names.add("unet.emb_label.weight")

    def block(p, cin, cout, attention):
        names.update(f"unet.{p}.{k}" for k in ("emb_gain", "conv_res0.weight", "emb_linear.weight", "conv_res1.weight"))
        if cin != cout:
            names.add(f"unet.{p}.conv_skip.weight")
        if attention and cout // cph:
            names.update((f"unet.{p}.attn_qkv.weight", f"unet.{p}.attn_proj.weight"))

    cout, skips = channels + 1, []
    for level, m in enumerate(mult):
        res = res0 >> level
        if level == 0:
            names.add(f"unet.enc.{res}x{res}_conv.weight")
            cout = mc * m
        else:
            block(f"enc.{res}x{res}_down", cout, cout, False)
        skips.append(cout)
        for i in range(nb):
            block(f"enc.{res}x{res}_block{i}", cout, mc * m, res in attn)
            cout = mc * m
            skips.append(cout)
    for level, m in reversed(list(enumerate(mult))):
        res = res0 >> level
        if level == len(mult) - 1:
            block(f"dec.{res}x{res}_in0", cout, cout, True)
            block(f"dec.{res}x{res}_in1", cout, cout, False)
        else:
            block(f"dec.{res}x{res}_up", cout, cout, False)
        for i in range(nb + 1):
            block(f"dec.{res}x{res}_block{i}", cout + skips.pop(), mc * m, res in attn)
            cout = mc * m
    return names


def test_state_dict_names_are_edm2s():
    net = TINY.build(SHAPE, 1, 0, 10)
    assert set(net.state_dict()) == _reference_names(16, 1, 32, (1, 2, 2), 1, (4,), 10, 32, 16)
    assert net.state_dict()["logvar_linear.weight"].shape == (1, 16)
    assert net.state_dict()["unet.dec.4x4_block0.conv_res0.weight"].shape == (64, 128, 3, 3)   # 'dec': in channels


# Exact parameter counts of NVlabs/edm2's Precond for the released sizes (1000 classes), as built by the reference
# code; the paper rounds them to 125, 280, 498, 777, 1119 and 1523 M.
RELEASED_COUNTS = {"img512-xxs": 31_309_029, "img512-xs": 124_713_253, "img512-s": 280_212_837,
                   "img512-m": 497_807_781, "img512-l": 777_498_085, "img512-xl": 1_119_283_749,
                   "img512-xxl": 1_523_164_773, "img64-xs": 124_710_949, "img64-s": 280_209_381,
                   "img64-m": 497_803_173, "img64-l": 777_492_325, "img64-xl": 1_119_276_837}


@pytest.mark.parametrize("name", ["img512-xs", "img512-xxl", "img64-s", "img64-m"])
def test_released_sizes_have_the_exact_parameter_counts(name):
    from fsg.io.config import to_dict
    from fsg.models.importers import parameter_count

    cfg, shape = released_config(name)
    meta = {"network": to_dict(cfg), "shape": list(shape), "out_channels": shape[0], "num_classes": 1000}
    assert parameter_count(meta) == RELEASED_COUNTS[name]


def test_every_released_size_is_known():
    sizes = {f"img512-{s}" for s in ("xxs", "xs", "s", "m", "l", "xl", "xxl")} | {f"img64-{s}" for s in ("xs", "s", "m", "l", "xl")}
    assert set(RELEASED_COUNTS) == sizes
    assert released_config("img64-m")[0].dropout == 0.10 and released_config("img512-s")[1] == (4, 64, 64)
    with pytest.raises(ValueError):
        released_config("img64-xxl")


def test_shipped_recipes_use_the_released_edm2_sizes():
    """sct_imagenet64 tunes EDM2-M (SCT's headline row; the teacher's file and exact size are named), ect_edm2 EDM2-S,
    scd_imagenet512 distils EDM2-S at 512 on 4x64x64 latents; the teacher recipe builds EDM2-S itself."""
    from pathlib import Path

    from fsg.train.recipe import load_recipe

    recipes = Path(__file__).resolve().parents[1] / "recipes"
    sct = load_recipe(recipes / "sct_imagenet64.yaml")
    assert sct.method.name == "sct" and "edm2-img64-m-2147483-0.060.pkl" in sct.description
    assert f"{RELEASED_COUNTS['img64-m']:,}" in sct.description and released_config("img64-m")[0].model_channels == 256
    assert "edm2-img64-s-1073741-0.075.pkl" in load_recipe(recipes / "ect_edm2_imagenet64.yaml").description
    scd = load_recipe(recipes / "scd_imagenet512.yaml")
    assert scd.method.name == "scm-cd" and "edm2-img512-s-2147483-0.130.pkl" in scd.description
    assert scd.network.model_channels == released_config("img512-s")[0].model_channels and scd.data.source == "latents"
    teacher = load_recipe(recipes / "edm2_img64_s.yaml").network
    assert (teacher.arch, teacher.model_channels, teacher.dropout) == ("edm2", 192, 0.0)


def test_dropout_res_keeps_dropout_to_low_resolutions():
    net = EDM2UNetConfig(model_channels=32, channel_mult=(1, 2, 2), num_blocks=1, attn_resolutions=(), dropout=0.4,
                         dropout_res=8).build(SHAPE, 1, 0, 0)
    rates = {name: m.dropout for name, m in net.unet.named_modules() if isinstance(m, Block)}
    assert all(rate == (0.4 if name.split(".")[1].startswith(("8x8", "4x4")) else 0.0) for name, rate in rates.items())
    assert {rate for rate in rates.values()} == {0.0, 0.4}


# -------------------------------------------------------------------- forced weight normalisation

def test_forced_normalisation_is_the_identity_on_the_function():
    """normalize_weights_ projects every stored weight onto unit-RMS rows and leaves the function unchanged: the forward
    sees normalize(w) either way, and normalize(normalize(w)) = normalize(w) up to eps = 1e-4 (each of the ~30 layers
    moves by eps |1 - 1/RMS(w)| <= 1e-4 here); once the rows have unit RMS a second projection moves nothing."""
    net = _tiny().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, MPConv):
                m.weight.mul_(torch.rand(m.weight.shape[0], *[1] * (m.weight.ndim - 1)) * 3 + 0.5)   # rows of any scale
    x, c, y = _inputs()
    before = net(x, c, y)
    normalize_weights_(net)
    for m in net.modules():
        if isinstance(m, MPConv):
            rms = m.weight.square().mean(dim=tuple(range(1, m.weight.ndim))).sqrt()
            assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)
    after = net(x, c, y)
    assert torch.allclose(after, before, atol=2e-3 * before.abs().max().item())
    normalize_weights_(net)
    assert torch.allclose(net(x, c, y), after, atol=1e-6 * after.abs().max().item())


def test_gradient_of_a_normalised_weight_is_orthogonal_to_it():
    """The forward depends on w only through w / |w| (up to eps), so <grad w_i, w_i> = 0 for every row (EDM2 Eq. 66:
    why weights grow without forced normalisation)."""
    torch.manual_seed(0)
    conv = MPConv(6, 4, (3, 3))
    conv(torch.randn(2, 6, 5, 5)).square().sum().backward()
    w, g = conv.weight.detach().flatten(1), conv.weight.grad.flatten(1)
    assert ((w * g).sum(dim=1).abs() < 1e-3 * g.norm(dim=1) * w.norm(dim=1)).all()


def test_training_mode_forwards_never_write_the_weights():
    """Two training-mode forwards then one backward (few-step losses) work, and leave every parameter as it was:
    an EMA copy left in training mode keeps its weights (locuslab/ect#21)."""
    net = _tiny().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, c, y = _inputs()
    loss = net(x, c, y).square().mean() + net(x + 0.1, c, y).square().mean()
    loss.backward()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is not None for p in net.unet.parameters())


@pytest.mark.parametrize("embedding", ["fourier", "positional"])
def test_jvp_matches_central_differences(embedding):
    """torch.func.jvp through the whole network (attention, pixel norms, clamps) in float64, in x and c_noise."""
    cfg = EDM2UNetConfig(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                         channels_per_head=16, logvar_channels=8, time_embedding=embedding, double_norm=embedding == "positional")
    net = _tiny(cfg, shape=(1, 8, 8)).double().train()             # train mode: no op writes the weights under jvp
    x, c, y = _inputs(shape=(1, 8, 8), dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    vx, vc = torch.randn(x.shape, generator=g, dtype=torch.float64), torch.randn(c.shape, generator=g, dtype=torch.float64)

    def f(x, c):
        return net(x, c, y)

    _, tangent = torch.func.jvp(f, (x, c), (vx, vc))
    h = 1e-6
    numeric = (f(x + h * vx, c + h * vc) - f(x - h * vx, c - h * vc)) / (2 * h)
    scale = numeric.abs().max().item()
    assert scale > 1e-3 and torch.allclose(tangent, numeric, atol=1e-6 * scale, rtol=0)


# ----------------------------------------------------------------------------- network and denoiser

def test_denoiser_is_c_skip_x_at_initialisation():
    """The output gain starts at 0, so D = c_skip x = sd^2 / (sigma^2 + sd^2) x with sd = 0.5 (EDM2's Precond)."""
    torch.manual_seed(0)
    den = Denoiser(TINY.build(SHAPE, 1, 0, 10), EDMProcess(sigma_data=0.5))
    x, sigma = torch.randn(3, *SHAPE), torch.tensor([0.01, 1.0, 50.0])
    assert torch.allclose(den(x, sigma, labels=torch.tensor([1, 2, 3])), (0.25 / (sigma**2 + 0.25))[:, None, None, None] * x)


def test_denoiser_passes_edm2s_noise_label():
    seen = []
    net = _tiny()
    net.unet.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    sigma = torch.tensor([0.002, 1.0, 80.0])
    Denoiser(net, EDMProcess(sigma_data=0.5))(torch.randn(3, *SHAPE), sigma)
    assert torch.allclose(seen[0], sigma.log() / 4)                                 # c_noise = ln(sigma) / 4


def test_label_minus_one_is_edm2s_missing_label():
    """-1 (and None) give the zero class vector: the label embedding is 0 and mp_sum scales the noise one by 1/sqrt(2)."""
    net = _tiny().eval()
    x, c, _ = _inputs()
    none = net(x, c, None)
    assert torch.equal(net(x, c, torch.full((3,), -1)), none)
    emb = net.unet.emb_noise(net.unet.emb_fourier(c))
    assert torch.allclose(mp_sum(emb, torch.zeros_like(emb), 0.5), emb / math.sqrt(2))


def test_logvar_head_by_hand():
    """u = logvar_linear(sqrt(2) cos(0)) with all-ones weights: 16 features of sqrt(2), row normalised to 1/sqrt(16)
    each -> 16 sqrt(2) / 4 = 4 sqrt(2), for every c_noise."""
    net = _tiny()
    with torch.no_grad():
        net.logvar_fourier.freqs.zero_()
        net.logvar_fourier.phases.zero_()
        net.logvar_linear.weight.fill_(3.0)
    assert torch.allclose(net.logvar(torch.tensor([-1.0, 0.5])), torch.full((2,), 4 * math.sqrt(2)), rtol=1e-4)


def test_state_round_trip_keeps_the_outputs():
    net, other = _tiny(seed=0), _tiny(seed=1)
    x, c, y = _inputs()
    other.load_state_dict(net.state_dict(), strict=True)
    assert torch.equal(other.eval()(x, c, y), net.eval()(x, c, y))
    assert torch.equal(other.logvar(c), net.logvar(c))


def test_condition_image_is_concatenated():
    net = EDM2UNetConfig(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=()).build((1, 8, 8), 1, 2, 0)
    assert net.unet.enc["8x8_conv"].weight.shape[1] == 1 + 2 + 1                  # x, the condition, the ones channel
    assert net(torch.randn(2, 1, 8, 8), torch.zeros(2), cond=torch.randn(2, 2, 8, 8)).shape == (2, 1, 8, 8)


# ------------------------------------------------------------------------- a second time (flow maps)

def test_second_time_joins_as_mp_sum_with_the_learned_balance():
    """(emb + g e2) / sqrt(1 + g^2) with e2 the unit-gain embedding is mp_sum(emb, e2, t = g / (1 + g)) (hand algebra:
    ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2) with t / (1 - t) = g), and keeps unit RMS for orthogonal unit-RMS parts."""
    from fsg.nets.edm2 import MPSecondTime

    torch.manual_seed(0)
    second = MPSecondTime(MPPositional(16), 16, 8)
    h, emb = torch.tensor([0.3, 0.9]), torch.randn(2, 8)
    assert torch.equal(second.join(emb, h), emb)                                  # g = 0 at initialisation
    with torch.no_grad():
        second.gain.fill_(0.7)
    unit = second.linear(second.embed(h))                                         # gain 1: rows of norm 1
    assert torch.allclose(second.join(emb, h), mp_sum(emb, unit, 0.7 / 1.7), atol=1e-6)
    assert torch.allclose(second.join(emb, None), second.join(emb, torch.zeros(2)))
    a, b = torch.tensor([[math.sqrt(2), 0.0]]), torch.tensor([[0.0, math.sqrt(2)]])
    joined = (a + 0.7 * b) / math.sqrt(1 + 0.7**2)
    assert joined.square().mean().sqrt().item() == pytest.approx(1.0)


@pytest.mark.parametrize("embedding", ["fourier", "positional"])
def test_two_time_network_starts_as_its_single_time_self(embedding):
    """With every gain nonzero but the second time's (0 at init), a two-time network built from the same seed computes
    exactly its single-time self for any second time; EDM2's names are kept, only unet.emb_time2.* are new; once its
    gain moves, the second time changes the output."""
    cfg = EDM2UNetConfig(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                         channels_per_head=16, logvar_channels=8, time_embedding=embedding)
    single = _tiny(cfg, shape=(1, 8, 8)).eval()
    two = EDM2UNetConfig(**{**cfg.__dict__, "two_times": True}).build((1, 8, 8), 1, 0, 10).eval()
    missing, unexpected = two.load_state_dict(single.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("unet.emb_time2.") for k in missing)
    assert two.two_times and not single.two_times
    x, c, y = _inputs(shape=(1, 8, 8))
    h = torch.tensor([0.0, 0.4, 0.9])
    assert torch.equal(two(x, c, y, time2=h), single(x, c, y))
    with torch.no_grad():
        two.unet.emb_time2.gain.fill_(1.0)
    assert not torch.allclose(two(x, c, y, time2=h), two(x, c, y, time2=h.flip(0)))


def test_two_time_denoiser_feeds_t_and_t_minus_r():
    """In a flow map (fsg.core.flow) the network sees c_noise = t and the second time h = t - r."""
    from fsg.core.flow import FlowProcess

    net = EDM2UNetConfig(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(),
                         two_times=True).build((1, 8, 8), 1, 0, 0)
    seen = []
    net.unet.register_forward_pre_hook(lambda m, args: seen.append((args[1], args[3])))
    t, r = torch.tensor([0.9, 0.5]), torch.tensor([0.2, 0.5])
    Denoiser(net, FlowProcess(), "consistency")(torch.randn(2, 1, 8, 8), t, r=r)
    assert torch.allclose(seen[0][0], t) and torch.allclose(seen[0][1], t - r)
