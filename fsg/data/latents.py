"""PaGoDA's latents on disk: z = Enc(x) of every training item, written once by `fsg grow-decoder --stage
encode` and read by the distill and grow stages (`method.latents: DIR`) instead of inverting on the fly.

Layout of DIR:
    shard_00000.safetensors, ...   z (n, C, r, r) float32, index (n,) int64, flip (n,) uint8 and x_mean (n,)
                                    float64 (the mean pixel of the pooled image, a signature checked on reads)
    latents.json                   written last, once every shard exists: teacher fingerprint, inversion steps,
                                    data, count, flips, latent shape, shard size and number of shards
                                    (latents.pending.json holds the same while shards are missing, so that a
                                    resumed encode with another teacher or data is refused).

Keys: (index, False) for every item of the training split, then (index, True) for the mirrored copies when
`data.flip` is on. Shard k holds keys [k S, (k + 1) S) and is encoded by rank k mod world; a shard that
exists is complete (atomic writes) and is skipped, so a killed job continues where it stopped.

The latents of one teacher serve every stage: the grow stages' images are average-pooled to the teacher's
resolution before the inversion, which is the same pooling `data.downsample` applies for the distill stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from fsg.errors import UserError

MANIFEST = "latents.json"
PENDING = "latents.pending.json"   # the manifest of an unfinished encode, so that a resumed one can check it
FORMAT = 1
SIGNATURE_ATOL = 1e-4   # |x_mean stored - x_mean of the batch| above this: the data is not the encoded data


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


def data_identity(data_cfg) -> dict[str, Any]:
    """What fixes the items and their order, whatever the resolution a stage trains at."""
    return {"source": data_cfg.source, "path": data_cfg.path, "path_b": data_cfg.path_b, "holdout": data_cfg.holdout,
            "labels": data_cfg.labels, "channels": data_cfg.channels}


def all_keys(count: int, flips: bool) -> list[tuple[int, bool]]:
    return [(i, False) for i in range(count)] + ([(i, True) for i in range(count)] if flips else [])


def shards_of_rank(num_shards: int, rank: int, world: int) -> list[int]:
    return list(range(rank, num_shards, world))


class LatentStore:
    """The latents of a folder written by the encode stage, looked up by (index, flip); rows are read lazily
    from the memory-mapped shards."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise UserError(f"method.latents: {self.path} has no {MANIFEST}; write it with "
                            f"`fsg grow-decoder --stage encode --teacher T --recipe R --run-dir {self.path}`")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT:
            raise UserError(f"method.latents: {manifest} has format {self.manifest.get('format')}, expected {FORMAT}")
        self.files = [safe_open(str(self.path / shard_name(k)), framework="pt")
                      for k in range(self.manifest["shards"])]
        size, count = self.manifest["shard_size"], self.manifest["count"]
        self.row = {key: divmod(n, size) for n, key in enumerate(all_keys(count, self.manifest["flips"]))}
        self.means = torch.cat([f.get_tensor("x_mean") for f in self.files])

    def check(self, teacher_fingerprint: str, steps: int, data_cfg, count: int) -> None:
        """The store must come from this teacher (`model_fingerprint` of its network), these inversion steps
        and this data."""
        m = self.manifest
        if m["teacher"] != teacher_fingerprint:
            raise UserError(f"method.latents: {self.path} was encoded with another teacher ({m['teacher_path']})")
        if m["inversion_steps"] != steps:
            raise UserError(f"method.latents: {self.path} was encoded with {m['inversion_steps']} inversion steps, "
                            f"the recipe says method.inversion_steps {steps}")
        if m["data"] != data_identity(data_cfg) or m["count"] != count:
            raise UserError(f"method.latents: {self.path} holds the latents of other data ({m['data']}, "
                            f"{m['count']} items); the recipe's data has {count} items")
        if data_cfg.flip and not m["flips"]:
            raise UserError(f"method.latents: data.flip is on but {self.path} was encoded without flipped copies")

    def lookup(self, index: torch.Tensor, flip: torch.Tensor, x_low: torch.Tensor) -> torch.Tensor:
        """z of each (index, flip); x_low, the pooled images, must match the stored signatures."""
        keys = list(zip(index.tolist(), [bool(f) for f in flip.tolist()]))
        try:
            rows = [self.row[k] for k in keys]
        except KeyError as e:
            raise UserError(f"method.latents: {self.path} has no latent for item {e.args[0]}") from None
        z = torch.stack([self.files[s].get_slice("z")[r:r + 1][0] for s, r in rows])         # (N, C, r, r)
        stored = torch.stack([self.means[s * self.manifest["shard_size"] + r] for s, r in rows])
        seen = x_low.detach().double().mean((1, 2, 3)).cpu()
        if not torch.allclose(stored, seen, atol=SIGNATURE_ATOL, rtol=0):
            bad = int((stored - seen).abs().argmax())
            raise UserError(f"method.latents: item {keys[bad]} of {self.path} was encoded from another image "
                            f"(mean pixel {float(stored[bad]):.5f}, now {float(seen[bad]):.5f})")
        return z.to(x_low.device)
