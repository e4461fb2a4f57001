"""`fsg sample`, files out: run a sampler over n samples and stream them to an .npz, a folder of PNGs and/or a grid."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fsg.core.bridges import BridgeProcess
from fsg.data.conditions import condition_source, mask_source
from fsg.errors import UserError
from fsg.io.images import NpzWriter, save_samples_png, to_uint8
from fsg.models.load import load_model
from fsg.sampling.generate import iter_samples

GRID_IMAGES = 64       # images in a --grid PNG
GRID_POINTS = 10_000   # 2-D points in a --grid scatter plot


def run_sampling(model_path, n: int, *, out: Path | None, grid: Path | None, seed: int = 0, batch_size: int = 256,
                 device="cpu", cond: Path | None = None, mask: Path | None = None, guidance: float | None = None,
                 **knobs) -> dict:
    """`fsg sample`: n samples to an .npz, PNGs and/or a grid. `guidance` is classifier-free guidance (default 1,
    off), except for bridge models, where it is the hybrid sampler's weight w of the h-term (no CFG for bridges).
    Returns a report: n, nfe, sampler, knobs (the sampler's numeric settings), mask, seconds, written."""
    if n < 1:
        raise UserError("-n must be at least 1")
    model = load_model(model_path, device)
    if isinstance(model.process, BridgeProcess):
        knobs["w"], guidance = guidance, None
    conds = masks = mask_kind = None
    if model.meta.get("cond_channels", 0):   # image-to-image: condition i from --cond, else the held-out data
        conds = condition_source(model.meta, cond)
        masks, mask_kind = mask_source(model.meta, conds, mask)
    elif cond is not None or mask is not None:
        raise UserError(f"{'--cond' if cond is not None else '--mask'}: this model takes no condition image")
    stream = iter_samples(model, n, seed=seed, batch_size=batch_size, device=device, conds=conds, masks=masks,
                          guidance=1.0 if guidance is None else guidance, **knobs)
    vector = len(model.shape) == 1
    labeled = bool(model.meta.get("num_classes", 0))
    npz = folder = None
    if out is not None:
        if str(out).endswith("/") or out.is_dir() or out.suffix == "":
            if vector:
                raise UserError("--out DIR/ writes PNG images; 2-D samples go to an .npz file")
            folder = out
            folder.mkdir(parents=True, exist_ok=True)
        elif out.suffix == ".npz":
            out.parent.mkdir(parents=True, exist_ok=True)
            row = model.shape if vector else (model.shape[1], model.shape[2], model.shape[0])
            extras = {"labels": ((), np.int64)} if labeled else {}
            if conds is not None:
                cond_ch = model.meta["cond_channels"]
                extras["cond"] = ((cond_ch,) if vector else (*row[:2], cond_ch), np.float32 if vector else np.uint8)
            npz = NpzWriter(out, n, tuple(row), np.float32 if vector else np.uint8, extras or None)
        else:
            raise UserError(f"--out must be a .npz file or a folder ending in '/', got {out}")
    grid_rows: list[torch.Tensor] = []
    grid_n = GRID_POINTS if vector else GRID_IMAGES
    written = []
    start = time.time()
    for idx, x, labels in stream:
        rows = x.numpy().astype(np.float32) if vector else to_uint8(x)
        if npz is not None:
            npz.write(rows, idx.numpy())
            if labels is not None:
                npz.write(labels.numpy(), idx.numpy(), "labels")
            if conds is not None:
                y = conds(idx.tolist())
                npz.write(y.numpy().astype(np.float32) if vector else to_uint8(y), idx.numpy(), "cond")
        if folder is not None:
            for i, img in zip(idx.tolist(), rows):
                Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:06d}.png")
        have = sum(len(g) for g in grid_rows)
        if grid is not None and have < grid_n:
            grid_rows.append(x[: grid_n - have])
    seconds = time.time() - start
    if npz is not None:
        npz.close()
        written.append(out)
    if folder is not None:
        written.append(folder)
    if grid is not None:
        save_samples_png(torch.cat(grid_rows), grid)
        written.append(grid)
    used = {k: v for k, v in stream.plan.knobs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"n": n, "nfe": stream.nfe, "sampler": stream.plan.name, "knobs": used, "mask": mask_kind,
            "seconds": seconds, "written": written}
