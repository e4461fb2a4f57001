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
