"""Training methods, one module each: a config dataclass (tag `name`) and a `Method` subclass (`fsg.methods.base`).

`METHODS` is the registry: a recipe's `method.name` picks the class, whose `config` validates the section and whose
`command` is the `fsg` training command that runs it. A new method is its own module plus one line here.
"""

from fsg.methods.cbd import CBDMethod
from fsg.methods.cbt import CBTMethod
from fsg.methods.cd import CDMethod
from fsg.methods.ct import CTMethod
from fsg.methods.ddm import DDMMethod
from fsg.methods.diffusion import DiffusionMethod
from fsg.methods.ect import ECTMethod, SCTMethod
from fsg.methods.meanflow import MeanFlowMethod
from fsg.methods.pagoda import PaGoDAMethod
from fsg.methods.scm import SCMCDMethod, SCMCTMethod

METHODS = {
    "diffusion": DiffusionMethod,
    "ddm": DDMMethod,
    "cd": CDMethod,
    "cbd": CBDMethod,
    "ct": CTMethod,
    "cbt": CBTMethod,
    "ect": ECTMethod,
    "sct": SCTMethod,
    "pagoda": PaGoDAMethod,
    "scm-ct": SCMCTMethod,
    "scm-cd": SCMCDMethod,
    "meanflow": MeanFlowMethod,
}
