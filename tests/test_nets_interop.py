"""Interoperability of the public architectures: reference parameter names, safe importers, `fsg convert`.

Expected names and shapes are derived here from the reference code's module structure
(guided-diffusion's `UNetModel` as used by openai/consistency_models and DDBM; NVlabs/edm's `SongUNet`),
independently of fsg's modules; the big configurations are built on the meta device.
"""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fsg.cli import app
from fsg.errors import UserError
from fsg.io.checkpoint import read_model
from fsg.models.importers import build_network, import_checkpoint, infer_adm_config, parameter_count
from fsg.nets.adm import ADMConfig, AttentionBlock, timestep_embedding
from fsg.nets.edm import (Conv2d, DhariwalUNet, DhariwalUNetConfig, FourierEmbedding, PositionalEmbedding, SongUNet,
                          SongUNetConfig, UNetBlock)
from tests.persistence import PersistencePickler, install_persistence, persistent_meta

CM_IMAGENET64 = ADMConfig()   # 192 ch, (1,2,3,4), 3 blocks, attn 32,16,8, 64 ch/head, scale-shift, resblock up/down
DDBM_E2H = ADMConfig(dropout=0.1)
EDM_CIFAR_DDPMPP = SongUNetConfig(augment_dim=9)


# ------------------------------------------------------------------ reference structures (from the reference code)

def _linear(shapes, name, i, o, bias=True):
    shapes[f"{name}.weight"] = (o, i)
    if bias:
        shapes[f"{name}.bias"] = (o,)


def _conv(shapes, name, i, o, k):
    shapes[f"{name}.weight"] = (o, i, k, k)
    shapes[f"{name}.bias"] = (o,)


def _norm(shapes, name, c):
    shapes[f"{name}.weight"] = (c,)
    shapes[f"{name}.bias"] = (c,)


def reference_adm_shapes(mc, mult, nrb, attention_ds, in_ch, out_ch, num_classes, scale_shift=True, updown=True):
    """Parameter names/shapes of guided-diffusion's UNetModel (cm/unet.py, ddbm/unet.py): its __init__ loops."""
    s, emb = {}, 4 * mc

    def resblock(p, i, o):
        _norm(s, f"{p}.in_layers.0", i)
        _conv(s, f"{p}.in_layers.2", i, o, 3)
        _linear(s, f"{p}.emb_layers.1", emb, 2 * o if scale_shift else o)
        _norm(s, f"{p}.out_layers.0", o)
        _conv(s, f"{p}.out_layers.3", o, o, 3)
        if o != i:
            _conv(s, f"{p}.skip_connection", i, o, 1)

    def attention(p, c):
        _norm(s, f"{p}.norm", c)
        _conv(s, f"{p}.qkv", c, 3 * c, 1)
        _conv(s, f"{p}.proj_out", c, c, 1)

    _linear(s, "time_embed.0", mc, emb)
    _linear(s, "time_embed.2", emb, emb)
    if num_classes:
        s["label_emb.weight"] = (num_classes, emb)
    ch = mc * mult[0]
    _conv(s, "input_blocks.0.0", in_ch, ch, 3)
    chans, ds, idx = [ch], 1, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            resblock(f"input_blocks.{idx}.0", ch, m * mc)
            ch = m * mc
            if ds in attention_ds:
                attention(f"input_blocks.{idx}.1", ch)
            chans.append(ch)
            idx += 1
        if level != len(mult) - 1:
            if updown:
                resblock(f"input_blocks.{idx}.0", ch, ch)
            else:
                _conv(s, f"input_blocks.{idx}.0.op", ch, ch, 3)
            chans.append(ch)
            idx, ds = idx + 1, ds * 2
    resblock("middle_block.0", ch, ch)
    attention("middle_block.1", ch)
    resblock("middle_block.2", ch, ch)
    idx = 0
    for level, m in list(enumerate(mult))[::-1]:
        for i in range(nrb + 1):
            resblock(f"output_blocks.{idx}.0", ch + chans.pop(), m * mc)
            ch, j = m * mc, 1
            if ds in attention_ds:
                attention(f"output_blocks.{idx}.1", ch)
                j = 2
            if level and i == nrb:
                if updown:
                    resblock(f"output_blocks.{idx}.{j}", ch, ch)
                else:
                    _conv(s, f"output_blocks.{idx}.{j}.conv", ch, ch, 3)
                ds //= 2
            idx += 1
    _norm(s, "out.0", ch)
    _conv(s, "out.2", mc * mult[0], out_ch, 3)
    return s


def reference_ddpmpp_shapes(res0, in_ch, out_ch, mc, mult, nb, attn, label_dim=0, augment_dim=0):
    """Parameter and buffer names/shapes of NVlabs/edm's SongUNet, DDPM++ settings (standard encoder/decoder,
    positional embedding, resample_filter [1,1], resample_proj, no adaptive scale); buffers marked True."""
    s, buffers, emb = {}, set(), 4 * mc

    def conv(p, i, o, k, resample=False):
        if k:
            _conv(s, p, i, o, k)
        if resample:
            s[f"{p}.resample_filter"] = (1, 1, 2, 2)
            buffers.add(f"{p}.resample_filter")

    def block(p, i, o, up=False, down=False, attention=False):
        _norm(s, f"{p}.norm0", i)
        conv(f"{p}.conv0", i, o, 3, resample=up or down)
        _linear(s, f"{p}.affine", emb, o)
        _norm(s, f"{p}.norm1", o)
        conv(f"{p}.conv1", o, o, 3)
        if o != i or up or down:
            conv(f"{p}.skip", i, o, 1, resample=up or down)
        if attention:
            _norm(s, f"{p}.norm2", o)
            conv(f"{p}.qkv", o, 3 * o, 1)
            conv(f"{p}.proj", o, o, 1)
        return o

    if label_dim:
        _linear(s, "map_label", label_dim, mc)
    if augment_dim:
        _linear(s, "map_augment", augment_dim, mc, bias=False)
    _linear(s, "map_layer0", mc, emb)
    _linear(s, "map_layer1", emb, emb)
    cout, skips = in_ch, []
    for level, m in enumerate(mult):
        res = res0 >> level
        if level == 0:
            conv(f"enc.{res}x{res}_conv", cout, mc, 3)
            cout = mc
        else:
            cout = block(f"enc.{res}x{res}_down", cout, cout, down=True)
        skips.append(cout)
        for idx in range(nb):
            cout = block(f"enc.{res}x{res}_block{idx}", cout, mc * m, attention=res in attn)
            skips.append(cout)
    for level, m in reversed(list(enumerate(mult))):
        res = res0 >> level
        if level == len(mult) - 1:
            block(f"dec.{res}x{res}_in0", cout, cout, attention=True)
            block(f"dec.{res}x{res}_in1", cout, cout)
        else:
            block(f"dec.{res}x{res}_up", cout, cout, up=True)
        for idx in range(nb + 1):
            cout = block(f"dec.{res}x{res}_block{idx}", cout + skips.pop(), mc * m, attention=idx == nb and res in attn)
    _norm(s, f"dec.{res0}x{res0}_aux_norm", cout)
    conv(f"dec.{res0}x{res0}_aux_conv", cout, out_ch, 3)
    return s, buffers


def _meta_shapes(cfg, shape, out_ch, cond=0, classes=0):
    with torch.device("meta"):
        net = cfg.build(shape, out_ch, cond, classes)
    return net, {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _meta_state(shapes):
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def _randomize(net: nn.Module, seed=0, scale=0.2):
    """Non-zero weights everywhere (the zero-initialised output layers would hide most of the network)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return net.eval()


# ------------------------------------------------------------------------------------------------- ADM

def test_adm_names_of_a_tiny_unet_are_guided_diffusions():
    """Explicit key list of UNetModel(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention at
    ds=2, resblock_updown, scale-shift norm, 5 classes), read off guided-diffusion's constructor by hand."""
    res = ["in_layers.0.weight", "in_layers.0.bias", "in_layers.2.weight", "in_layers.2.bias", "emb_layers.1.weight",
           "emb_layers.1.bias", "out_layers.0.weight", "out_layers.0.bias", "out_layers.3.weight", "out_layers.3.bias"]
    skip = ["skip_connection.weight", "skip_connection.bias"]
    attn = ["norm.weight", "norm.bias", "qkv.weight", "qkv.bias", "proj_out.weight", "proj_out.bias"]
    expected = ["time_embed.0.weight", "time_embed.0.bias", "time_embed.2.weight", "time_embed.2.bias", "label_emb.weight",
                "input_blocks.0.0.weight", "input_blocks.0.0.bias"]
    expected += [f"input_blocks.1.0.{k}" for k in res]                                   # 32 -> 32
    expected += [f"input_blocks.2.0.{k}" for k in res]                                   # down, 32 -> 32
    expected += [f"input_blocks.3.0.{k}" for k in res + skip] + [f"input_blocks.3.1.{k}" for k in attn]   # 32 -> 64, ds 2
    expected += [f"middle_block.0.{k}" for k in res] + [f"middle_block.1.{k}" for k in attn] + [f"middle_block.2.{k}" for k in res]
    expected += [f"output_blocks.0.0.{k}" for k in res + skip] + [f"output_blocks.0.1.{k}" for k in attn]  # 64+64 -> 64
    expected += ([f"output_blocks.1.0.{k}" for k in res + skip] + [f"output_blocks.1.1.{k}" for k in attn]  # 64+32 -> 64
                 + [f"output_blocks.1.2.{k}" for k in res])                                               # up
    expected += [f"output_blocks.2.0.{k}" for k in res + skip]                            # 64+32 -> 32
    expected += [f"output_blocks.3.0.{k}" for k in res + skip]                            # 32+32 -> 32
    expected += ["out.0.weight", "out.0.bias", "out.2.weight", "out.2.bias"]
    cfg = ADMConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,), num_head_channels=32)
    sd = cfg.build((3, 16, 16), 3, 0, 5).state_dict()
    assert sorted(sd) == sorted(expected)
    assert tuple(sd["input_blocks.3.1.qkv.weight"].shape) == (192, 64, 1, 1)
    assert tuple(sd["input_blocks.3.0.emb_layers.1.weight"].shape) == (2 * 64, 4 * 32)    # scale and shift
    assert tuple(sd["output_blocks.1.0.in_layers.2.weight"].shape) == (64, 96, 3, 3)


@pytest.mark.parametrize("name, cfg, cond, classes", [("cm_imagenet64", CM_IMAGENET64, 0, 1000),
                                                      ("ddbm_e2h", DDBM_E2H, 3, 0)])
def test_adm_reference_state_dict_loads_strictly(name, cfg, cond, classes):
    expected = reference_adm_shapes(192, (1, 2, 3, 4), 3, {2, 4, 8}, 3 + cond, 3, classes)
    net, ours = _meta_shapes(cfg, (3, 64, 64), 3, cond, classes)
    assert ours == expected
    net.load_state_dict(_meta_state(expected), strict=True, assign=True)
    assert infer_adm_config(_meta_state(expected), 64) == ADMConfig()     # dropout is not in the weights


def test_adm_parameter_counts():
    cm = sum(math.prod(s) for s in reference_adm_shapes(192, (1, 2, 3, 4), 3, {2, 4, 8}, 3, 3, 1000).values())
    meta = {"network": {"arch": "adm"}, "shape": [3, 64, 64], "out_channels": 3, "cond_channels": 0, "num_classes": 1000}
    assert parameter_count(meta) == cm
    assert round(cm / 1e6) == 296                                  # "296M" (CM ImageNet-64)
    ddbm = sum(math.prod(s) for s in reference_adm_shapes(192, (1, 2, 3, 4), 3, {2, 4, 8}, 6, 3, 0).values())
    assert parameter_count({**meta, "cond_channels": 3, "num_classes": 0}) == ddbm


def test_timestep_embedding_by_hand():
    # dim 4: frequencies 10000^(-0/2) = 1 and 10000^(-1/2) = 0.01; [cos, cos, sin, sin]
    got = timestep_embedding(torch.tensor([0.0, 100.0]), 4)
    want = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(100), math.cos(1), math.sin(100), math.sin(1)]])
    torch.testing.assert_close(got, want)


def _reference_attention(x, block: AttentionBlock, heads: int, legacy: bool):
    """Multi-head attention written from the reference: flash-attn's "b (three h d) s" channel order, or
    QKVAttentionLegacy's reshape(b * heads, 3 * d, s).split(d); softmax(q.k / sqrt(d)) over keys."""
    n, c, h, w = x.shape
    d = c // heads
    qkv = block.qkv(block.norm(x)).reshape(n, 3 * c, h * w)
    outs = []
    for i in range(heads):
        if legacy:
            q, k, v = (qkv[:, i * 3 * d + j * d: i * 3 * d + (j + 1) * d] for j in range(3))
        else:
            q, k, v = (qkv[:, j * c + i * d: j * c + (i + 1) * d] for j in range(3))
        wts = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
        outs.append(torch.einsum("bts,bcs->bct", wts, v))
    return x + block.proj_out(torch.cat(outs, dim=1).reshape(n, c, h, w))


@pytest.mark.parametrize("new_order", [True, False])
def test_adm_attention_matches_both_reference_layouts(new_order):
    torch.manual_seed(0)
    block = _randomize(AttentionBlock(64, 32, new_order, checkpointed=False))
    x = torch.randn(2, 64, 3, 3)
    torch.testing.assert_close(block(x), _reference_attention(x, block, 2, legacy=not new_order), atol=1e-5, rtol=1e-5)


def _tiny_adm(cond=0, classes=10, **kw):
    cfg = ADMConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(8,),
                    num_head_channels=16, **kw)
    return cfg, _randomize(cfg.build((3, 16, 16), 3, cond, classes))


def _inputs(n=2, cond=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    return x, torch.randn(n, generator=g), torch.randint(0, 10, (n,), generator=g), (torch.randn(n, cond, 16, 16, generator=g) if cond else None)


def test_adm_conv1d_qkv_layout_loads_strictly():
    """guided-diffusion / DBIM keep qkv and proj_out as conv1d weights [O, I, 1]: strict load, same outputs."""
    _, net = _tiny_adm(cond=3, classes=0)
    sd = net.state_dict()
    sd1d = {k: v[..., 0] if k.endswith(("qkv.weight", "proj_out.weight")) else v for k, v in sd.items()}
    assert tuple(sd1d["middle_block.1.qkv.weight"].shape) == (192, 64, 1)
    _, other = _tiny_adm(cond=3, classes=0)
    other.load_state_dict(sd1d, strict=True)
    x, t, _, c = _inputs(cond=3)
    assert torch.equal(other(x, t, cond=c), net(x, t, cond=c))


def test_adm_time_scale_multiplies_noise_labels():
    cfg, net = _tiny_adm()
    unscaled = _randomize(ADMConfig(**{**cfg.__dict__, "time_scale": 1.0}).build((3, 16, 16), 3, 0, 10))
    unscaled.load_state_dict(net.state_dict())
    x, t, y, _ = _inputs()
    torch.testing.assert_close(net(x, t, y), unscaled(x, 1000.0 * t, y))


def test_adm_labels_minus_one():
    _, net = _tiny_adm()
    x, t, _, _ = _inputs()
    assert torch.equal(net(x, t, torch.tensor([-1, -1])), net(x, t, None))       # no label embedding
    cfg, _ = _tiny_adm()
    null = _randomize(ADMConfig(**{**cfg.__dict__, "null_label": True}).build((3, 16, 16), 3, 0, 10))
    assert null.label_emb.num_embeddings == 11
    with torch.no_grad():
        null.label_emb.weight[10] = null.label_emb.weight[4]                        # the null row := class 4
    assert torch.equal(null(x, t, torch.tensor([-1, -1])), null(x, t, torch.tensor([4, 4])))


def test_adm_gradient_checkpointing_gives_the_same_gradients():
    cfg, net = _tiny_adm()
    ckpt = ADMConfig(**{**cfg.__dict__, "use_checkpoint": True}).build((3, 16, 16), 3, 0, 10)
    ckpt.load_state_dict(net.state_dict())
    x, t, y, _ = _inputs()
    grads = []
    for model in (net, ckpt):
        model.zero_grad()
        model(x, t, y).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------------------------------- EDM

def test_songunet_cifar10_ddpmpp_reference_state_dict_loads_strictly():
    expected, buffers = reference_ddpmpp_shapes(32, 3, 3, 128, (2, 2, 2), 4, (16,), augment_dim=9)
    net, ours = _meta_shapes(EDM_CIFAR_DDPMPP, (3, 32, 32), 3)
    assert ours == expected
    net.load_state_dict(_meta_state(expected), strict=True, assign=True)
    n = sum(math.prod(s) for k, s in expected.items() if k not in buffers)
    assert parameter_count({"network": {"arch": "songunet", "augment_dim": 9}, "shape": [3, 32, 32], "out_channels": 3}) == n
    assert round(n / 1e4) / 100 == 55.73                            # EDM / ECT: DDPM++ CIFAR-10, 55.73M (55.7M)


def test_edm_positional_embedding_by_hand():
    # 4 channels, endpoint: frequencies (1/10000)^(0/1), (1/10000)^(1/1) = 1, 1e-4
    got = PositionalEmbedding(4, endpoint=True)(torch.tensor([2.0]))
    torch.testing.assert_close(got, torch.tensor([[math.cos(2), math.cos(2e-4), math.sin(2), math.sin(2e-4)]]))


def test_edm_attention_matches_the_reference_formula():
    """EDM: q, k, v = qkv.reshape(N * heads, C / heads, 3, HW).unbind(2); w = softmax(q.k / sqrt(d)); a = v w^T."""
    torch.manual_seed(0)
    block = _randomize(UNetBlock(128, 128, 16, attention=True, channels_per_head=64))
    x, emb = torch.randn(2, 128, 3, 3), torch.randn(2, 16)
    seen = {}

    def keep_input(module, args):
        seen["y"] = args[0]

    block.norm2.register_forward_pre_hook(keep_input)
    out = block(x, emb)
    y = seen["y"]
    q, k, v = block.qkv(block.norm2(y)).reshape(2 * 2, 64, 3, 9).unbind(2)
    w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(64)).softmax(dim=2)
    a = torch.einsum("nqk,nck->ncq", w, v).reshape(2, 128, 3, 3)
    torch.testing.assert_close(out, (block.proj(a) + y) * block.skip_scale, atol=1e-5, rtol=1e-5)


def test_songunet_label_minus_one_is_the_zero_label():
    net = _randomize(SongUNetConfig(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,)).build((3, 16, 16), 3, 0, 4))
    x, t, _, _ = _inputs()
    assert torch.equal(net(x, t, torch.tensor([-1, -1])), net(x, t, None))


# ------------------------------------------------------------------------------- EDM-style pickles

_EDM_NAMES = {SongUNet: "SongUNet", DhariwalUNet: "DhariwalUNet", UNetBlock: "UNetBlock", Conv2d: "Conv2d",
              nn.Linear: "Linear", nn.GroupNorm: "GroupNorm", PositionalEmbedding: "PositionalEmbedding",
              FourierEmbedding: "FourierEmbedding"}


class _Precond(nn.Module):
    """Stands for EDM's EDMPrecond / VPPrecond and ECT's ECMPrecond: `model` plus the scalars they keep."""

    def __init__(self, model, class_name, **scalars):
        super().__init__()
        self.model, self.class_name = model, class_name
        self.__dict__.update(scalars)


class _ECMLoss:
    """Like ECT's loss, it keeps a bound method as an attribute (pickled with builtins.getattr)."""

    def __init__(self):
        self.P_mean, self.P_std = -1.1, 2.0
        self.t_to_r = self.t_to_r_sigmoid

    def t_to_r_sigmoid(self, t):
        return t


class _PersistencePickler(PersistencePickler):
    """EDM's persistent classes; each stores its __dict__ (one dict per object, as persistence pickles obj.__dict__
    itself) with the constructor's keyword arguments, keyed by the object's id."""

    def __init__(self, file, reconstruct, kwargs: dict, module_src: str = "# the module's source"):
        super().__init__(file, reconstruct, module_src)
        self.kwargs, self.states = kwargs, {}

    def name_of(self, obj):
        if isinstance(obj, _Precond):
            return obj.class_name
        if isinstance(obj, _ECMLoss):
            return "ECMLoss"
        return _EDM_NAMES.get(type(obj))

    def state_of(self, obj, name):
        if id(obj) not in self.states:
            state = self.states[id(obj)] = dict(obj.__dict__, _init_args=(), _init_kwargs=self.kwargs.get(id(obj), {}))
            if isinstance(obj, UNetBlock):
                state["skip_scale"] = np.float64(obj.skip_scale)      # EDM stores np.sqrt(0.5)
        return self.states[id(obj)]


@pytest.fixture
def persistence(monkeypatch):
    """A stand-in `torch_utils.persistence` module so that pickles name its reconstruct function."""
    return install_persistence(monkeypatch)


def _edm_kwargs(cfg, shape, num_classes):
    kw = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items() if k != "arch"}
    return dict(img_resolution=shape[-1], in_channels=shape[0], out_channels=shape[0], label_dim=num_classes,
                label_dropout=0, **kw)


def _write_edm_pickle(path, reconstruct, net, cfg, shape, num_classes=0, precond="EDMPrecond", module_src="# source", **scalars):
    data = {"ema": _Precond(net, precond, sigma_data=0.5, **scalars), "loss_fn": _ECMLoss(), "augment_pipe": None, "dataset_kwargs": {"path": "cifar10.zip"}}
    with open(path, "wb") as f:
        _PersistencePickler(f, reconstruct, {id(net): _edm_kwargs(cfg, shape, num_classes)}, module_src).dump(data)


SONG_TINY = SongUNetConfig(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), augment_dim=9)
NCSN_TINY = SongUNetConfig(model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), embedding_type="fourier",
                           channel_mult_noise=2, encoder_type="residual", resample_filter=(1, 3, 3, 1))
DHARIWAL_TINY = DhariwalUNetConfig(model_channels=64, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,))


def _outputs(net, classes=0):
    x, t, y, _ = _inputs()
    with torch.no_grad():
        return net(x, t, y % classes if classes else None)


@pytest.mark.parametrize("cfg, classes, precond, scalars, expected", [
    (SONG_TINY, 0, "EDMPrecond", {}, ("diffusion", "edm", 0.002)),
    (NCSN_TINY, 0, "VPPrecond", {"beta_d": 19.9, "beta_min": 0.1, "M": 1000, "epsilon_t": 1e-5}, ("diffusion", "vp", 19.9)),
    (DHARIWAL_TINY, 10, "ECMPrecond", {"sigma_min": 0.002}, ("ect", "edm", 0.002))])
def test_edm_pickle_round_trip_through_convert_preserves_outputs(tmp_path, persistence, cfg, classes, precond, scalars, expected):
    net = _randomize(cfg.build((3, 16, 16), 3, 0, classes))
    _write_edm_pickle(tmp_path / "network-snapshot.pkl", persistence, net, cfg, (3, 16, 16), classes, precond, **scalars)
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "network-snapshot.pkl"), "--out", str(tmp_path / "model")])
    assert result.exit_code == 0, result.output
    state, meta = read_model(tmp_path / "model")
    assert meta["network"]["arch"] == cfg.arch and meta["shape"] == [3, 16, 16] and meta["num_classes"] == classes
    precond_name, process_name, number = expected
    assert (meta["precond"], meta["process"]["name"]) == (precond_name, process_name)
    assert meta["process"]["beta_d" if process_name == "vp" else "sigma_min"] == number
    loaded = build_network(meta)
    loaded.load_state_dict(state, strict=True)
    assert torch.equal(_outputs(loaded.eval(), classes), _outputs(net, classes))


def test_adm_round_trip_through_convert_preserves_outputs(tmp_path):
    cfg, net = _tiny_adm()
    torch.save(net.state_dict(), tmp_path / "cd_tiny_l2.pt")
    out = tmp_path / "cd.safetensors"
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "cd_tiny_l2.pt"), "--out", str(out),
                                      "--set", "shape=[3,16,16]", "--set", "network.num_head_channels=16"])
    assert result.exit_code == 0, result.output
    state, meta = read_model(out)
    assert (meta["precond"], meta["method"], meta["source"]) == ("consistency", "cd", "cd_tiny_l2.pt")
    loaded = build_network(meta)
    loaded.load_state_dict(state, strict=True)
    assert torch.equal(_outputs(loaded.eval(), 10), _outputs(net, 10))


def test_ddbm_checkpoint_with_conv1d_attention_converts(tmp_path):
    _, net = _tiny_adm(cond=3, classes=0)
    sd = {k: v[..., 0] if k.endswith(("qkv.weight", "proj_out.weight")) else v for k, v in net.state_dict().items()}
    torch.save(sd, tmp_path / "e2h_ema_0.9999_420000.pt")
    state, meta = import_checkpoint(tmp_path / "e2h_ema_0.9999_420000.pt", shape=[3, 16, 16], network={"num_head_channels": 16})
    assert (meta["method"], meta["cond_channels"], meta["step"], meta["process"]["name"]) == ("ddbm", 3, 420000, "bridge-vp")
    assert tuple(state["middle_block.1.qkv.weight"].shape) == (192, 64, 1, 1)       # canonical conv2d form
    loaded = build_network(meta)
    loaded.load_state_dict(state, strict=True)
    x, t, _, c = _inputs(cond=3)
    assert torch.equal(loaded(x, t, cond=c), net(x, t, cond=c))


def test_convert_info_prints_the_exact_parameter_count(tmp_path):
    _, net = _tiny_adm()
    torch.save(net.state_dict(), tmp_path / "edm_tiny.pt")
    n = sum(v.numel() for v in net.state_dict().values())          # the ADM UNet has no buffers
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "edm_tiny.pt"), "--info", "--set", "shape=[3,16,16]",
                                      "--set", "network.num_head_channels=16"])
    assert result.exit_code == 0, result.output
    assert f"parameters: {n:,} ({n})" in result.output
    assert "arch: adm" in result.output and "precond: diffusion" in result.output
    assert not any(tmp_path.glob("*.safetensors"))


# -------------------------------------------------------------------------------------- refusals, errors

class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"ema": _RunsCode(marker)}, f)
    with pytest.raises(UserError, match=r"refusing to unpickle (posix|os|nt)\.system from .*evil\.pkl: not an EDM/ECT network"):
        import_checkpoint(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_persistent_class_source_is_never_executed(tmp_path, persistence):
    marker = tmp_path / "pwned"
    source = f"open({str(marker)!r}, 'w').close()"
    net = SONG_TINY.build((3, 16, 16), 3)
    _write_edm_pickle(tmp_path / "known.pkl", persistence, net, SONG_TINY, (3, 16, 16), module_src=source)
    import_checkpoint(tmp_path / "known.pkl")                       # a known class: recorded, its source not run
    with open(tmp_path / "unknown.pkl", "wb") as f:
        pickle.dump({"ema": _Unknown(persistence, source)}, f, protocol=4)
    with pytest.raises(UserError, match=r"refusing to unpickle the persistent class 'Backdoor' from .*unknown\.pkl"):
        import_checkpoint(tmp_path / "unknown.pkl")
    assert not marker.exists()


class _Unknown:
    def __init__(self, reconstruct, source):
        self.reconstruct, self.source = reconstruct, source

    def __reduce__(self):
        return self.reconstruct, (persistent_meta("Backdoor", {}, self.source),)


def test_checkpoint_of_another_resolution_names_expected_and_found(tmp_path, persistence):
    net = SONG_TINY.build((3, 16, 16), 3)
    _write_edm_pickle(tmp_path / "snap.pkl", persistence, net, SONG_TINY, (3, 16, 16))
    with pytest.raises(UserError, match=r"songunet network for 3x32x32 images.*missing \(e\.g\. enc\.32x32_conv\.weight\)"
                                        r".*unexpected \(e\.g\. enc\.16x16_conv\.weight\)"):
        import_checkpoint(tmp_path / "snap.pkl", shape=[3, 32, 32])


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    _, net = _tiny_adm()
    torch.save(net.state_dict(), tmp_path / "cd_tiny.pt")
    with pytest.raises(UserError, match=r"dhariwal network for 3x16x16 images\): weights do not fit .*"
                                        r"missing \(e\.g\. map_layer0\.weight\).*unexpected \(e\.g\. time_embed\.0\.weight\)"):
        import_checkpoint(tmp_path / "cd_tiny.pt", shape=[3, 16, 16], network={"arch": "dhariwal"})
    with pytest.raises(UserError, match=r"of another shape \(e\.g\. input_blocks\.3\.0\.in_layers\.2\.weight: "
                                        r"expected \(96, 32, 3, 3\), found \(64, 32, 3, 3\)\)"):
        import_checkpoint(tmp_path / "cd_tiny.pt", shape=[3, 16, 16], network={"num_head_channels": 16, "channel_mult": [1, 3]})
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "cd_other.pt")
    with pytest.raises(UserError, match=r"not a state dict of guided-diffusion's ADM UNet"):
        import_checkpoint(tmp_path / "cd_other.pt", shape=[3, 16, 16])
    torch.save(net.state_dict(), tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"image size of an ADM checkpoint .* --set shape="):
        import_checkpoint(tmp_path / "model.pt")
