"""Checkpoints: `model.safetensors` with fsg metadata, full training states, atomic writes.

A model file is one safetensors file whose header carries `{"fsg": <JSON metadata>}` (process,
preconditioning, network class and config, method, step, fsg version), so `fsg sample --model PATH`
needs no other flag. Training states (optimizer, EMAs, RNG states) are `torch.save` dicts of tensors and
plain containers, read back with `weights_only=True` only.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from fsg.version import __version__
from fsg.errors import UserError

MODEL_FILE = "model.safetensors"
STATE_PATTERN = re.compile(r"state-(\d+)\.pt$")


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Write through `write(tmp_path)` into a temporary file beside `path`, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp makes 0600 files; keep the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_model(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write a model file (safetensors + `fsg` JSON metadata) atomically."""
    from safetensors.torch import save_file

    meta = dict(meta, fsg_version=__version__)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"fsg": json.dumps(meta)}))


def resolve_model_path(path: str | Path) -> Path:
    """A run folder, a checkpoint folder or a `.safetensors` file -> the model file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"model not found: {p}")
    if p.is_dir():
        if (p / MODEL_FILE).is_file():
            return p / MODEL_FILE
        raise UserError(f"{p} is a folder without {MODEL_FILE} (is it a run folder that never checkpointed?)")
    return p


def read_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read (state_dict, metadata) of an fsg model file; foreign or truncated files give a UserError."""
    from safetensors import safe_open

    p = resolve_model_path(path)
    if p.suffix != ".safetensors":
        raise UserError(f"{p}: not an fsg model (.safetensors); convert public checkpoints with `fsg convert {p} --out DIR`")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated headers/bodies
        raise UserError(f"{p}: unreadable or truncated safetensors file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if "fsg" not in header:
        raise UserError(f"{p}: safetensors file without fsg metadata; convert it with `fsg convert {p} --out DIR`")
    try:
        meta = json.loads(header["fsg"])
    except json.JSONDecodeError:
        raise UserError(f"{p}: corrupt fsg metadata") from None
    return tensors, meta


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a full training state atomically (torch.save of tensors and plain containers)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a training state with `weights_only=True` (no code is ever unpickled)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{p}: unreadable training state ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def list_states(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete training states in a folder, sorted by step."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := STATE_PATTERN.search(p.name)) and p.name.startswith("state-")]
    return sorted(found)


def state_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"state-{step:08d}.pt"
