"""Training methods, one module each. A method is a config dataclass (tag `name`) plus a `Method`
subclass; `METHODS` maps the tag to both."""

from fsg.methods.cbd import CBDConfig, CBDMethod
from fsg.methods.cbt import CBTConfig, CBTMethod
from fsg.methods.cd import CDConfig, CDMethod
from fsg.methods.ct import CTConfig, CTMethod
from fsg.methods.ddm import DDMConfig, DDMMethod
from fsg.methods.diffusion import DiffusionConfig, DiffusionMethod
from fsg.methods.ect import ECTConfig, ECTMethod, SCTConfig, SCTMethod
from fsg.methods.pagoda import PaGoDAConfig, PaGoDAMethod

METHODS = {
    "diffusion": (DiffusionConfig, DiffusionMethod),
    "cd": (CDConfig, CDMethod),
    "ct": (CTConfig, CTMethod),
    "cbd": (CBDConfig, CBDMethod),
    "cbt": (CBTConfig, CBTMethod),
    "ddm": (DDMConfig, DDMMethod),
    "ect": (ECTConfig, ECTMethod),
    "sct": (SCTConfig, SCTMethod),
    "pagoda": (PaGoDAConfig, PaGoDAMethod),
}

METHOD_CONFIGS = [cfg for cfg, _ in METHODS.values()]
