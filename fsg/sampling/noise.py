"""Per-sample random streams: a sample's noise depends only on (seed, index), never on the batch size
or the number of processes (the role of EDM's StackedRandomGenerator).

torch's CPU generator keeps only 32 bits of its seed, so hashing (seed, index) to 32 bits would make two
of 50,000 samples share their noise with probability ~0.25. Instead the seed of sample i is a bijection
of i (mixed with a key derived from the run's seed): within one run no two samples up to 2^32 share a
stream. Each stream lives on the sampling device (Philox on CUDA, Mersenne Twister on CPU).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

MASK32 = 0xFFFFFFFF


def mix32(x: int) -> int:
    """A bijection of 32-bit integers with good avalanche ('lowbias32', C. Wellons)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def sample_seed(seed: int, index: int) -> int:
    """The 32-bit seed of stream `index` in a run seeded with `seed`; distinct indices give distinct seeds."""
    key = int(np.random.SeedSequence([seed]).generate_state(1, dtype=np.uint32)[0])
    return mix32((index & MASK32) ^ key)


class SampleNoise:
    """One generator per sample; `randn(shape)` stacks one draw of shape[1:] per sample."""

    def __init__(self, seed: int, indices: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        key = int(np.random.SeedSequence([seed]).generate_state(1, dtype=np.uint32)[0])
        self.gens = [torch.Generator(self.device).manual_seed(mix32((int(i) & MASK32) ^ key)) for i in indices]

    def __len__(self) -> int:
        return len(self.gens)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        assert shape[0] == len(self.gens), f"batch {shape[0]} != {len(self.gens)} streams"
        rows = [torch.randn(tuple(shape[1:]), generator=g, device=self.device) for g in self.gens]
        return torch.stack(rows).to(dtype)

    def randint(self, high: int) -> torch.Tensor:
        return torch.cat([torch.randint(0, high, (1,), generator=g, device=self.device) for g in self.gens])


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation sin((1-a) theta)/sin(theta) z0 + sin(a theta)/sin(theta) z1 (Shoemake 1985), theta
    the angle between the flattened latents, one row per a in `alpha` (P,) -> (P, *z0.shape). a = 0 and 1 give
    z0 and z1 exactly; (anti)parallel latents fall back to linear interpolation."""
    a = alpha.to(torch.float64).reshape(-1, *([1] * z0.ndim))                 # (P, 1, ..., 1)
    z0, z1 = z0.to(torch.float64), z1.to(torch.float64)
    cos = (z0 * z1).sum() / (z0.norm() * z1.norm())
    theta = torch.arccos(cos.clamp(-1, 1))
    if float(torch.sin(theta)) < 1e-6:
        return (1 - a) * z0 + a * z1
    return (torch.sin((1 - a) * theta) * z0 + torch.sin(a * theta) * z1) / torch.sin(theta)


class SlerpNoise:
    """Noise along an interpolation path: every draw is the slerp of one draw from each endpoint's stream, so
    the endpoints (a = 0, 1) replay the noise of their own plain samples, re-noising of multistep included."""

    def __init__(self, a: SampleNoise, b: SampleNoise, alpha: torch.Tensor):
        assert len(a) == len(b) == 1, "one stream per endpoint"
        self.a, self.b, self.alpha = a, b, alpha

    def __len__(self) -> int:
        return len(self.alpha)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        row = (1, *shape[1:])
        z = slerp(self.a.randn(row, torch.float64)[0], self.b.randn(row, torch.float64)[0], self.alpha)
        return z.to(device=self.a.device, dtype=dtype)


class FixedNoise:
    """A noise source whose one draw is given (the slerp path of two latent files)."""

    def __init__(self, z: torch.Tensor):
        self.z = z

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        assert tuple(shape) == tuple(self.z.shape), (shape, self.z.shape)
        return self.z.to(dtype)
