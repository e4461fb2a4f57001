"""EDM2 pickles without executing them: a randomly initialised EDM2 network written the way NVlabs/edm2's
training_loop.py writes its snapshots (torch_utils.persistence records with the module source, an EasyDict of
encoder, dataset_kwargs, loss_fn and a float16 `ema` Precond) loads through `fsg convert` and `fsg sample --model`
with nothing executed, and gives the outputs it gave before saving."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fsg.cli import app
from fsg.core.edm import EDMProcess
from fsg.data.vae import latent_scale_bias
from fsg.errors import UserError
from fsg.io.checkpoint import read_model, save_model
from fsg.io.config import to_dict
from fsg.models.denoiser import Denoiser
from fsg.models.importers import import_checkpoint
from fsg.models.load import load_model
from fsg.nets.edm2 import Block, EDM2UNetConfig, MPConv, MPFourier, UNet
from tests.persistence import PersistencePickler, install_easydict, install_persistence

CFG = EDM2UNetConfig(model_channels=32, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,), channels_per_head=32,
                     dropout=0.1)


class _Precond(nn.Module):
    """Stands for EDM2's Precond: the same modules as fsg's network and the attributes EDM2 keeps."""

    def __init__(self, net, resolution, channels, classes):
        super().__init__()
        self.unet, self.logvar_fourier, self.logvar_linear = net.unet, net.logvar_fourier, net.logvar_linear
        self.img_resolution, self.img_channels, self.label_dim = resolution, channels, classes
        self.use_fp16, self.sigma_data = True, 0.5


class _Loss:
    def __init__(self, P_mean, P_std):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, 0.5


class _VAEEncoder:
    def __init__(self):
        scale, bias = latent_scale_bias()
        self.vae_name, self.batch_size, self._vae = "stabilityai/sd-vae-ft-mse", 8, None
        self.scale, self.bias = np.float32(scale), np.float32(bias)


class _RGBEncoder:
    pass


class _PersistencePickler(PersistencePickler):
    """EDM2's persistent classes by name; each stores its __dict__ plus the constructor's keyword arguments."""

    names = {_Precond: "Precond", UNet: "UNet", Block: "Block", MPConv: "MPConv", MPFourier: "MPFourier",
             _Loss: "EDM2Loss", _VAEEncoder: "StabilityVAEEncoder", _RGBEncoder: "StandardRGBEncoder"}

    def __init__(self, file, reconstruct, kwargs, module_src, protocol):
        super().__init__(file, reconstruct, module_src, protocol)
        self.kwargs = kwargs

    def name_of(self, obj):
        return self.names.get(type(obj))

    def state_of(self, obj, name):
        return dict(obj.__dict__, _init_args=(), _init_kwargs=self.kwargs.get(name, {}))


@pytest.fixture
def edm2_modules(monkeypatch):
    """Stand-ins for torch_utils.persistence and dnnlib.util, so that pickles name their globals as EDM2's do."""
    return install_persistence(monkeypatch), install_easydict(monkeypatch)


def _random_edm2(shape, classes, seed=0):
    """A random EDM2 network with nonzero gains, rounded to float16 as EDM2's snapshots store it."""
    torch.manual_seed(seed)
    net = CFG.build(shape, shape[0], 0, classes)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim == 0:
                p.fill_(0.3 + torch.rand(()).item())
    return net.half().float().eval()


def write_edm2_pickle(path, modules, net, shape, classes, latent=False, module_src="# networks_edm2.py", protocol=4,
                      unet_kwargs=None):
    reconstruct, EasyDict = modules
    precond = copy.deepcopy(_Precond(net, shape[-1], shape[0], classes)).eval().requires_grad_(False).to(torch.float16)
    kwargs = {"UNet": dict(img_resolution=shape[-1], img_channels=shape[0], label_dim=classes, model_channels=32,
                           channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], channels_per_head=32, dropout=0.1,
                           **(unet_kwargs or {}))}
    data = EasyDict(encoder=_VAEEncoder() if latent else _RGBEncoder(),
                    dataset_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset", path="img.zip", use_labels=True),
                    loss_fn=_Loss(-0.4 if latent else -0.8, 1.0 if latent else 1.6), ema=precond)
    with open(path, "wb") as f:
        _PersistencePickler(f, reconstruct, kwargs, module_src, protocol).dump(data)


def _outputs(net, shape, classes):
    g = torch.Generator().manual_seed(3)
    x, sigma = torch.randn(4, *shape, generator=g), torch.tensor([0.01, 0.3, 2.0, 60.0])
    labels = torch.arange(4) % classes if classes else None
    with torch.no_grad():
        return Denoiser(net, EDMProcess(sigma_data=0.5))(x, sigma, labels=labels), net.logvar(sigma.log() / 4)


@pytest.mark.parametrize("shape, classes, latent, protocol", [((3, 16, 16), 10, False, 4), ((4, 16, 16), 10, True, 4),
                                                               ((4, 16, 16), 0, True, 5)])
def test_edm2_pickle_converts_with_nothing_executed_and_the_same_outputs(tmp_path, edm2_modules, shape, classes,
                                                                         latent, protocol):
    marker = tmp_path / "executed"
    net = _random_edm2(shape, classes)
    write_edm2_pickle(tmp_path / "edm2-img-s-0001234-0.100.pkl", edm2_modules, net, shape, classes, latent,
                      module_src=f"open({str(marker)!r}, 'w').close()", protocol=protocol)
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "edm2-img-s-0001234-0.100.pkl"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    meta = read_model(tmp_path / "m")[1]
    assert not marker.exists()
    assert (meta["network"]["arch"], meta["shape"], meta["num_classes"], meta["precond"]) == ("edm2", list(shape), classes, "diffusion")
    assert (meta["process"]["sigma_data"], meta["process"]["P_mean"]) == (0.5, -0.4 if latent else -0.8)
    assert meta["sample"] == {"sampler": "heun", "steps": 32} and meta["network"]["dropout"] == 0.1
    if latent:
        scale, bias = latent_scale_bias()
        assert meta["vae"]["name"] == "stabilityai/sd-vae-ft-mse"
        assert np.allclose(meta["vae"]["scale"], scale) and np.allclose(meta["vae"]["bias"], bias)
    else:
        assert "vae" not in meta
    loaded = load_model(tmp_path / "m").denoiser.net
    assert all(torch.equal(a, b) for a, b in zip(_outputs(loaded, shape, classes), _outputs(net, shape, classes)))


def test_fsg_sample_reads_the_pickle_directly(tmp_path, edm2_modules):
    """`fsg sample --model x.pkl` gives the samples of the network before it was pickled (EDM's process, sigma_data 0.5)."""
    marker = tmp_path / "executed"
    net = _random_edm2((3, 16, 16), 10)
    write_edm2_pickle(tmp_path / "snap.pkl", edm2_modules, net, (3, 16, 16), 10, module_src=f"open({str(marker)!r}, 'w').close()")
    meta = {"format": 1, "process": to_dict(EDMProcess(sigma_data=0.5)), "precond": "diffusion", "network": to_dict(CFG),
            "shape": [3, 16, 16], "out_channels": 3, "cond_channels": 0, "num_classes": 10, "method": "edm2", "step": 0,
            "sample": {"sampler": "heun", "steps": 32}}
    save_model(tmp_path / "before.safetensors", net.state_dict(), meta)
    runner = CliRunner()
    for name, model in (("pkl", "snap.pkl"), ("before", "before.safetensors")):
        r = runner.invoke(app, ["sample", "--model", str(tmp_path / model), "--steps", "3", "-n", "4", "--seed", "5",
                                "--out", str(tmp_path / f"{name}.npz"), "--device", "cpu"])
        assert r.exit_code == 0 and "NFE 5" in r.output, r.output
    a, b = np.load(tmp_path / "pkl.npz"), np.load(tmp_path / "before.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    assert not marker.exists()


def test_convert_info_counts_the_parameters(tmp_path, edm2_modules):
    net = _random_edm2((3, 16, 16), 10)
    write_edm2_pickle(tmp_path / "snap.pkl", edm2_modules, net, (3, 16, 16), 10)
    n = sum(p.numel() for p in net.parameters())
    r = CliRunner().invoke(app, ["convert", str(tmp_path / "snap.pkl"), "--info"])
    assert r.exit_code == 0 and f"parameters: {n:,} ({n})" in r.output and "arch: edm2" in r.output, r.output


def test_an_ect_dropout_resolution_is_kept(tmp_path, edm2_modules):
    """locuslab/ect's imgnet UNet records dropout_res; `--set network.dropout_res=16` sets it on EDM2's own."""
    net = _random_edm2((3, 16, 16), 10)
    write_edm2_pickle(tmp_path / "ect.pkl", edm2_modules, net, (3, 16, 16), 10, unet_kwargs={"dropout_res": 8})
    assert import_checkpoint(tmp_path / "ect.pkl")[1]["network"]["dropout_res"] == 8
    write_edm2_pickle(tmp_path / "edm2.pkl", edm2_modules, net, (3, 16, 16), 10)
    assert import_checkpoint(tmp_path / "edm2.pkl", network={"dropout_res": 16})[1]["network"]["dropout_res"] == 16


def test_options_fsg_does_not_implement_are_refused(tmp_path, edm2_modules):
    net = _random_edm2((3, 16, 16), 10)
    write_edm2_pickle(tmp_path / "fir.pkl", edm2_modules, net, (3, 16, 16), 10, unet_kwargs={"resample_filter": [1, 3, 3, 1]})
    with pytest.raises(UserError, match=r"fir\.pkl: an EDM2 UNet with resample_filter other than \[1, 1\]"):
        import_checkpoint(tmp_path / "fir.pkl")
    write_edm2_pickle(tmp_path / "new.pkl", edm2_modules, net, (3, 16, 16), 10, unet_kwargs={"mystery": 1})
    with pytest.raises(UserError, match=r"new\.pkl: an EDM2 UNet with an option fsg does not implement.*mystery"):
        import_checkpoint(tmp_path / "new.pkl")


def test_object_arrays_are_refused(tmp_path):
    """numpy arrays are rebuilt from raw bytes of a plain dtype only; an object array (which would unpickle its items)
    is refused."""
    with open(tmp_path / "obj.pkl", "wb") as f:
        pickle.dump({"ema": np.array([1, 2], dtype=object)}, f, protocol=4)
    with pytest.raises(UserError, match=r"obj\.pkl: unreadable pickle .*object dtype"):
        import_checkpoint(tmp_path / "obj.pkl")
