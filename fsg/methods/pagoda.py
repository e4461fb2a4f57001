"""PaGoDA: a one-step generator distilled from a low-resolution teacher and grown past its resolution
(Kim et al., NeurIPS 2024; reference code sony/pagoda, `cm/karras_diffusion.py::pgd_losses`).

Stage 2 (`stage: distill`): G starts as a copy of the teacher, is called once at sigma_max and learns to
decode the teacher's PF-ODE inversion z = Enc(x) of each data image x back to x:

    L_G = d(G(z), x) + lambda_GAN w L_GAN(G(z')),  z' ~ N(0, sigma_max^2 I),  L_GAN = -D(G(z'))
    L_D = relu(1 - D(x)) + relu(1 + D(G(z')))      (hinge; even steps update G, odd steps D)
    w   = ||grad_last L_rec|| / (||grad_last L_GAN|| + 1e-4), clipped to [0.01, 10]   (VQGAN's adaptive weight)

Stage 3 (`stage: grow`): the data is at 2^k times the teacher's resolution; G (from --init) gets k more
decoder levels (fsg.nets.grow), every matching weight is copied, and with `activate_from` only the base's
output blocks from that index on, the new levels and the output layer train. The encoder stays the same
frozen teacher on the average-pooled image.

Stage encode (`stage: encode`, run by `fsg grow-decoder` without training): z = Enc(x) of every training item
(and of its mirror image with `data.flip`) written to sharded files (fsg.train.latents); the other stages read
them with `latents: DIR`. Without it, each item is inverted on first use and kept in memory.

The exported generator records its teacher (path and weight fingerprint) and `inversion_steps`, so that
`fsg edit superres` / `fsg edit invert` can encode new images with the same encoder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fsg.core.distances import consistency_distance
from fsg.core.inversion import decode, encode, to_latent_resolution
from fsg.core.process import randn
from fsg.errors import UserError
from fsg.methods.base import Method
from fsg.methods.consistency import load_lpips
from fsg.models.meta import load_state_strict, model_fingerprint, network_config_from_meta
from fsg.nets.grow import GrownConfig, GrownNet, copy_matching, freeze_by_block, grown_config, upsampling_factor

GAN_WEIGHT_RANGE = (0.01, 10.0)      # clip of the adaptive weight (reference: 0.01 and 10)


@dataclass(frozen=True)
class PaGoDAConfig:
    name: Literal["pagoda"] = "pagoda"
    stage: Literal["encode", "distill", "grow"] = "distill"   # encode: latents to disk; distill: at the teacher's
                                                              # resolution; grow: at 2^k times it
    inversion_steps: int = 40                # Heun steps of the encoder's PF-ODE inversion (reference: 40)
    distance: Literal["l2", "pseudo-huber", "lpips"] = "lpips"   # reconstruction d(G(z), x)
    huber_c: float | None = None             # pseudo-Huber c (None: 0.00054 sqrt(d))
    gan_weight: float = 0.0                  # discriminator_weight lambda_GAN (0: no GAN, no discriminator)
    adaptive_weight: bool = True             # scale the GAN term by the clipped VQGAN adaptive weight w
    disc_lr: float = 2e-3                    # discriminator learning rate (reference: 2e-3, RAdam)
    disc_channels: int = 64                  # width of the first discriminator layer
    grow_channels: int = 192                 # channels of appended levels (num_channels_high)
    grow_res_blocks: int = 2                 # ResBlocks per appended level after its up-ResBlock (num_res_blocks_high)
    activate_from: int | None = None         # train only the base's output blocks >= this index, new levels, out (None: all)
    cache_latents: bool = True               # keep each data item's z in memory after its first inversion
    latents: str | None = None               # a folder of `--stage encode` latents, read instead of inverting
    shard_size: int = 1024                   # stage encode: latents per shard file (the unit of resuming)


class Discriminator(nn.Module):
    """A small convolutional discriminator trained from scratch: stride-2 convs down to 4x4, one logit
    per sample. (The reference's projected StyleGAN-XL discriminator needs DeiT/EfficientNet weights.)"""

    def __init__(self, channels_in: int, resolution: int, width: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels_in, width, 3, padding=1), nn.LeakyReLU(0.2)]
        ch = width
        while resolution > 4:
            layers += [nn.Conv2d(ch, min(2 * ch, 8 * width), 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            ch, resolution = min(2 * ch, 8 * width), resolution // 2
        layers.append(nn.Conv2d(ch, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1).mean(1)                               # (N,)


def hinge_disc_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """relu(1 - D(x)) + relu(1 + D(G(z'))), averaged over the batch."""
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def adaptive_gan_weight(rec_grad_norm: torch.Tensor, gan_grad_norm: torch.Tensor) -> torch.Tensor:
    """w = ||grad L_rec|| / (||grad L_GAN|| + 1e-4) at the last layer, clipped to [0.01, 10]
    (Eq. 7 of Esser et al. 2021, as PaGoDA's `calculate_adaptive_weight`)."""
    return (rec_grad_norm / (gan_grad_norm + 1e-4)).clamp(*GAN_WEIGHT_RANGE)


def last_layer(net: nn.Module) -> torch.Tensor:
    """The weight of the generator's output conv, where the adaptive weight compares gradients."""
    return net.out[-1].weight


class PaGoDAMethod(Method):
    name = "pagoda"
    config = PaGoDAConfig
    precond = "diffusion"
    command = "grow-decoder"
    processes = ("edm",)
    images_only = True
    paired = False
    needs_teacher = True
    init_from_teacher = True
    default_sampler = "pagoda"
    default_steps = 1

    def __init__(self, cfg: PaGoDAConfig, model, process, **kw):
        super().__init__(cfg, model, process, **kw)
        self.factor = model.net.factor if isinstance(model.net, GrownNet) else 1
        if cfg.activate_from is not None and isinstance(model.net, GrownNet):
            freeze_by_block(model.net, cfg.activate_from)
        device = next(model.parameters()).device
        self.lpips = load_lpips(device) if cfg.distance == "lpips" else None
        self.disc = None
        if cfg.stage == "encode":
            raise UserError("method.stage encode writes latents and trains nothing: run it with `fsg grow-decoder`")
        self.teacher_fingerprint = model_fingerprint(self.teacher.net)
        if cfg.gan_weight > 0:
            self.disc = Discriminator(self.run.shape[0], self.run.shape[-1], cfg.disc_channels)   # at the output resolution
        self.store = self.run.latents
        self.cache: dict[tuple[int, bool], torch.Tensor] | None = {} if cfg.cache_latents and self.store is None else None

    # ------------------------------------------------------------------ start model (called by build_run)
    @staticmethod
    def start_network(cfg: PaGoDAConfig, dropout: float | None, start, teacher, shape, cond_channels: int):
        """The generator's network: the start model (teacher or --init; `LoadedModel`s), grown by k levels when the
        data is 2^k times its resolution, with every matching weight copied, and with `dropout` when given.
        Returns (network config, network)."""
        t_shape = tuple(teacher.meta["shape"])
        if cond_channels or len(shape) != 3 or len(t_shape) != 3 or shape[0] != t_shape[0]:
            raise UserError(f"PaGoDA needs unconditional images with the teacher's channels; the data has shape "
                            f"{tuple(shape)}, the teacher {t_shape}")
        ratio = shape[-1] // t_shape[-1]
        if ratio * t_shape[-1] != shape[-1] or ratio & (ratio - 1):
            raise UserError(f"the data's resolution {shape[-1]} must be the teacher's {t_shape[-1]} times a power of 2")
        start_cfg = network_config_from_meta(start.meta)
        if dropout is not None:
            start_cfg = replace(start_cfg, dropout=float(dropout))
        have = upsampling_factor(start_cfg)
        if start.meta.get("method") == "pagoda" and tuple(start.meta["shape"][1:]) != tuple(s * have for s in t_shape[1:]):
            raise UserError(f"--init model {start.path} was not grown from a teacher of shape {t_shape}")
        if cfg.stage == "distill" and ratio != 1:
            raise UserError(f"method.stage distill trains at the teacher's resolution {t_shape[-1]}, the data has "
                            f"{shape[-1]}: set data.downsample, or use method.stage grow with --init")
        if cfg.stage == "grow" and start is teacher:
            raise UserError("method.stage grow needs --init (the generator of the previous stage)")
        if ratio < have:
            raise UserError(f"--init model {start.path} outputs {have}x the teacher's resolution, more than the data's {ratio}x")
        out_ch, num_classes = start.meta["out_channels"], start.meta.get("num_classes", 0)
        old_state = start.denoiser.net.state_dict()
        if ratio == have:
            net = start_cfg.build(shape, out_ch, 0, num_classes)
            load_state_strict(net, old_state, str(start.path))
            return start_cfg, net
        net_cfg = grown_config(start_cfg, int(math.log2(ratio // have)), cfg.grow_channels, cfg.grow_res_blocks)
        net = net_cfg.build(shape, out_ch, 0, num_classes)
        copy_matching(net, old_state, plain=not isinstance(start_cfg, GrownConfig))
        return net_cfg, net

    # ------------------------------------------------------------------ engine interface
    def trainable(self) -> dict[str, nn.Module]:
        return {"model": self.model} if self.disc is None else {"model": self.model, "disc": self.disc}

    def optimizer_overrides(self, name: str):
        return {"lr": self.cfg.disc_lr} if name == "disc" else {}

    def frozen(self):
        return [*super().frozen(), *([self.lpips] if self.lpips is not None else [])]

    def export_meta(self):
        return {**super().export_meta(), "latent_factor": self.factor, "inversion_steps": self.cfg.inversion_steps,
                "teacher_fingerprint": self.teacher_fingerprint}

    # ------------------------------------------------------------------ losses
    def latents(self, batch: dict[str, torch.Tensor], labels: torch.Tensor | None) -> torch.Tensor:
        """z = Enc(x) of each item: from the latent store (`method.latents`), else inverted now, or read from
        the in-memory cache where it was inverted before. Items are keyed by (index, flip)."""
        x = batch["x"]
        resolution = x.shape[-1] // self.factor
        flips = batch.get("flip", torch.zeros_like(batch["index"], dtype=torch.bool))
        if self.store is not None:
            return self.store.lookup(batch["index"], flips, to_latent_resolution(x, resolution))
        if self.cache is None:
            return encode(self.teacher, x, resolution, self.cfg.inversion_steps, labels)
        keys = list(zip(batch["index"].tolist(), [bool(f) for f in flips.tolist()]))
        missing = [i for i, k in enumerate(keys) if k not in self.cache]
        if missing:
            sub = None if labels is None else labels[missing]
            z = encode(self.teacher, x[missing], resolution, self.cfg.inversion_steps, sub)
            for i, z_i in zip(missing, z.cpu()):
                self.cache[keys[i]] = z_i
        return torch.stack([self.cache[k] for k in keys]).to(x.device)       # (N, C, r, r)

    def prior(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """z' ~ N(0, sigma_max^2 I) at the latent resolution."""
        r = x.shape[-1] // self.factor
        return randn((x.shape[0], x.shape[1], r, r), gen, x.device) * self.process.sigma_max

    def generate(self, net, z: torch.Tensor, labels) -> torch.Tensor:
        return decode(net, z, self.factor, self.process.sigma_max, labels)

    def loss(self, nets, batch, step, gen):
        x, labels = batch["x"], batch.get("label")
        if self.disc is not None and step % 2 == 1:
            return self.disc_loss(nets, x, labels, gen)
        rec_dist = consistency_distance(self.generate(nets["model"], self.latents(batch, labels), labels), x,
                                        self.cfg.distance, self.cfg.huber_c, self.lpips)
        l_rec = rec_dist.mean()
        if self.disc is None:
            return {"model": l_rec}, {"rec": l_rec.item()}
        fake = self.generate(nets["model"], self.prior(x, gen), labels)
        l_gan = -nets["disc"](fake).mean()
        w = self.gan_weight(l_rec, l_gan) if self.cfg.adaptive_weight else torch.ones(())
        return ({"model": l_rec + self.cfg.gan_weight * w * l_gan},
                {"rec": l_rec.item(), "gan_g": l_gan.item(), "gan_w": float(w)})

    def gan_weight(self, l_rec: torch.Tensor, l_gan: torch.Tensor) -> torch.Tensor:
        last = last_layer(self.model.net)
        g_rec, = torch.autograd.grad(l_rec, last, retain_graph=True)
        g_gan, = torch.autograd.grad(l_gan, last, retain_graph=True)
        return adaptive_gan_weight(g_rec.norm(), g_gan.norm()).detach()

    def disc_loss(self, nets, x, labels, gen):
        with torch.no_grad():
            fake = self.generate(nets["model"], self.prior(x, gen), labels)
        l_d = hinge_disc_loss(nets["disc"](x), nets["disc"](fake.detach()))
        return {"disc": l_d}, {"gan_d": l_d.item()}
