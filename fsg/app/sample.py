"""`fsg sample`, files out: run a sampler over a list of seeds and stream the samples to an .npz, a folder of PNGs
and/or a grid, alone or split between the ranks of `torchrun`.

The .npz is ADM's layout (guided-diffusion's and consistency_models' `image_sample.py`, read by ADM's evaluator):
`arr_0` uint8 (N, H, W, C), and for a class-conditional model the classes in `arr_1` (int64, N); 2-D samples are
float32 (N, D); a bridge model's conditions go to `cond`. PNGs are named by seed as EDM's generate.py names them
(`000042.png`, with `--subdirs` in `000000/`, `001000/`, ...: one folder per 1000 seeds).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from fsg.app.outputs import FOLDER, output_kind
from fsg.core.bridges import BridgeProcess
from fsg.data.conditions import condition_source, mask_source
from fsg.data.vae import latent_decoder
from fsg.errors import UserError
from fsg.io.images import NpzWriter, save_samples_png, to_uint8
from fsg.models.load import load_model
from fsg.progress import Progress
from fsg.sampling.generate import SampleStream, iter_samples

GRID_IMAGES = 64       # images in a --grid PNG
GRID_POINTS = 10_000   # 2-D points in a --grid scatter plot
LABELS_KEY = "arr_1"   # ADM's key of the class labels; fsg < 0.3 wrote them as "labels"


def read_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(arr_0, class labels or None) of a samples .npz: labels from ADM's `arr_1`, or the `labels` of files written by
    fsg before 0.3."""
    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        raise UserError(f"--samples {path}: expected an existing .npz file (arr_0)")
    with np.load(path) as npz:
        if "arr_0" not in npz.files:
            raise UserError(f"--samples {path}: no arr_0 (the samples) in the file; it holds {', '.join(npz.files)}")
        labels = next((npz[k] for k in (LABELS_KEY, "labels") if k in npz.files), None)
        return npz["arr_0"], labels


def png_path(folder: Path, seed: int, subdirs: bool) -> Path:
    """EDM's file name of a seed's image: `folder/000042.png`, with `subdirs` `folder/000000/000042.png`."""
    return (folder / f"{seed - seed % 1000:06d}" if subdirs else folder) / f"{seed:06d}.png"


def gathered(stream: SampleStream, n_total: int, world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """The batches of every rank's stream of `n_total` samples in all on rank 0 (in rounds: one batch of each rank
    per round), nothing on the others; the stream itself alone."""
    if world == 1:
        yield from stream
        return
    import torch.distributed as dist

    rank = dist.get_rank()
    rounds = math.ceil(math.ceil(n_total / world) / stream.batch_size)     # rank 0 has the most batches
    batches = iter(stream)
    for _ in range(rounds):
        mine = next(batches, None)
        everyone = [None] * world if rank == 0 else None
        dist.gather_object(mine, everyone, dst=0)
        for batch in everyone or []:
            if batch is not None:
                yield batch


def run_sampling(model_path, n: int | None = None, *, seeds: Sequence[int] | None = None, out: Path | None = None,
                 grid: Path | None = None, subdirs: bool = False, seed: int = 0, batch_size: int = 64, device="cpu",
                 cond: Path | None = None, mask: Path | None = None, guidance: float | None = None,
                 progress: bool = True, rank: int = 0, world: int = 1, vae: Path | None = None, **knobs) -> dict:
    """`fsg sample`: the samples of indices 0..n-1, or of `seeds`, to an .npz (ADM's layout), PNGs and/or a grid.
    `guidance` is classifier-free guidance (default 1, off), except for bridge models, where it is the hybrid
    sampler's weight w of the h-term (no CFG for bridges). Under torchrun (`world` > 1) each rank samples every
    world-th seed and rank 0 writes everything: the files are those of one process. Returns a report on rank 0:
    n, nfe, sampler, knobs (the sampler's numeric settings), mask, seconds, written, world. A model of SD-VAE latents
    (EDM2 img512, `meta["vae"]`) is decoded to pixels by `vae`, a local diffusers AutoencoderKL folder, on rank 0."""
    if seeds is None:
        if n is None or n < 1:
            raise UserError(f"-n must be at least 1, got {n}")
        seeds = range(n)
    elif n is not None:
        raise UserError("give -n or --seeds, not both (--seeds 0-63 is 64 samples)")
    seeds = list(seeds)
    if not seeds:
        raise UserError("--seeds: no seed given")
    kind = output_kind(out, (".npz", FOLDER)) if out is not None else None
    if grid is not None:
        output_kind(grid, (".png",), "--grid")
    if subdirs and kind != FOLDER:
        raise UserError("--subdirs: applies to --out DIR/ (PNG files, one folder per 1000 seeds)")
    model = load_model(model_path, device)
    decode = latent_decoder(model.meta, vae, device)     # SD-VAE latents -> images (EDM2 img512); else the identity
    shape = decode.image_shape(model.shape)
    vector = len(shape) == 1
    if vector and kind == FOLDER:
        raise UserError("--out DIR/ writes PNG images; 2-D samples go to an .npz file")
    if isinstance(model.process, BridgeProcess):
        knobs["w"], guidance = guidance, None
    conds = masks = mask_kind = None
    if model.meta.get("cond_channels", 0):   # image-to-image: condition i from --cond, else the held-out data
        conds = condition_source(model.meta, cond)
        masks, mask_kind = mask_source(model.meta, conds, mask)
    elif cond is not None or mask is not None:
        raise UserError(f"{'--cond' if cond is not None else '--mask'}: this model takes no condition image")
    stream = iter_samples(model, len(seeds), seeds=seeds, seed=seed, batch_size=batch_size, device=device,
                          rank=rank, world=world, conds=conds, masks=masks,
                          guidance=1.0 if guidance is None else guidance, **knobs)
    writes = rank == 0
    row_of = {s: i for i, s in enumerate(seeds)}
    npz = None
    if writes and kind == ".npz":
        row = shape if vector else (shape[1], shape[2], shape[0])
        extras = {LABELS_KEY: ((), np.int64)} if model.meta.get("num_classes", 0) else {}
        if conds is not None:
            cond_ch = model.meta["cond_channels"]
            extras["cond"] = ((cond_ch,) if vector else (*row[:2], cond_ch), np.float32 if vector else np.uint8)
        out.parent.mkdir(parents=True, exist_ok=True)
        npz = NpzWriter(out, len(seeds), tuple(row), np.float32 if vector else np.uint8, extras or None)
    grid_n = GRID_POINTS if vector else GRID_IMAGES
    shown: dict[int, torch.Tensor] = {}          # list position -> sample, the first grid_n of the list
    start = time.time()
    with Progress(len(seeds), "sample", unit="sample", enabled=progress and writes) as bar:
        for idx, x, labels in gathered(stream, len(seeds), world):
            x = decode(x)
            rows = [row_of[int(s)] for s in idx]
            pixels = x.numpy().astype(np.float32) if vector else to_uint8(x)
            if npz is not None:
                npz.write(pixels, np.asarray(rows))
                if labels is not None:
                    npz.write(labels.numpy(), np.asarray(rows), LABELS_KEY)
                if conds is not None:
                    y = conds(idx.tolist())
                    npz.write(y.numpy().astype(np.float32) if vector else to_uint8(y), np.asarray(rows), "cond")
            if kind == FOLDER:
                for s, img in zip(idx.tolist(), pixels):
                    path = png_path(out, s, subdirs)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)
            if grid is not None:
                shown.update((r, xi) for r, xi in zip(rows, x) if r < grid_n)
            bar.advance(len(idx), nfe=stream.nfe)
    seconds = time.time() - start
    written = []
    if npz is not None:
        npz.close()
        written.append(out)
    if writes and kind == FOLDER:
        written.append(out)
    if writes and grid is not None:
        save_samples_png(torch.stack([shown[r] for r in sorted(shown)]), grid)
        written.append(grid)
    used = {k: v for k, v in stream.plan.knobs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"n": len(seeds), "nfe": stream.nfe, "sampler": stream.plan.name, "knobs": used, "mask": mask_kind,
            "seconds": seconds, "written": written, "world": world}
