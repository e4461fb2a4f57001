"""SD-VAE latents (fsg.data.vae): EDM2's latent affine by hand, and the encode -> store -> read -> decode path with a
tiny randomly initialised AutoencoderKL that the test makes and saves locally (nothing is downloaded)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from fsg.data.vae import (RAW_MEAN, RAW_STD, LatentDataset, StabilityVAE, draw_latents, encode_dataset, final_latents,
                          latent_decoder, latent_name, latent_scale_bias, raw_latents)
from fsg.errors import UserError


def test_latent_scale_and_bias_by_hand():
    scale, bias = latent_scale_bias()
    assert np.allclose(scale, [0.5 / s for s in RAW_STD], rtol=1e-6)              # 0.5 / 4.17 = 0.119904...
    assert np.allclose(bias, [-m * 0.5 / s for m, s in zip(RAW_MEAN, RAW_STD)], rtol=1e-6)
    assert scale[0] == pytest.approx(0.119904, abs=1e-6) and bias[3] == pytest.approx(0.327744, abs=1e-6)


def test_raw_latents_with_edm2s_statistics_become_zero_mean_std_half():
    e = torch.randn(2000, 4, 2, 2, dtype=torch.float64)
    e = (e - e.mean(dim=(0, 2, 3), keepdim=True)) / e.std(dim=(0, 2, 3), keepdim=True)     # exactly standardised
    raw = torch.tensor(RAW_MEAN, dtype=torch.float64)[None, :, None, None] + torch.tensor(RAW_STD, dtype=torch.float64)[None, :, None, None] * e
    scale, bias = latent_scale_bias()
    z = final_latents(raw, scale, bias)
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(4, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2, 3)), torch.full((4,), 0.5, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(raw_latents(z, scale, bias), raw)


def test_draw_latents_adds_the_posterior_noise_from_the_batch_generator():
    batch = {"x": torch.zeros(3, 4, 2, 2), "latent_std": torch.full((3, 4, 2, 2), 0.1), "index": torch.arange(3)}
    out = draw_latents(batch, torch.Generator().manual_seed(7))
    assert "latent_std" not in out and torch.equal(out["index"], batch["index"])
    assert torch.allclose(out["x"], 0.1 * torch.randn((3, 4, 2, 2), generator=torch.Generator().manual_seed(7)))
    plain = {"x": torch.ones(2)}
    assert draw_latents(plain, torch.Generator()) is plain


class _Images(torch.utils.data.Dataset):
    num_classes = 3

    def __init__(self, n=5):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 16, 16, generator=g) * 2 - 1

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "label": torch.tensor(i % 3), "index": torch.tensor(i)}


def test_encode_store_read_decode(vae_folder, tmp_path):
    vae = StabilityVAE(vae_folder)
    images = _Images()
    dist = vae.model.encode((images.x[:2] + 1) / 2).latent_dist                   # EDM2 feeds the VAE [0, 1] pixels
    assert torch.allclose(vae.encode_pixels(images.x[:2]), torch.cat([dist.mean, dist.std], dim=1), atol=1e-6)

    assert encode_dataset(images, vae, tmp_path / "lat", batch_size=2) == 5
    assert (tmp_path / "lat" / "00000" / "img-mean-std-00000004.npy").is_file() and latent_name(1234) == "00001/img-mean-std-00001234.npy"
    table = json.loads((tmp_path / "lat" / "dataset.json").read_text())
    assert table["labels"][4] == ["00000/img-mean-std-00000004.npy", 1] and table["fsg_vae"]["scale"] == vae.scale

    with zipfile.ZipFile(tmp_path / "lat.zip", "w") as archive:
        for path in sorted((tmp_path / "lat").rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(tmp_path / "lat").as_posix())
    for source in (tmp_path / "lat", tmp_path / "lat.zip"):
        data = LatentDataset(source, labels=True)
        assert (len(data), data.shape, data.num_classes, data.kind) == (5, (4, 8, 8), 3, "latent")
        item = data[3]
        raw = vae.encode_pixels(images.x[3:4])                                        # (1, 8, 8, 8)
        assert torch.allclose(item["x"], final_latents(raw[:, :4], vae.scale, vae.bias)[0], atol=1e-5)
        assert torch.allclose(item["latent_std"], raw[0, 4:] * torch.tensor(vae.scale)[:, None, None], atol=1e-6)
        assert int(item["label"]) == 0 and int(item["index"]) == 3

    z = data[0]["x"][None]
    expected = vae.model.decode(raw_latents(z, vae.scale, vae.bias)).sample.clamp(0, 1) * 2 - 1
    decode = latent_decoder({"vae": vae.meta()}, vae_folder, "cpu")
    assert torch.allclose(decode(z), expected, atol=1e-6) and decode(z).shape == (1, 3, 16, 16)
    assert vae.factor == 2 and decode.image_shape((4, 8, 8)) == (3, 16, 16)


def test_user_errors(vae_folder, tmp_path):
    with pytest.raises(UserError, match=r"this model generates SD-VAE latents: pass --vae DIR"):
        latent_decoder({"vae": {"name": "stabilityai/sd-vae-ft-mse", "scale": [1] * 4, "bias": [0] * 4}}, None, "cpu")
    with pytest.raises(UserError, match=r"--vae: this model generates pixels"):
        latent_decoder({}, vae_folder, "cpu")
    identity = latent_decoder({}, None, "cpu")
    assert torch.equal(identity(torch.ones(1)), torch.ones(1)) and identity.image_shape((1, 8, 8)) == (1, 8, 8)
    with pytest.raises(UserError, match=r"not a diffusers AutoencoderKL folder \(no config\.json\)"):
        StabilityVAE(tmp_path)
    with pytest.raises(UserError, match=r"holds no latents"):
        LatentDataset(tmp_path)
