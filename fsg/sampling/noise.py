"""Per-sample random streams: a sample's noise depends only on (seed, index), never on the batch size
or the number of processes (the role of EDM's StackedRandomGenerator).

torch's CPU generator keeps only 32 bits of its seed, so 50,000 per-sample torch generators would
collide with probability ~0.25; each sample gets a numpy PCG64 stream keyed by SeedSequence([seed, index]).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def sample_seed(seed: int, index: int) -> int:
    """A well-mixed 32-bit seed for a torch.Generator keyed by (seed, index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint32)[0])


class SampleNoise:
    """One PCG64 stream per sample; `randn(shape)` stacks one draw of shape[1:] per sample."""

    def __init__(self, seed: int, indices: Sequence[int], device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.gens = [np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, int(i)]))) for i in indices]

    def __len__(self) -> int:
        return len(self.gens)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        assert shape[0] == len(self.gens), f"batch {shape[0]} != {len(self.gens)} streams"
        rows = np.stack([g.standard_normal(tuple(shape[1:])) for g in self.gens])     # float64 (N, ...)
        return torch.from_numpy(rows).to(device=self.device, dtype=dtype)

    def randint(self, high: int) -> torch.Tensor:
        return torch.tensor([int(g.integers(high)) for g in self.gens], device=self.device)
