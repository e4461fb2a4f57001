"""fsg: few-step generation (consistency models, consistency tuning, diffusion bridges, DDM, PaGoDA)."""

from fsg.version import __version__

__all__ = ["__version__"]
