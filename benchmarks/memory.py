"""Peak memory (max RSS of the process) of `fsg sample` and `fsg eval-fid` at N = 1,000 and 10,000 images:
it must not grow with N (samples stream to a memory-mapped .npz; features stream into running sums).

    python benchmarks/memory.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from speed import model_for  # noqa: E402

from fsg.io.checkpoint import save_model  # noqa: E402

CHILD = """
import resource, sys, runpy
sys.argv = ["fsg", *sys.argv[1:]]
try:
    runpy.run_module("fsg", run_name="__main__")
finally:
    print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def peak_mb(*args: str) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    r = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    kb = int(next(line.split()[1] for line in r.stderr.splitlines() if line.startswith("MAXRSS_KB")))
    return kb / 1024


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = model_for("recipes/tiny/edm_digits.yaml", "consistency")
        save_model(Path(tmp) / "model.safetensors", model.denoiser.net.state_dict(), model.meta)
        for n in (1000, 10000):
            out = Path(tmp) / f"s{n}.npz"
            rows.append({"command": "fsg sample --steps 1", "n": n,
                         "peak_rss_mb": peak_mb("sample", "--model", tmp, "-n", str(n), "--batch-size", "250", "--out", str(out))})
            rows.append({"command": "fsg eval-fid --features digits", "n": n,
                         "peak_rss_mb": peak_mb("eval-fid", "--samples", str(out), "--ref", "digits", "--features", "digits")})
    report("memory", "Peak memory against N (must stay flat)", ["command", "n", "peak_rss_mb"], rows)


if __name__ == "__main__":
    main()
