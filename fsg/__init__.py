"""fsg: few-step generation (consistency models, consistency tuning, diffusion bridges, DDM, PaGoDA)."""

__version__ = "0.1.0"
