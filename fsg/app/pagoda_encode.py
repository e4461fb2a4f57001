"""PaGoDA's encode stage (`fsg grow-decoder --stage encode`): z = Enc(x) of every training item written to the sharded
latent store that `fsg.data.latents.LatentStore` reads (layout there). Shard k is encoded by rank k mod world; a shard
that exists is complete (atomic writes) and skipped, so a killed job continues where it stopped."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file

from fsg.core.inversion import encode, to_latent_resolution
from fsg.data import build_dataset
from fsg.data.latents import FORMAT, MANIFEST, PENDING, all_keys, data_identity, shard_name, shards_of_rank
from fsg.errors import UserError
from fsg.io.checkpoint import atomic_write
from fsg.models.load import load_model
from fsg.models.meta import model_fingerprint
from fsg.progress import Progress
from fsg.train.dist import barrier, init_distributed, shutdown


@torch.no_grad()
def encode_shard(teacher, dataset, keys: Sequence[tuple[int, bool]], steps: int, batch_size: int, device,
                 conditional: bool) -> dict[str, torch.Tensor]:
    """The tensors of one shard: z = Enc(x) (fsg.core.inversion.encode) of each key's image, with the
    teacher (a LoadedModel) at its own resolution."""
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
    start = time.time()
    with Progress(len(mine), "encode", start=len(mine) - len(todo), unit="shard", enabled=progress and rank == 0) as bar:
        for k in todo:
            tensors = encode_shard(teacher, dataset, keys[k * shard_size:(k + 1) * shard_size], steps,
                                   batch_size, device, conditional)
            _write_shard(out / shard_name(k), tensors)
            bar.advance()
    manifest["seconds_rank0"] = round(time.time() - start, 3)
    manifest["encoded_now"] = len(todo)
    return manifest


def _write_shard(path: Path, tensors: dict[str, torch.Tensor]) -> None:
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


