"""Copy a run's model into assets/ in half precision (weights are upcast on load), with its recipe.

    python benchmarks/bundle_asset.py runs/cd_digits assets/cd_digits
"""

from __future__ import annotations

import shutil
from pathlib import Path


from fsg.io.checkpoint import read_model, save_model


def main(run: str, dest: str) -> None:
    state, meta = read_model(run)
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_model(out / "model.safetensors", half, {**meta, "bundled_dtype": "float16"})
    shutil.copy(Path(run) / "config.yaml", out / "recipe.yaml")
    print(f"{out / 'model.safetensors'}: {(out / 'model.safetensors').stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="run folder (or model file) to bundle")
    ap.add_argument("dest", help="destination folder under assets/")
    args = ap.parse_args()
    main(args.run, args.dest)
