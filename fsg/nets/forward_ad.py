"""Forward-mode derivatives (Jacobian-vector products) through fsg's networks.

`torch.func.jvp` needs a forward-mode rule for every op; PyTorch's fused attention kernels (flash, memory-efficient,
cuDNN, flash-for-CPU) have none, its math path (matmul + softmax) does (pytorch/pytorch#165530,
Dao-AILab/flash-attention#1672). `jvp` runs the function with `scaled_dot_product_attention` held to the math path,
so continuous-time consistency models (sCT/sCD) and MeanFlow differentiate through attention. No op in fsg's
networks mutates a parameter inside forward, which `torch.func` would refuse.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def jvp(fn: Callable[..., torch.Tensor], primals: tuple[torch.Tensor, ...],
        tangents: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(fn(*primals), d/de fn(primals + e tangents) at e = 0), attention on its math path."""
    with sdpa_kernel([SDPBackend.MATH]), warnings.catch_warnings():
        # torch's forward-mode decompositions script themselves on first use and warn that jit.script is deprecated:
        # torch's own call, nothing a user of fsg can act on.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated", category=FutureWarning)
        return torch.func.jvp(fn, primals, tangents)
