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

import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from fsg.errors import UserError
from fsg.io.checkpoint import atomic_write

MANIFEST = "latents.json"
PENDING = "latents.pending.json"   # the manifest of an unfinished encode, so that a resumed one can check it
FORMAT = 1
SIGNATURE_ATOL = 1e-4   # |x_mean stored - x_mean of the batch| above this: the data is not the encoded data


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


def model_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a network's state (names, shapes, dtypes and bytes): identifies the teacher of a latent store."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_identity(data_cfg) -> dict[str, Any]:
    """What fixes the items and their order, whatever the resolution a stage trains at."""
    return {"source": data_cfg.source, "path": data_cfg.path, "path_b": data_cfg.path_b, "holdout": data_cfg.holdout,
            "labels": data_cfg.labels, "channels": data_cfg.channels}


def all_keys(count: int, flips: bool) -> list[tuple[int, bool]]:
    return [(i, False) for i in range(count)] + ([(i, True) for i in range(count)] if flips else [])


def shards_of_rank(num_shards: int, rank: int, world: int) -> list[int]:
    return list(range(rank, num_shards, world))


# ------------------------------------------------------------------------------------------------ writing

@torch.no_grad()
def encode_shard(teacher, dataset, keys: Sequence[tuple[int, bool]], steps: int, batch_size: int, device,
                 conditional: bool) -> dict[str, torch.Tensor]:
    """The tensors of one shard: z = Enc(x) (fsg.sampling.inversion.encode) of each key's image, with the
    teacher (a LoadedModel) at its own resolution."""
    from fsg.sampling.inversion import encode, to_latent_resolution

    resolution = teacher.shape[-1]
    zs, means = [], []
    for start in range(0, len(keys), batch_size):
        chunk = keys[start:start + batch_size]
        items = [dataset[i] for i, _ in chunk]
        x = torch.stack([it["x"].flip(-1) if f else it["x"] for it, (_, f) in zip(items, chunk)]).to(device)
        labels = torch.stack([it["label"] for it in items]).to(device) if conditional else None
        if labels is not None and bool((labels < 0).any()):
            raise UserError("the teacher is class-conditional but the data has no labels: set data.labels true")
        zs.append(encode(teacher.denoiser, x, resolution, steps, labels).float().cpu())
        means.append(to_latent_resolution(x.double(), resolution).mean((1, 2, 3)).cpu())
    return {"z": torch.cat(zs), "index": torch.tensor([i for i, _ in keys], dtype=torch.int64),
            "flip": torch.tensor([int(f) for _, f in keys], dtype=torch.uint8), "x_mean": torch.cat(means)}


def encode_dataset(teacher, dataset, data_cfg, out: Path, *, steps: int, flips: bool, shard_size: int,
                   batch_size: int, device, rank: int = 0, world: int = 1, progress: bool = True) -> dict[str, Any]:
    """Write this rank's shards of `dataset`'s latents to `out` (skipping those already there) and return the
    manifest (written by the caller on rank 0 once every rank is done)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if shard_size < 1:
        raise UserError("method.shard_size must be at least 1")
    if len(dataset) == 0:
        raise UserError("the recipe's data has no training items to encode")
    keys = all_keys(len(dataset), flips)
    num_shards = math.ceil(len(keys) / shard_size)
    fingerprint = model_fingerprint(teacher.denoiser.net)
    manifest = {"format": FORMAT, "teacher": fingerprint, "teacher_path": str(teacher.path),
                "inversion_steps": steps, "data": data_identity(data_cfg), "count": len(dataset), "flips": flips,
                "latent_shape": list(teacher.meta["shape"]), "shard_size": shard_size, "shards": num_shards}
    _check_existing(out, manifest)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not (out / MANIFEST).is_file():
        atomic_write(out / PENDING, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    mine = shards_of_rank(num_shards, rank, world)
    todo = [k for k in mine if not (out / shard_name(k)).is_file()]
    conditional = bool(teacher.meta.get("num_classes", 0))
    bar = Progress(TextColumn("[bold]encode"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(file=sys.stderr), disable=not (progress and rank == 0))
    start = time.time()
    with bar:
        task = bar.add_task("encode", total=len(mine), completed=len(mine) - len(todo))
        for k in todo:
            tensors = encode_shard(teacher, dataset, keys[k * shard_size:(k + 1) * shard_size], steps,
                                   batch_size, device, conditional)
            _write_shard(out / shard_name(k), tensors)
            bar.advance(task)
    manifest["seconds_rank0"] = round(time.time() - start, 3)
    manifest["encoded_now"] = len(todo)
    return manifest


def _write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp))


def _check_existing(out: Path, manifest: dict[str, Any]) -> None:
    """A folder that holds another teacher's or another data set's latents is not written into."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--run-dir {out} is a file, not a folder for latents")
    old = out / MANIFEST if (out / MANIFEST).is_file() else out / PENDING
    if old.is_file():
        have = json.loads(old.read_text())
        for key in ("teacher", "inversion_steps", "data", "count", "flips", "shard_size"):
            if have.get(key) != manifest[key]:
                what = (f"{have.get('teacher_path')}" if key == "teacher" else f"{have.get(key)!r}, now {manifest[key]!r}")
                raise UserError(f"{out} already holds latents with another {key} ({what}): pick another --run-dir")


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    missing = [k for k in range(manifest["shards"]) if not (out / shard_name(k)).is_file()]
    if missing:
        raise UserError(f"{out}: shard(s) {missing[:5]} missing; run the encode stage again to finish them")
    atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2) + "\n"))
    (out / PENDING).unlink(missing_ok=True)


def run_encode(recipe, teacher_path, run_dir: Path, device, progress: bool = True) -> Path:
    """`fsg grow-decoder --stage encode`: every rank encodes its shards, rank 0 writes the manifest."""
    from fsg.data import build_dataset
    from fsg.nets.load import load_model
    from fsg.train.dist import barrier, init_distributed, shutdown

    if teacher_path is None:
        raise UserError("--stage encode needs --teacher (the low-resolution diffusion model that inverts the data)")
    cfg = recipe.method
    env = init_distributed(device)
    try:
        teacher = load_model(teacher_path, device)
        if teacher.meta.get("precond", "diffusion") != "diffusion" or teacher.meta.get("cond_channels"):
            raise UserError(f"--teacher {teacher_path} is not an unconditional diffusion model")
        dataset = build_dataset(recipe.data, "train")
        t_shape, shape = tuple(teacher.meta["shape"]), tuple(dataset.shape)
        if len(shape) != 3 or shape[0] != t_shape[0] or shape[-1] % t_shape[-1]:
            raise UserError(f"the data's shape {shape} does not pool to the teacher's {t_shape}")
        manifest = encode_dataset(teacher, dataset, recipe.data, Path(run_dir), steps=cfg.inversion_steps,
                                  flips=recipe.data.flip, shard_size=cfg.shard_size,
                                  batch_size=max(1, recipe.train.batch_size // env.world), device=device,
                                  rank=env.rank, world=env.world, progress=progress)
        barrier()
        if env.is_main:
            write_manifest(Path(run_dir), manifest)
    finally:
        shutdown()
    return Path(run_dir) / MANIFEST


# ------------------------------------------------------------------------------------------------ reading

class LatentStore:
    """The latents of a folder written by the encode stage, looked up by (index, flip); rows are read lazily
    from the memory-mapped shards."""

    def __init__(self, path: str | Path):
        from safetensors import safe_open

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
