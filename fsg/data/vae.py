"""SD-VAE latents, the data of EDM2's ImageNet-512 models (NVlabs/edm2 `training/encoders.py` StabilityVAEEncoder,
`dataset_tool.py encode`), through diffusers' `AutoencoderKL` loaded from a local folder (never downloaded).

    pixels u8 -> u8 / 255 in [0, 1] -> VAE.encode -> (mean, std) of the posterior: 4 + 4 channels at 1/8 size
                                                              ("raw", stored once: `encode_dataset`)
    final latents z = (mean + std eps) scale + bias,  scale = 0.5 / raw_std,  bias = -raw_mean scale   (per channel)
    decode: z -> (z - bias) / scale -> VAE.decode -> [0, 1] -> fsg's [-1, 1]

EDM2 feeds the VAE [0, 1] pixels, not the [-1, 1] Stable Diffusion uses (NVlabs/edm2#9), and whitens each channel
with its own ImageNet statistics to std 0.5 = sigma_data instead of SD's single factor 0.18215; fsg keeps both, so
EDM2's checkpoints and latent datasets work unchanged. EDM2 draws eps afresh whenever a batch is encoded; here an item
carries the posterior mean as "x" and the posterior std as "latent_std" (both final), and eps is drawn by the batch's
generator (`draw_latents`).

Storage is EDM2's: `NNNNN/img-mean-std-NNNNNNNN.npy` float32 (8, h, w) files in a folder or zip, and a dataset.json
with the labels (and, written by fsg, the VAE and scale / bias under "fsg_vae"), so either side reads the other's.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fsg.errors import UserError
from fsg.io.checkpoint import atomic_write

RAW_MEAN = (5.81, 3.25, 0.12, -2.15)     # per-channel mean of sd-vae-ft-mse's raw latents on ImageNet (EDM2)
RAW_STD = (4.17, 4.62, 3.71, 3.28)       # per-channel std of the same
FINAL_STD = 0.5                          # the latents' std seen by the network: EDM's sigma_data
DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
LATENT_FILE = "img-mean-std-{:08d}.npy"
LABELS_FILE = "dataset.json"


def latent_scale_bias(raw_mean=RAW_MEAN, raw_std=RAW_STD, final_mean: float = 0.0,
                      final_std: float = FINAL_STD) -> tuple[list[float], list[float]]:
    """scale = final_std / raw_std and bias = final_mean - raw_mean scale, in float32 as EDM2 computes them, so that
    raw latents with the given per-channel mean and std become final_mean and final_std."""
    scale = np.float32(final_std) / np.asarray(raw_std, dtype=np.float32)
    bias = np.float32(final_mean) - np.asarray(raw_mean, dtype=np.float32) * scale
    return scale.tolist(), bias.tolist()


def vae_meta(name: str, scale: list[float], bias: list[float]) -> dict:
    """What a model's metadata records of its latent space (`meta["vae"]`): the VAE's name and the latent affine."""
    return {"kind": "stability-vae", "name": name, "scale": [float(v) for v in scale], "bias": [float(v) for v in bias]}


def _channel(values, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device)[None, :, None, None]   # (1, C, 1, 1)


def final_latents(raw: torch.Tensor, scale, bias) -> torch.Tensor:
    """raw latents (N, C, h, w) -> raw scale + bias per channel (encoders.py `encode_latents` without the draw)."""
    return raw * _channel(scale, raw) + _channel(bias, raw)


def raw_latents(z: torch.Tensor, scale, bias) -> torch.Tensor:
    """The inverse of `final_latents`: (z - bias) / scale."""
    return (z - _channel(bias, z)) / _channel(scale, z)


def draw_latents(batch: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """x <- x + latent_std eps, eps ~ N(0, I) from the batch's generator: a sample of the VAE posterior for each
    item, in final-latent units (EDM2 draws one per visit). A batch without "latent_std" is returned as is."""
    if "latent_std" not in batch:
        return batch
    batch = dict(batch)
    std = batch.pop("latent_std")
    eps = torch.randn(std.shape, generator=gen, device=gen.device).to(std.device)
    batch["x"] = batch["x"] + std * eps
    return batch


class StabilityVAE:
    """diffusers' AutoencoderKL from a local folder (`save_pretrained` layout: config.json and the weights), in
    eval mode without gradients, with EDM2's latent affine."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", scale=None, bias=None):
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise UserError(f"{folder}: not a diffusers AutoencoderKL folder (no config.json); download the VAE once, "
                            f"e.g. `huggingface-cli download {DEFAULT_VAE} --local-dir DIR`, and pass DIR")
        try:
            from diffusers import AutoencoderKL
        except ModuleNotFoundError:
            raise UserError("SD-VAE latents need diffusers: pip install 'fsg[latents]'") from None
        self.folder = folder
        self.device = torch.device(device)
        self.model = AutoencoderKL.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
        self.model.to(self.device).eval().requires_grad_(False)
        self.factor = 2 ** (len(self.model.config.block_out_channels) - 1)     # SD-VAE: 8
        default_scale, default_bias = latent_scale_bias()
        self.scale = default_scale if scale is None else list(scale)
        self.bias = default_bias if bias is None else list(bias)

    @torch.no_grad()
    def encode_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (N, 3, H, W) -> raw posterior mean and std (N, 8, H/f, W/f), float32 (encoders.py
        `encode_pixels`: the VAE sees (x + 1) / 2 = u8 / 255)."""
        dist = self.model.encode(((images + 1) / 2).to(self.device)).latent_dist
        return torch.cat([dist.mean, dist.std], dim=1).float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Final latents (N, 4, h, w) -> images in [-1, 1] (N, 3, H, W): encoders.py `decode` up to the uint8 step."""
        images = self.model.decode(raw_latents(z.to(self.device).float(), self.scale, self.bias)).sample
        return images.clamp(0, 1) * 2 - 1

    def meta(self) -> dict:
        return vae_meta(str(self.folder), self.scale, self.bias)


class LatentDecoder:
    """What `fsg sample` applies to a model's samples: the VAE decoder of a latent model, the identity otherwise."""

    def __init__(self, vae: StabilityVAE | None):
        self.vae = vae

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.vae is None else self.vae.decode(x).to(x.device)

    def image_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of one decoded sample: (3, f h, f w) for latents (C, h, w), f the VAE's downsampling factor."""
        if self.vae is None:
            return tuple(shape)
        return (3, shape[-2] * self.vae.factor, shape[-1] * self.vae.factor)


def latent_decoder(meta: dict, folder: str | Path | None, device) -> LatentDecoder:
    """The decoder of a model (its `meta["vae"]`); a latent model needs `folder`, the local copy of the VAE that
    `meta["vae"]["name"]` names, a pixel model none."""
    spec = meta.get("vae")
    if spec is None:
        if folder is not None:
            raise UserError("--vae: this model generates pixels, not VAE latents")
        return LatentDecoder(None)
    if folder is None:
        raise UserError(f"this model generates SD-VAE latents: pass --vae DIR, a local diffusers AutoencoderKL folder "
                        f"of {spec['name'] or DEFAULT_VAE}")
    return LatentDecoder(StabilityVAE(folder, device, spec["scale"], spec["bias"]))


# ------------------------------------------------------------------------------------------ stored latents

def latent_name(index: int) -> str:
    """EDM2's name of item `index` (dataset_tool.py `encode`): NNNNN/img-mean-std-NNNNNNNN.npy."""
    return f"{index // 1000:05d}/" + LATENT_FILE.format(index)


def encode_dataset(dataset, vae: StabilityVAE, out: str | Path, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None) -> int:
    """Encode every item of an fsg image dataset (x in [-1, 1], RGB) into OUT in EDM2's layout; dataset.json, with the
    labels and the VAE, is written last. Returns the number of items."""
    out = Path(out)
    labels = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        raw = vae.encode_pixels(torch.stack([item["x"] for item in items])).cpu().numpy()       # (B, 8, h, w)
        for item, array in zip(items, raw):
            index = int(item["index"])
            path = out / latent_name(index)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:
                np.save(f, array.astype(np.float32))
            labels.append([latent_name(index), int(item["label"])])
        if progress is not None:
            progress(start + len(items))
    table = {"labels": labels if dataset.num_classes else None, "fsg_vae": vae.meta()}
    atomic_write(out / LABELS_FILE, lambda tmp: Path(tmp).write_text(json.dumps(table)))
    return len(dataset)


class LatentDataset(torch.utils.data.Dataset):
    """Stored raw latents (EDM2's layout, a folder or a zip) as final latents: items "x" (the posterior mean, (4, h, w)),
    "latent_std" (its std), "label" and "index". `vae` is the latent affine and VAE of dataset.json's "fsg_vae", or
    EDM2's defaults for a dataset written by EDM2's dataset_tool."""

    kind = "latent"
    cond_shape = None

    def __init__(self, path: str | Path, labels: bool = False):
        self.path = Path(path)
        self.name = f"latents ({self.path})"
        self._archive = None
        if self.path.is_dir():
            names = sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*.npy"))
        elif zipfile.is_zipfile(self.path):
            with zipfile.ZipFile(self.path) as archive:
                names = sorted(n for n in archive.namelist() if n.endswith(".npy"))
        else:
            raise UserError(f"data.path: {self.path} is neither a folder nor a zip of latents (.npy)")
        if not names:
            raise UserError(f"data.path: {self.path} holds no latents (.npy files); write them with fsg.data.vae.encode_dataset")
        self.names = names
        table = self._table()
        spec = table.get("fsg_vae") or vae_meta(DEFAULT_VAE, *latent_scale_bias())
        self.vae = spec
        self.labels, self.num_classes = self._labels(table) if labels else (None, 0)
        self.shape = tuple(self[0]["x"].shape)

    def _read(self, name: str) -> bytes:
        if self.path.is_dir():
            return (self.path / name).read_bytes()
        if self._archive is None:                 # opened lazily, once per process (DataLoader workers)
            self._archive = zipfile.ZipFile(self.path)
        return self._archive.read(name)

    def _table(self) -> dict:
        try:
            return json.loads(self._read(LABELS_FILE))
        except (FileNotFoundError, KeyError):
            return {}
        except ValueError as e:
            raise UserError(f"data.path: {self.path}/{LABELS_FILE} is not JSON ({e})") from None

    def _labels(self, table: dict) -> tuple[torch.Tensor, int]:
        classes = {name: int(label) for name, label in table.get("labels") or []}
        missing = [n for n in self.names if n not in classes]
        if not classes or missing:
            raise UserError(f"data.labels: {self.path} has no label for {missing[0] if missing else 'any item'} in {LABELS_FILE}")
        labels = torch.tensor([classes[n] for n in self.names])
        return labels, int(labels.max()) + 1

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        raw = torch.from_numpy(np.load(io.BytesIO(self._read(self.names[i])), allow_pickle=False)).float()   # (8, h, w)
        mean, std = raw[None].chunk(2, dim=1)                                                             # (1, 4, h, w)
        scale = self.vae["scale"]
        x = final_latents(mean, scale, self.vae["bias"])[0]
        label = self.labels[i] if self.labels is not None else torch.tensor(-1)
        return {"x": x, "latent_std": (std * _channel(scale, std))[0], "label": label, "index": torch.tensor(i)}

