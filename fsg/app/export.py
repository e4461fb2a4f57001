"""`fsg export --diffusers DIR`, files out: a consistency model on the ADM network as a folder that diffusers'
`ConsistencyModelPipeline.from_pretrained(DIR)` loads (`unet/`, `scheduler/`, `model_index.json`), plus
`fsg_export.json` saying where it came from.

Nothing is overwritten: DIR must not exist or be an empty folder, checked before the model is loaded, and the
folder is written beside it under a temporary name and renamed into place once complete.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from fsg.errors import UserError
from fsg.models.diffusers_export import build_pipeline, check_exportable, scheduler_config
from fsg.models.load import load_model
from fsg.version import __version__

PROVENANCE_FILE = "fsg_export.json"


def check_output_folder(out: Path) -> None:
    """DIR is new or an empty folder (a UserError naming it otherwise)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--diffusers {out}: a file of that name exists (nothing is overwritten)")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--diffusers {out}: the folder is not empty (nothing is overwritten; give a new folder)")


def export_diffusers(model: str | Path | None, out: str | Path) -> dict:
    """Write `model` (a path or bundled name; None: the bundled model) as a diffusers ConsistencyModelPipeline folder
    at `out`. Returns a report: out, source, parameters, scheduler (its config)."""
    out = Path(out)
    check_output_folder(out)
    if importlib.util.find_spec("diffusers") is None:
        raise UserError("--diffusers needs the diffusers package: pip install 'fsg[diffusers]'")
    loaded = load_model(model)
    check_exportable(loaded.meta)
    pipe = build_pipeline(loaded.denoiser.net.state_dict(), loaded.meta)
    target = out.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        provenance = {"source": str(loaded.path), "method": loaded.meta.get("method"), "step": loaded.meta.get("step"),
                      "model_fsg_version": loaded.meta.get("fsg_version"), "exported_by": f"fsg {__version__}",
                      "sample": loaded.meta.get("sample")}
        (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        os.chmod(tmp, 0o777 & ~_umask())                 # mkdtemp makes 0700 folders; keep the usual permissions
        try:
            os.rename(tmp, target)                       # replaces an empty folder only, atomically
        except OSError:
            raise UserError(f"--diffusers {out}: the folder appeared or filled while exporting (nothing is "
                            f"overwritten)") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {"out": out, "source": loaded.path, "parameters": sum(p.numel() for p in pipe.unet.parameters()),
            "scheduler": scheduler_config(loaded.meta)}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
