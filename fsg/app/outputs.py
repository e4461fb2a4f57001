"""The one rule for the output path of every command (`--out`, `--grid`): what it names, checked before work starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from fsg.errors import UserError

FOLDER = "folder"


def output_kind(path: str | Path, allowed: Sequence[str], option: str = "--out") -> str:
    """What `path` names: FOLDER for a name ending in '/', a name without a suffix or an existing folder, else the
    file's suffix ('.npz', '.png', ...). A kind not in `allowed`, a path below a file, a folder that exists as a file
    or an unwritable place is a UserError naming `option`; nothing is created (the first write makes the folders)."""
    text, path = str(path), Path(path)
    folder = text.endswith(("/", os.sep)) or path.is_dir() or path.suffix == ""
    kind = FOLDER if folder else path.suffix.lower()
    if kind not in allowed:
        wanted = " or ".join("DIR/" if k == FOLDER else f"FILE{k}" for k in allowed)
        raise UserError(f"{option}: expected {wanted}, got {text}")
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{option} {text}: a file of that name exists (a folder was meant)")
    if not folder and path.is_dir():
        raise UserError(f"{option} {text}: a folder of that name exists (a {kind} file was meant)")
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    if not existing.is_dir() and existing != path:
        raise UserError(f"{option} {text}: {existing} is a file, not a folder")
    place = existing if existing.is_dir() else existing.parent
    if not os.access(place, os.W_OK | os.X_OK):
        raise UserError(f"{option} {text}: {place} is not writable")
    return kind
