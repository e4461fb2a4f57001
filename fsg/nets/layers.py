"""Small layers several networks share: the pixel norm and the time modulation of residual blocks, with the
adaptive double normalisation of Lu & Song 2025 (Sec. 4.1) as an option."""

from __future__ import annotations

import torch


def pixel_norm(a: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """a / sqrt(mean_c a^2 + eps) over the channel axis (dim 1): unit RMS per sample (Karras et al. 2018)."""
    return a * torch.rsqrt(a.square().mean(dim=1, keepdim=True) + eps)


def modulate(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, double_norm: bool) -> torch.Tensor:
    """AdaGN: h (1 + scale) + shift of a normalised h; with `double_norm`, h pnorm(scale) + pnorm(shift), the
    adaptive double normalisation of Sec. 4.1 of Lu & Song 2025 (the scale and shift made unit-RMS over channels,
    so the time embedding cannot blow up the activations)."""
    if double_norm:
        return h * pixel_norm(scale) + pixel_norm(shift)
    return h * (1 + scale) + shift


def add_embedding(h: torch.Tensor, e: torch.Tensor, double_norm: bool) -> torch.Tensor:
    """h + e for blocks that add their embedding (DDPM++, the toy MLP); with `double_norm` the embedding is made
    unit-RMS first (fsg's reading of the double normalisation for blocks without AdaGN; the paper does not say)."""
    return h + (pixel_norm(e) if double_norm else e)


def at_least_float32(t: torch.Tensor) -> torch.Tensor:
    """t in float32, or float64 when it is float64: embeddings and norms run at least in float32 (as the references,
    under bf16/fp16 autocast too) without rounding a float64 input (finite-difference checks of JVPs)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class SecondTime(torch.nn.Module):
    """A second time input, as flow maps need (MeanFlow's interval h = t - r): its own sinusoidal embedding through a
    small MLP whose last layer starts at zero, added to the network's embedding. At initialisation the network is
    its single-time self, and the parameters of the single-time use keep their names (checkpoints still load)."""

    def __init__(self, embed: torch.nn.Module, in_dim: int, out_dim: int):
        super().__init__()
        self.embed = embed
        self.mlp = torch.nn.Sequential(torch.nn.Linear(in_dim, out_dim), torch.nn.SiLU(), torch.nn.Linear(out_dim, out_dim))
        torch.nn.init.zeros_(self.mlp[-1].weight)
        torch.nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embed(h))


def second_time(module: "SecondTime | None", time2: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | float:
    """The second time's embedding to add (0 for a single-time network; h = 0 when a two-time network gets none)."""
    if module is None:
        return 0.0
    h = time2 if time2 is not None else torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
    return module(h).to(like.dtype)


def small_net_embedding(net: torch.nn.Module, noise_labels: torch.Tensor, class_labels: torch.Tensor | None,
                        time2: torch.Tensor | None) -> torch.Tensor:
    """The conditioning embedding of fsg's small networks (the MLP and the UNet): time MLP of the noise label, plus
    the second time (flow maps), plus the class embedding, where a missing label is the null class (index
    num_classes, the label dropout of classifier-free guidance)."""
    e = net.time_mlp(net.time(noise_labels))
    e = e + second_time(net.time2, time2, e)
    if net.label is not None:
        labels = class_labels if class_labels is not None else torch.full_like(noise_labels, -1, dtype=torch.long)
        e = e + net.label(labels.long() % (net.num_classes + 1))
    return e
