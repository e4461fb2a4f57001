"""Stand-ins for NVlabs' `torch_utils.persistence` and `dnnlib.util.EasyDict`, so that the tests' pickles name their
globals as EDM's and EDM2's snapshots do. The reconstruct function fails the test if anything ever calls it: fsg reads
these pickles without executing them."""

from __future__ import annotations

import pickle
import sys
import types


def persistent_meta(class_name: str, state: dict, module_src: str) -> dict:
    """The record persistence pickles for one object: the class name, its module's source and its state."""
    return dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)


def install_persistence(monkeypatch):
    """Put a stand-in `torch_utils.persistence` in sys.modules; returns its `_reconstruct_persistent_obj`."""
    module = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("fsg must never call the pickled reconstruct function")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    module._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", module)
    return _reconstruct_persistent_obj


def install_easydict(monkeypatch) -> type:
    """Put a stand-in `dnnlib.util` in sys.modules; returns its `EasyDict` (a dict pickled under dnnlib's name)."""
    util = types.ModuleType("dnnlib.util")

    class EasyDict(dict):
        pass

    EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
    util.EasyDict = EasyDict
    monkeypatch.setitem(sys.modules, "dnnlib", types.ModuleType("dnnlib"))
    monkeypatch.setitem(sys.modules, "dnnlib.util", util)
    return EasyDict


class PersistencePickler(pickle.Pickler):
    """Pickles objects the way torch_utils.persistence does: `_reconstruct_persistent_obj(meta)`. A subclass says
    which objects are persistent and under which class name (`name_of`) and what state each stores (`state_of`)."""

    def __init__(self, file, reconstruct, module_src: str, protocol: int = 4):
        super().__init__(file, protocol=protocol)
        self.reconstruct, self.module_src = reconstruct, module_src

    def name_of(self, obj) -> str | None:
        raise NotImplementedError

    def state_of(self, obj, name: str) -> dict:
        raise NotImplementedError

    def reducer_override(self, obj):
        name = self.name_of(obj)
        if name is None:
            return NotImplemented
        return self.reconstruct, (persistent_meta(name, self.state_of(obj, name), self.module_src),)
