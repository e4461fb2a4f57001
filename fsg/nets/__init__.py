"""Networks: nn.Module classes only. `NETWORKS` is the registry: a recipe's `network.arch` picks the config
class, one line per network. Every network is built from a frozen config dataclass (its `network:` recipe section)
tagged by `arch`, through `cfg.build(shape, out_channels, cond_channels, num_classes)`, and is called as

    net(x, noise_labels, class_labels=None, cond=None) -> tensor shaped like x (out_channels channels)

where `noise_labels` is the preconditioning's c_noise (N,), `class_labels` int64 (N,) or None, and `cond`
the condition image of a bridge (N, Cc, H, W), concatenated on the channel axis inside the network.
"""

from typing import Union

from fsg.nets.adm import ADMConfig
from fsg.nets.edm import DhariwalUNetConfig, SongUNetConfig
from fsg.nets.edm2 import EDM2UNetConfig
from fsg.nets.grow import GrownConfig
from fsg.nets.mlp import MLPConfig
from fsg.nets.unet import UNetConfig

NETWORKS = {
    "mlp": MLPConfig,
    "unet": UNetConfig,
    "adm": ADMConfig,
    "songunet": SongUNetConfig,
    "dhariwal": DhariwalUNetConfig,
    "grown": GrownConfig,
    "edm2": EDM2UNetConfig,
}

NetworkConfig = Union[tuple(NETWORKS.values())]    # a recipe's or a model's `network:` section (tag: arch)
