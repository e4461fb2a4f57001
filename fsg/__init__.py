"""fsg: few-step generation (consistency models, consistency tuning, continuous-time consistency models, flow maps,
diffusion bridges, DDM, PaGoDA) on one core, with one training engine.

    import fsg
    model = fsg.load("cd_digits")            # a bundled model, a run folder, a .safetensors file or a public checkpoint
    images = fsg.to_pil(model.sample(16, steps=1, seed=0))

The public API is `__all__`: `load`, `train`, `Model` and `to_pil` are those of `fsg.app.api`, imported on first use so
that `import fsg.models` (or any other part) does not import the whole library (`fsg.train` is the training engine's
subpackage made callable as `fsg.app.api.train`); `list_models` and `list_recipes` name what ships with fsg.
Everything else is internal and may change between versions.
"""

import sys
import types

from fsg.version import __version__

__all__ = ["Model", "__version__", "list_models", "list_recipes", "load", "to_pil", "train"]
_API = ("Model", "load", "to_pil", "train")


def list_models() -> dict[str, str]:
    """The bundled models by name, with what each is (`fsg.load(name)` loads one; `fsg models` prints them)."""
    from fsg.resources import BUNDLED_MODELS

    return dict(BUNDLED_MODELS)


def list_recipes() -> dict[str, str]:
    """The shipped recipes by name (`tiny/edm_toy`), with their description line (`fsg.train(name)` trains one;
    `fsg recipe list` prints them)."""
    from fsg.resources import list_recipes as shipped

    return shipped()


def __getattr__(name: str):
    if name == "train":          # the subpackage, made callable as it is set (see _Package)
        import importlib

        return importlib.import_module("fsg.train")
    if name in _API:
        from fsg.app import api

        return getattr(api, name)
    raise AttributeError(f"module 'fsg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})


class _TrainPackage(types.ModuleType):
    """The training engine's subpackage `fsg.train`, callable as the API function: `fsg.train(recipe, ...)` is
    `fsg.app.api.train`. Python sets the package attribute `train` to the subpackage whenever it is imported, so
    the subpackage itself is made callable rather than hidden (`import fsg.train.engine` keeps working)."""

    def __call__(self, recipe, **kwargs):
        from fsg.app.api import train

        return train(recipe, **kwargs)


class _Package(types.ModuleType):
    """The `fsg` package object: the subpackage `fsg.train` becomes a _TrainPackage as it is set."""

    def __setattr__(self, name: str, value) -> None:
        if name == "train" and type(value) is types.ModuleType:
            value.__class__ = _TrainPackage
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
