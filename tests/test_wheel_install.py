"""After a plain (non-editable) wheel install, in an empty folder far from the checkout, the README's commands find the
bundled models, inputs and recipes by name (issue 20). Builds the wheel from a copy of the sources (nothing is written
into the checkout) and installs it without dependencies into a fresh venv that sees this environment's packages."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("fsg", "assets", "recipes", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


def _run(args, cwd, env, timeout=600):
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, args))}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.long
def test_readme_commands_work_after_a_wheel_install(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(
            ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__", "*.pyc")}
                                        if (ROOT / name).is_dir() else {}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist"],
         tmp_path, env)
    wheel = next((tmp_path / "dist").glob("fsg-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env)
                .stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")      # torch & co., not the checkout
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], tmp_path, env)

    work = tmp_path / "empty"
    work.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    where = _run([python, "-c", "import fsg, fsg.resources as r; print(fsg.__file__); print(r.BUNDLE.is_dir())"],
                 work, env).stdout.split()
    assert Path(where[0]).is_relative_to(site) and where[1] == "True"          # the wheel's copy, with its bundle

    fsg = [venv / "bin" / "fsg"]
    from fsg.version import __version__

    assert _run([*fsg, "--version"], work, env).stdout.strip() == f"fsg {__version__}"
    assert "edm_digits" in _run([*fsg, "models"], work, env).stdout
    listed = _run([*fsg, "recipe", "list"], work, env).stdout
    assert "tiny/edm_toy" in listed and "edm_cifar10" in listed
    assert "toy:moons" in _run([*fsg, "recipe", "show", "tiny/edm_toy"], work, env).stdout
    _run([*fsg, "sample", "-n", 4, "--steps", 1, "--grid", "g.png"], work, env)
    # the README's editing commands, with their assets/... paths
    _run([*fsg, "edit", "inpaint", "--model", "assets/cd_digits", "--input", "assets/editing/inputs/digits",
          "--mask", "assets/editing/inputs/mask.png", "--steps", 1, "--out", "assets/editing/inpaint"], work, env)
    _run([*fsg, "interpolate", "--model", "assets/cd_digits", "-n", 10, "--seeds", "0,1", "--out", "interp.png"],
         work, env)
    # the tour, shortened: a shipped recipe by its README path, then its samples scored from the CLI
    _run([*fsg, "train-diffusion", "--recipe", "recipes/tiny/edm_toy.yaml", "--run-dir", "runs/edm_toy",
          "--max-steps", 3, "--no-progress", "--device", "cpu"], work, env)
    _run([*fsg, "sample", "--model", "runs/edm_toy", "--steps", 2, "-n", 100, "--out", "s.npz"], work, env)
    assert "sliced W2" in _run([*fsg, "eval-toy", "--samples", "s.npz", "--ref", "toy:moons"], work, env).stdout
    for made in ("g.png", "assets/editing/inpaint/comparison.png", "interp.png", "runs/edm_toy/model.safetensors"):
        assert (work / made).is_file(), made
