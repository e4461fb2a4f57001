"""Distances between sample sets: Fréchet distance (FID), KID, sliced Wasserstein, RBF MMD.

Pure math on tensors, float64 throughout; no file, no network. The conventions are those of clean-fid
so that numbers are comparable:

- FID: the Fréchet distance of Gaussians fitted to features (Dowson & Landau 1982; the FID of Heusel
  et al. 2017), with the unbiased covariance (divisor n - 1, as `np.cov`).
- KID: the unbiased MMD^2 estimate with the cubic kernel k(x, y) = (x.y / d + 1)^3, averaged over
  random subsets (the KID of Bińkowski et al. 2018, "Demystifying MMD GANs").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from fsg.errors import UserError
from fsg.eval.features import SPACES
from fsg.io.refstats import write_npz

Kernel = Callable[[Tensor, Tensor], Tensor]


def _sqrt_psd(a: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance d^2 between N(mu1, sigma1) and N(mu2, sigma2) (numpy arrays or tensors).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})   (Dowson & Landau 1982)

    Tr (sigma1 sigma2)^{1/2} is the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    sigma1^{1/2} sigma2 sigma1^{1/2}, which has the spectrum of sigma1 sigma2. Unlike `scipy.linalg.sqrtm`
    of the non-symmetric product, this has no complex part and stays finite when the product is singular
    (fewer samples than feature dimensions).
    """
    mu1, mu2 = (torch.as_tensor(m, dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    sigma1, sigma2 = (torch.as_tensor(s, dtype=torch.float64) for s in (sigma1, sigma2))
    d = mu1.numel()
    if mu2.numel() != d or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"mismatched statistics: mu {d} vs {mu2.numel()}, sigma {tuple(sigma1.shape)} vs {tuple(sigma2.shape)}")
    sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
    root1 = _sqrt_psd(sigma1)
    tr_covmean = torch.linalg.eigvalsh(root1 @ sigma2 @ root1).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_covmean)


class FeatureStats:
    """Streaming mean and covariance of feature vectors: n, sum and X^T X in float64 (as EDM's fid.py).

    Images never need to be held in memory: feed feature batches to `update`, combine the shards of
    several processes with `all_reduce` (or `merge`), then read `mu()` and `sigma()`. With `keep=True`
    the features themselves are also kept (float32, on CPU) for KID.
    """

    def __init__(self, dim: int, *, device: torch.device | str = "cpu", keep: bool = False):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.gram = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self.kept: list[Tensor] | None = [] if keep else None

    @property
    def dim(self) -> int:
        return self.sum.numel()

    def update(self, feats: Tensor) -> None:
        """Add a batch of features [B, dim]."""
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"expected features [B, {self.dim}], got {tuple(feats.shape)}")
        x = feats.detach().to(self.sum.device, torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(dim=0)
        self.gram += x.T @ x
        if self.kept is not None:
            self.kept.append(feats.detach().to("cpu", torch.float32))

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add the samples of `other` (another shard of the same set) into this accumulator."""
        self.n += other.n
        self.sum += other.sum.to(self.sum.device)
        self.gram += other.gram.to(self.gram.device)
        if self.kept is not None and other.kept is not None:
            self.kept.extend(other.kept)
        return self

    def all_reduce(self) -> FeatureStats:
        """Sum the shards of all ranks (no-op unless torch.distributed is initialized); every rank gets the total."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        n = torch.tensor([self.n], dtype=torch.float64, device=self.sum.device)
        for t in (n, self.sum, self.gram):
            dist.all_reduce(t)
        self.n = int(n.item())
        if self.kept is not None:
            shards: list[Tensor | None] = [None] * dist.get_world_size()
            dist.all_gather_object(shards, self.features())
            self.kept = [s for s in shards if s is not None]
        return self

    def mu(self) -> Tensor:
        """Sample mean [dim]."""
        if self.n < 1:
            raise ValueError("no samples")
        return self.sum / self.n

    def sigma(self) -> Tensor:
        """Unbiased sample covariance [dim, dim]: (X^T X - n mu mu^T) / (n - 1)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        mu = self.mu()
        return (self.gram - self.n * torch.outer(mu, mu)) / (self.n - 1)

    def features(self) -> Tensor:
        """The kept features [n, dim] (float32, CPU); only with keep=True."""
        if self.kept is None:
            raise ValueError("features were not kept (construct FeatureStats with keep=True)")
        return torch.cat(self.kept) if self.kept else torch.zeros(0, self.dim)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two accumulated feature sets."""
    return frechet_distance(a.mu(), a.sigma(), b.mu(), b.sigma())


def _kernel_sum(x: Tensor, y: Tensor, kernel: Kernel, *, skip_diagonal: bool = False, chunk: int = 2048) -> Tensor:
    """sum_ij k(x_i, y_j) (without the i == j terms if `skip_diagonal`), in row blocks: O(chunk * len(y)) memory."""
    total = x.new_zeros(())
    for start in range(0, x.shape[0], chunk):
        k = kernel(x[start:start + chunk], y)  # (chunk, len(y))
        total += k.sum() - (k.diagonal(offset=start).sum() if skip_diagonal else 0)
    return total


def mmd2_unbiased(x: Tensor, y: Tensor, kernel: Kernel) -> Tensor:
    """Unbiased estimate MMD^2_u of Lemma 6 of Gretton et al. 2012 (A Kernel Two-Sample Test).

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1)) - 2 sum_ij k(x_i, y_j) / (m n)
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"MMD needs at least 2 samples per set, got {m} and {n}")
    kxx = _kernel_sum(x, x, kernel, skip_diagonal=True)
    kyy = _kernel_sum(y, y, kernel, skip_diagonal=True)
    kxy = _kernel_sum(x, y, kernel)
    return kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2 * kxy / (m * n)


def polynomial_kernel(x: Tensor, y: Tensor) -> Tensor:
    """KID's cubic kernel k(x, y) = (x.y / d + 1)^3, d the feature dimension."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def kid(
    feats1: Tensor,
    feats2: Tensor,
    num_subsets: int = 100,
    max_subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance: (mean, std) of MMD^2_u with the cubic kernel over random subsets.

    Each of `num_subsets` rounds draws m = min(n1, n2, max_subset_size) features from each set without
    replacement (clean-fid's and torch-fidelity's protocol). std is the spread across subsets (ddof 0).
    `generator` defaults to a CPU generator seeded with 0, so the result is deterministic.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x_all, y_all = (torch.as_tensor(f, dtype=torch.float64).cpu() for f in (feats1, feats2))
    m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    values = torch.empty(num_subsets, dtype=torch.float64)
    for s in range(num_subsets):
        x = x_all[torch.randperm(x_all.shape[0], generator=g)[:m]]
        y = y_all[torch.randperm(y_all.shape[0], generator=g)[:m]]
        values[s] = mmd2_unbiased(x, y, polynomial_kernel)
    return float(values.mean()), float(values.std(correction=0))


def rbf_kernel(bandwidths: Sequence[float]) -> Kernel:
    """k(x, y) = sum_h exp(-||x - y||^2 / (2 h^2)), a sum of Gaussian kernels of widths h."""
    inv = [1.0 / (2.0 * h * h) for h in bandwidths]

    def k(x: Tensor, y: Tensor) -> Tensor:
        d2 = torch.cdist(x, y).square()  # (len(x), len(y))
        return sum(torch.exp(-c * d2) for c in inv)

    return k


def mmd_rbf(a: Tensor, b: Tensor, bandwidths: Sequence[float] = (0.1, 0.2, 0.5, 1.0, 2.0)) -> float:
    """Unbiased MMD^2 between point sets a [N, d] and b [M, d] with a sum of Gaussian kernels.

    The default widths suit data of unit scale (the 2-D toy sets); cost is O(N M) time, O(M) memory per row block.
    """
    x, y = (torch.as_tensor(t, dtype=torch.float64) for t in (a, b))
    return float(mmd2_unbiased(x, y, rbf_kernel(bandwidths)))


def sliced_wasserstein(
    a: Tensor, b: Tensor, n_proj: int = 128, generator: torch.Generator | None = None, p: int = 2
) -> float:
    """Sliced p-Wasserstein distance SW_p = (E_theta W_p^p(theta.a, theta.b))^{1/p} of point sets a [N, d], b [M, d].

    theta runs over `n_proj` random unit directions. Each 1-D W_p^p = int_0^1 |F^-1(u) - G^-1(u)|^p du is
    exact for empirical measures of any sizes: both quantile functions are constant between the breakpoints
    {i/N} U {j/M}. `generator` defaults to a CPU generator seeded with 0.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x, y = (torch.as_tensor(t, dtype=torch.float64).cpu() for t in (a, b))
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"expected point sets [N, d] and [M, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    theta = torch.randn(x.shape[1], n_proj, generator=g, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)  # (d, P) unit columns
    qx = (x @ theta).sort(dim=0).values  # (N, P) order statistics per direction
    qy = (y @ theta).sort(dim=0).values  # (M, P)
    u = torch.cat([torch.arange(1, k + 1, dtype=torch.float64) / k for k in (n, m)]).unique()  # {i/N} U {j/M}, sorted
    width = torch.diff(u, prepend=u.new_zeros(1))
    mid = u - width / 2  # one point inside each interval between breakpoints
    ix = (mid * n).floor().long()
    iy = (mid * m).floor().long()
    w_pp = (width[:, None] * (qx[ix] - qy[iy]).abs() ** p).sum(dim=0)  # (P,)
    return float(w_pp.mean() ** (1.0 / p))


@dataclass(frozen=True)
class Stats:
    """Gaussian statistics of a feature set, as kept in a stats .npz (`fsg eval-fid --make-ref`).

    Keys: mu, sigma, n, features, protocol (the description of the feature space), resolution, source (what the
    images were), and feats (raw features, for KID) when kept. The published formats (EDM's, ADM's, EDM2's) are
    read and written by `fsg.io.refstats`. A loaded file's `label` is its path.
    """

    mu: np.ndarray                      # (dim,)
    sigma: np.ndarray                   # (dim, dim)
    n: int | None                       # number of images; None when the file does not say
    features: str | None                # feature space name (fsg.eval.features.SPACES); None when unknown
    resolution: int | None              # height of the images the statistics were computed from
    label: str                          # where they came from (a path or a set name)
    feats: np.ndarray | None = None     # (n, dim) float32 raw features, for KID

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], label: str) -> Stats:
        def scalar(key: str):
            return arrays[key].item() if key in arrays else None

        mu, sigma = np.asarray(arrays["mu"], np.float64), np.asarray(arrays["sigma"], np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
            raise UserError(f"{label}: mu {mu.shape} and sigma {sigma.shape} are not a mean and its covariance")
        n, resolution = scalar("n"), scalar("resolution")  # 0 and "" stand for unknown
        return cls(mu, sigma, int(n) if n else None, scalar("features") or None, int(resolution) if resolution else None,
                   label, arrays.get("feats"))

    def save(self, path: str | Path) -> None:
        """Write the .npz atomically."""
        arrays = {"mu": self.mu, "sigma": self.sigma, "n": np.int64(self.n or 0), "source": np.str_(self.label),
                  "features": np.str_(self.features or ""), "protocol": np.str_(SPACES.get(self.features or "", "")),
                  "resolution": np.int64(self.resolution or 0)}
        if self.feats is not None:
            arrays["feats"] = self.feats
        write_npz(path, arrays)
