"""BatchStream: deterministic, resumable, sharded batches.

The global batch of step k is a pure function of (seed, k): item positions [k B, (k + 1) B) of the
endless sequence made of one permutation of the dataset per epoch (`torch.randperm(N)` from a generator
seeded with (seed, epoch)), so an epoch never repeats an item and batches may straddle two epochs. Rank r
of `world` processes gets the contiguous slice [r B / world, (r + 1) B / world) of it. Resuming at step k
therefore continues exactly where a run stopped, with any number of processes.

Horizontal flips (`flip=True`) are drawn per (seed, epoch, item) from the same epoch generator, after the
permutation, so the order of the items does not depend on whether flips are on.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, default_collate

from fsg.errors import UserError

Key = tuple[int, bool]  # (item index, flip it)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed for (seed, epoch): a CPU torch.Generator keeps only the low 32 bits of its seed, so
    packing the pair into one integer would make seeds that differ above bit 32 collide."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


class _FlipView(torch.utils.data.Dataset):
    """The dataset addressed by (index, flip) keys: a flipped item has x and cond mirrored left-right, and
    every item carries `flip` (a bool scalar) so that per-item caches can tell the two copies apart."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        index, flip = key
        item = self.dataset[index]
        if flip:
            item = {k: v.flip(-1) if k in ("x", "cond") else v for k, v in item.items()}
        item["flip"] = torch.tensor(flip)
        return item


class _StepKeys:
    """Batch sampler of a DataLoader: this rank's keys of steps start, start + 1, ..."""

    def __init__(self, stream: BatchStream, start: int):
        self.stream, self.start = stream, start

    def __iter__(self) -> Iterator[list[Key]]:
        return map(self.stream.keys, itertools.count(self.start))


class BatchStream:
    """Endless batches of `dataset` for one rank (see the module docstring); items are dicts of tensors."""

    def __init__(self, dataset, batch_size: int, *, rank: int = 0, world: int = 1, seed: int = 0,
                 start_step: int = 0, flip: bool = False, workers: int = 0, device: torch.device | str = "cpu"):
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise UserError(f"invalid batch layout: batch size {batch_size}, rank {rank} of {world} processes")
        if batch_size % world:
            raise UserError(f"the batch size {batch_size} is not divisible by the number of processes {world}")
        if len(dataset) == 0:
            raise UserError(f"{dataset.name}: the data set is empty")
        if flip and dataset.kind != "image":
            raise UserError(f"data.flip: horizontal flips need images, and {dataset.name} is {dataset.kind} data")
        self.dataset = dataset
        self.batch_size = batch_size        # global batch, over all ranks
        self.local_batch = batch_size // world
        self.rank = rank
        self.seed = seed
        self.start_step = start_step
        self.flip = flip
        self.workers = workers
        self.device = torch.device(device)
        self._view = _FlipView(dataset)
        self._epochs: dict[int, tuple[list[int], list[bool]]] = {}

    def _epoch(self, epoch: int) -> tuple[list[int], list[bool]]:
        """The permutation of the dataset in `epoch` and the flip of each item, cached for the last two epochs."""
        if epoch not in self._epochs:
            n = len(self.dataset)
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
            order = torch.randperm(n, generator=generator)
            flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
            self._epochs = {e: v for e, v in self._epochs.items() if e == epoch - 1}
            self._epochs[epoch] = (order.tolist(), flips.tolist())
        return self._epochs[epoch]

    def keys(self, step: int) -> list[Key]:
        """(index, flip) of each item of this rank's share of the global batch of `step`."""
        n = len(self.dataset)
        start = step * self.batch_size + self.rank * self.local_batch
        keys: list[Key] = []
        for position in range(start, start + self.local_batch):
            order, flips = self._epoch(position // n)
            index = order[position % n]
            keys.append((index, flips[index]))
        return keys

    def batch_at(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's share of the global batch of `step`, stacked and on `device`."""
        return self._to_device(default_collate([self._view[key] for key in self.keys(step)]))

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        """batch_at(start_step), batch_at(start_step + 1), ..., loaded by `workers` processes."""
        # An own generator: the DataLoader would otherwise draw its worker seed from the global RNG,
        # which holds the dropout state that an exact resume restores.
        loader = DataLoader(self._view, batch_sampler=_StepKeys(self, self.start_step), num_workers=self.workers,
                            pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(_epoch_seed(self.seed, -1)))
        return map(self._to_device, loader)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
