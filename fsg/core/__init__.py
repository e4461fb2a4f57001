"""Pure math: forward processes, preconditioning, time grids and schedules, ODE steps, bridge and DDM algebra.

`PROCESSES` is the registry of processes: the `process.name` of a recipe or of a model's metadata picks the
class, whose fields are that section. A new process is one class (see `fsg.core.process.Process`) and one line here.
"""

from typing import Union

from fsg.core.bridges import BridgeI2SBProcess, BridgeVEProcess, BridgeVPProcess
from fsg.core.ddm import DDMConst2Process, DDMLinearProcess, DDMProcess
from fsg.core.edm import EDMProcess, VPProcess
from fsg.core.flow import FlowProcess
from fsg.core.trigflow import TrigFlowProcess

PROCESSES = {
    "edm": EDMProcess,
    "vp": VPProcess,
    "bridge-vp": BridgeVPProcess,
    "bridge-ve": BridgeVEProcess,
    "bridge-i2sb": BridgeI2SBProcess,
    "ddm": DDMProcess,
    "ddm-linear": DDMLinearProcess,
    "ddm-const2": DDMConst2Process,
    "trigflow": TrigFlowProcess,
    "flow": FlowProcess,
}

ProcessConfig = Union[tuple(PROCESSES.values())]   # a recipe's or a model's `process:` section (tag: name)
