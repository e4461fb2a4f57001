"""Packaging beyond pyproject.toml: a wheel carries the top-level `assets/` (bundled models, digits features)
and `recipes/` as `fsg/_bundle/`, where `fsg.resources` finds them; a source checkout reads them in place."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithBundle(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):      # pip install -e: fsg.resources reads the checkout
            return
        root = Path(__file__).resolve().parent
        for name in ("assets", "recipes"):
            shutil.copytree(root / name, Path(self.build_lib) / "fsg" / "_bundle" / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithBundle})
