"""The architecture as a checked contract: imports point down (import-linter's layers, in pyproject.toml), no module
imports itself through a cycle, loading a model never imports a method, and the registries are the only tables."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_import_cycles():
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("fsg")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles[:10])


def test_loading_a_model_imports_no_method_and_no_engine():
    code = ("import sys; import fsg.models.load, fsg.sampling.generate; "
            "bad = sorted(m for m in sys.modules if m.startswith(('fsg.methods', 'fsg.train', 'fsg.app', 'fsg.cli'))); "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_registry_names_its_entries_by_their_tag():
    from fsg.core import PROCESSES
    from fsg.methods import METHODS
    from fsg.nets import NETWORKS

    assert all(cls().name == name for name, cls in PROCESSES.items())
    assert all(cls().arch == name for name, cls in NETWORKS.items())
    assert all(cls.name == name and cls.config().name == name for name, cls in METHODS.items())
