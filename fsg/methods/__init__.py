"""Training methods, one module each. A method is a config dataclass (tag `name`) plus a `Method`
subclass; `METHODS` maps the tag to both."""

from fsg.methods.cd import CDConfig, CDMethod
from fsg.methods.ct import CTConfig, CTMethod
from fsg.methods.diffusion import DiffusionConfig, DiffusionMethod

METHODS = {
    "diffusion": (DiffusionConfig, DiffusionMethod),
    "cd": (CDConfig, CDMethod),
    "ct": (CTConfig, CTMethod),
}

METHOD_CONFIGS = [cfg for cfg, _ in METHODS.values()]
