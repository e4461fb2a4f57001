"""Checkpoints: `model.safetensors` with fsg metadata, full training states, atomic writes.

A model file is one safetensors file whose header carries `{"fsg": <JSON metadata>}` (process,
preconditioning, network class and config, method, step, fsg version), so `fsg sample --model PATH`
needs no other flag. Training states (optimizer, EMAs, RNG states) are `torch.save` dicts of tensors and
plain containers, read back with `weights_only=True` only.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
import warnings
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


def check_output_dir(path: str | Path, what: str) -> Path:
    """A UserError, before any work, unless `path` is a folder fsg may write into or can create: the path and
    every existing parent must be folders, and the nearest existing one writable. Creates nothing."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{what} {p}: is a file, not a folder")
    probe = p
    while not probe.exists():
        if probe.is_symlink():
            raise UserError(f"{what} {p}: {probe} is a broken link")
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {p}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {p}: cannot write in {probe} (permission denied or a read-only file system)")
    return p


_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REFUSED_OPCODE = re.compile(r"Unsupported operand (\d+)")


_PLAIN_MODULES = ("torch", "collections", "builtins", "_codecs", "numpy")    # what a weights pickle names


def foreign_global(path: str | Path) -> str | None:
    """The first class or function outside `_PLAIN_MODULES` that a plain (non-zip) pickle file names, found by reading
    its opcodes (nothing is unpickled); None when there is none or the file is not a readable pickle."""
    import pickletools

    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                name = None
                if op.name == "GLOBAL":
                    name = arg.replace(" ", ".")
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    name = f"{strings[-2]}.{strings[-1]}"
                elif isinstance(arg, str):
                    strings.append(arg)
                if name is not None and name.split(".")[0] not in _PLAIN_MODULES:
                    return name
    except Exception:  # noqa: BLE001 -- not a pickle, or a truncated one: nothing to name
        return None
    return None


def torch_load_error(path: str | Path, e: Exception) -> str:
    """One line for a file `torch.load(weights_only=True)` refused: the global or pickle instruction it refused,
    else the reason of a truncated or foreign file; torch's advice to load it with weights_only=False is left out."""
    text = str(e)
    name = m[1] if (m := _REFUSED_GLOBAL.search(text)) is not None else None
    if name is None and _REFUSED_OPCODE.search(text) is not None:
        name = foreign_global(path)           # a legacy pickle: torch stops at an opcode before the global
    if name is not None:
        return f"{path}: refusing to unpickle the global {name} (fsg never runs code from a file)"
    if (m := _REFUSED_OPCODE.search(text)) is not None:
        return f"{path}: refusing a pickle that is not plain weights (pickle opcode {m[1]}; fsg never runs code from a file)"
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text:
        return f"{path}: not a file of plain weights (a pickle of other objects; fsg never runs code from a file)"
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
    return f"{path}: unreadable or truncated PyTorch file ({type(e).__name__}{': ' + first[:120] if first else ''})"


def load_torch_file(path: str | Path, what: str = "") -> Any:
    """`torch.load(weights_only=True)` of a user's file on the CPU: tensors and plain containers only; anything
    else (a pickled function or class, a truncated or foreign file) is a one-line UserError prefixed by `what`."""
    p = Path(path)
    prefix = f"{what} " if what else ""
    if not p.is_file():
        raise UserError(f"{prefix}{p}: no such file")
    try:
        with warnings.catch_warnings():      # torch warns about the pickle protocol of foreign files: not the user's to act on
            warnings.simplefilter("ignore")
            return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- torch raises UnpicklingError, RuntimeError, EOFError... for such files
        raise UserError(prefix + torch_load_error(p, e)) from None


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
    """Read a training state with `weights_only=True` (no code is ever unpickled); a UserError for a file that is
    not a complete training state."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    try:
        state = load_torch_file(p)
    except UserError as e:
        raise UserError(f"unreadable training state: {e}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise UserError(f"unreadable training state: {p}: holds no training step (not a state fsg wrote)")
    return state


def list_states(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete training states in a folder, sorted by step."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := STATE_PATTERN.search(p.name)) and p.name.startswith("state-")]
    return sorted(found)


def state_path(ckpt_dir: str | Path, step: int) -> Path:
    return Path(ckpt_dir) / f"state-{step:08d}.pt"
