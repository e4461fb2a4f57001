"""Time grids and training-time schedules: the Karras grid, and consistency training's discretisation N(k),
target EMA mu(k), index sampling and ECT's mapping r(t).

Pure functions; tests check them against values derived by hand.
"""

from __future__ import annotations

import math

import torch


def karras_ramp_to_sigma(ramp: torch.Tensor, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """sigma = (sigma_max^(1/rho) + ramp (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, ramp = i/(n-1) in [0, 1]
    (Eq. 5 of Karras et al. 2022): ramp 0 is sigma_max, ramp 1 is sigma_min."""
    inv = 1.0 / rho
    return (sigma_max**inv + ramp * (sigma_min**inv - sigma_max**inv)) ** rho


def karras_index_to_sigma(i, n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Noise level of grid index i (float or tensor; 0 = sigma_max, n-1 = sigma_min) on the n-point Karras grid; float64."""
    return karras_ramp_to_sigma(torch.as_tensor(i, dtype=torch.float64) / max(n - 1, 1), sigma_min, sigma_max, rho)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, append_zero: bool = True,
                  dtype=torch.float64) -> torch.Tensor:
    """The n-point Karras grid descending from sigma_max to sigma_min (k-diffusion's `get_sigmas_karras`: the ramp
    is linspace(0, 1, n)), with t_n = 0 appended when `append_zero`."""
    ramp = torch.linspace(0, 1, n, dtype=dtype) if n > 1 else torch.zeros(1, dtype=dtype)
    sig = karras_ramp_to_sigma(ramp, sigma_min, sigma_max, rho)
    return torch.cat([sig, sig.new_zeros(1)]) if append_zero else sig


def ct_num_scales_and_ema(k: int, K: int, s0: int, s1: int, mu0: float, form: str = "code") -> tuple[int, float]:
    """N(k) and mu(k) of consistency training (Eq. 9 / Appendix C of Song et al. 2023).

    Paper:  N(k) = ceil(sqrt(k/K ((s1+1)^2 - s0^2) + s0^2) - 1) + 1,  mu(k) = exp(s0 ln(mu0) / N(k)).
    Code (openai/consistency_models `create_ema_and_scales_fn`): the same N(k), but mu(k) divides by
    N(k) - 1 (the value before the +1). `form` picks "code" (the published checkpoints) or "paper".
    """
    n = math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0**2) + s0**2) - 1)
    n = max(n, 1)
    N = n + 1
    divisor = n if form == "code" else N
    if form not in ("code", "paper"):
        raise ValueError(f"unknown schedule form {form!r}")
    return N, math.exp(s0 * math.log(mu0) / divisor)


def ict_num_scales(k: int, K: int, s0: int = 10, s1: int = 1280) -> int:
    """Exponential curriculum N(k) = min(s0 2^floor(k/K'), s1) + 1, K' = floor(K / (log2(s1/s0) + 1)).

    Eq. 6 of Song & Dhariwal 2023 (improved consistency training).
    """
    K_prime = math.floor(K / (math.log2(s1 / s0) + 1))
    return min(s0 * 2 ** math.floor(k / max(K_prime, 1)), s1) + 1


def lognormal_index_probs(sigmas: torch.Tensor, P_mean: float = -1.1, P_std: float = 2.0) -> torch.Tensor:
    """p(i) ∝ erf((ln s_{i+1} - P_mean)/(sqrt2 P_std)) - erf((ln s_i - P_mean)/(sqrt2 P_std)) over ascending sigmas.

    Sec. 3.5 of Song & Dhariwal 2023: index i picks the pair (sigma_i, sigma_{i+1}) with sigma ascending.
    Returns len(sigmas) - 1 probabilities.
    """
    ln = sigmas.double().log()
    cdf = torch.erf((ln - P_mean) / (math.sqrt(2) * P_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()


def ect_stage(step: int, double_steps: int, smooth: bool = False) -> float:
    """ECT's stage floor(k / N) (locuslab/ect: `tick // double_ticks`), or fsg's smooth stage for SCT.

    smooth: max(k / N - 1/2, 0), the line through the middle of each of ECT's stages. dt = t - r then shrinks
    at every step instead of by q every N steps, with ECT's geometric mean over each stage (from stage 1 on),
    so only the jumps go, not the pace. SCT's own form is UNVERIFIED (the paper confirms a smoother schedule).
    """
    return max(step / double_steps - 0.5, 0.0) if smooth else float(step // double_steps)


def ect_r(t: torch.Tensor, stage: float, q: float = 2.0, k: float = 8.0, b: float = 1.0,
          mapping: str = "sigmoid") -> torch.Tensor:
    """ECT's mapping r(t) < t (Sec. 3 of Geng et al. 2024; locuslab/ect `t_to_r`).

    const:   r = t (1 - q^-(stage+1))
    sigmoid: r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t)))
    clamped at 0. `stage` may be fractional (SCT's smooth schedule).
    """
    decay = q ** (-(stage + 1))
    if mapping == "const":
        ratio = 1 - decay
    elif mapping == "sigmoid":
        ratio = 1 - decay * (1 + k * torch.sigmoid(-b * t))
    else:
        raise ValueError(f"unknown ECT mapping {mapping!r}")
    return (t * ratio).clamp(min=0)
