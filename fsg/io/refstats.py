"""Reference statistics files as the papers publish them, read without executing code, and written in the same formats.

| format | file | holds |
|---|---|---|
| `edm`  | NVlabs/edm `fid-refs/*.npz` (`fid.py ref`) | `mu`, `sigma` of Inception pool3 over the whole data set |
| `adm`  | openai/guided-diffusion `VIRTUAL_*.npz` (evaluations/README.md) | `mu`, `sigma` (pool3) and `mu_s`, `sigma_s` (sFID) of the whole set, plus `arr_0`: 10,000 uint8 NHWC images (1,000 at 512) for precision and recall |
| `ddbm` | alexzhou907/DDBM `*_ref_*_data.npz` | `arr_0`: the training targets in dataset order, optionally `mu`, `sigma` |
| `edm2` | NVlabs/edm2 `dataset-refs/*.pkl` (`calculate_metrics.py ref`) | a pickled plain dict `{'num_images': int, 'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu', 'sigma'}}` |
| `fsg`  | `fsg eval-fid --make-ref` without a protocol | `mu`, `sigma`, `n`, `features`, `protocol`, `resolution`, `source`, optional `feats` |

`.npz` files are read with `allow_pickle=False`. EDM2's pickles go through `RestrictedUnpickler`, which rebuilds
builtins and numpy arrays only and refuses every other global, so a file cannot run code when it is read.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fsg.errors import UserError
from fsg.io.checkpoint import atomic_write

# The globals a pickled numpy array needs (numpy 1.x names `numpy.core`, numpy 2 `numpy._core`); nothing else.
NUMPY_GLOBALS = {
    (module, name)
    for package in ("numpy.core", "numpy._core")
    for module, name in ((f"{package}.multiarray", "_reconstruct"), (f"{package}.multiarray", "scalar"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}   # _codecs.encode: bytes in protocol 2
EDM2_METRICS = ("fid", "fd_dinov2")     # the keys of EDM2's dict that hold {'mu', 'sigma'}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a class or function outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds builtins (dict, list, int, str, ...) and numpy arrays, and refuses any other class
    or function a pickle names (EDM2's refs, pickled numpy arrays in dicts, need exactly these)."""

    def find_class(self, module: str, name: str):
        if (module, name) in NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise RefusedGlobal(f"refusing to load the global {module}.{name}")


def read_stats_pickle(path: str | Path) -> dict:
    """A pickled dict of builtins and numpy arrays (EDM2's `dataset-refs/*.pkl`); any other content is a UserError."""
    try:
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(io.BytesIO(f.read())).load()
    except RefusedGlobal as e:
        raise UserError(f"{path}: not a statistics pickle of plain data ({e}); fsg never runs code from a file") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise UserError(f"{path}: not a readable pickle ({e})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a dict of statistics")
    return obj


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file (no pickled objects)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable .npz file ({e})") from None


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez(path, **arrays)`, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


def write_stats_pickle(path: str | Path, stats: dict) -> None:
    """A plain dict of builtins and numpy arrays, pickled as EDM2's `calculate_metrics.py ref` writes it."""
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(stats, f)

    atomic_write(path, write)


@dataclass(frozen=True)
class RefFile:
    """What a reference file holds. `gaussians` maps a metric ('fid', 'sfid', 'fd_dinov2') to its (mu, sigma);
    `images` is `arr_0` when present; `arrays` keeps the other arrays (fsg's `features`, `n`, `feats`...)."""

    format: str                                              # 'edm' | 'adm' | 'ddbm' | 'edm2' | 'fsg' | 'images'
    sha256: str
    gaussians: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    images: np.ndarray | None = None
    num_images: int | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _gaussian(mu, sigma, where: str) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise UserError(f"{where}: mu {mu.shape} and sigma {sigma.shape} are not a mean and its covariance")
    return mu, sigma


def read_edm2_pickle(path: str | Path) -> RefFile:
    """EDM2's `{'num_images', 'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu', 'sigma'}}` (calculate_metrics.py
    `save_stats`/`load_stats`)."""
    obj = read_stats_pickle(path)
    gaussians = {}
    for metric in EDM2_METRICS:
        entry = obj.get(metric)
        if entry is None:
            continue
        if not isinstance(entry, dict) or not {"mu", "sigma"} <= entry.keys():
            raise UserError(f"{path}: '{metric}' is not a dict with 'mu' and 'sigma'")
        gaussians[metric] = _gaussian(entry["mu"], entry["sigma"], f"{path}: {metric}")
    if not gaussians:
        raise UserError(f"{path}: no 'fid' or 'fd_dinov2' statistics (keys: {', '.join(map(str, obj)) or 'none'})")
    num = obj.get("num_images")
    return RefFile("edm2", sha256_file(path), gaussians, num_images=int(num) if num is not None else None)


def read_reference_npz(path: str | Path) -> RefFile:
    """An .npz as one of the formats of the module docstring, told apart by its keys:
    `features` -> fsg; `mu_s` -> ADM; `arr_0` with `mu` -> DDBM (ADM's keys without sFID); `mu` alone -> EDM;
    `arr_0` alone -> images."""
    arrays = read_npz(path)
    digest = sha256_file(path)
    images = arrays.pop("arr_0", None)
    gaussians = {}
    if "mu" in arrays and "sigma" in arrays:
        gaussians["fid"] = _gaussian(arrays.pop("mu"), arrays.pop("sigma"), str(path))
    if "mu_s" in arrays and "sigma_s" in arrays:
        gaussians["sfid"] = _gaussian(arrays.pop("mu_s"), arrays.pop("sigma_s"), f"{path}: mu_s/sigma_s")
    if "features" in arrays and "fid" in gaussians:
        kind = "fsg"
    elif "sfid" in gaussians:
        kind = "adm"
    elif images is not None:
        kind = "ddbm" if gaussians else "images"
    elif gaussians:
        kind = "edm"
    else:
        raise UserError(f"{path}: neither images (arr_0) nor statistics (mu, sigma); keys: {', '.join(arrays) or 'none'}")
    n = int(arrays["n"]) if "n" in arrays else 0        # fsg's count; 0 stands for unknown
    return RefFile(kind, digest, gaussians, images, n or None, arrays)


def read_reference(path: str | Path) -> RefFile:
    """A reference file of any format above (.npz or EDM2's .pkl)."""
    path = Path(path)
    if path.suffix.lower() == ".pkl":
        return read_edm2_pickle(path)
    return read_reference_npz(path)


def write_edm_npz(path: str | Path, mu: np.ndarray, sigma: np.ndarray) -> None:
    """EDM's `fid.py ref` output: `np.savez(dest, mu=mu, sigma=sigma)`."""
    write_npz(path, {"mu": mu, "sigma": sigma})


def write_adm_npz(path: str | Path, images: np.ndarray, fid: tuple[np.ndarray, np.ndarray],
                  sfid: tuple[np.ndarray, np.ndarray]) -> None:
    """An ADM reference batch: `arr_0` (uint8 NHWC images for precision/recall), `mu`, `sigma`, `mu_s`, `sigma_s`."""
    write_npz(path, {"arr_0": images, "mu": fid[0], "sigma": fid[1], "mu_s": sfid[0], "sigma_s": sfid[1]})


def write_ddbm_npz(path: str | Path, images: np.ndarray, fid: tuple[np.ndarray, np.ndarray]) -> None:
    """A DDBM reference: `arr_0` (every target, uint8 NHWC, in dataset order), `mu`, `sigma`."""
    write_npz(path, {"arr_0": images, "mu": fid[0], "sigma": fid[1]})


def write_edm2_pickle(path: str | Path, num_images: int, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """EDM2's `{'num_images': N, 'fid': {'mu', 'sigma'}, 'fd_dinov2': {'mu', 'sigma'}}`."""
    obj: dict = {"num_images": int(num_images)}
    for metric, (mu, sigma) in stats.items():
        obj[metric] = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64)}
    write_stats_pickle(path, obj)
