"""Networks. Every network is built from a frozen config dataclass (its `network:` recipe section)
tagged by `arch`, through `cfg.build(shape, out_channels, cond_channels, num_classes)`, and is called as

    net(x, noise_labels, class_labels=None, cond=None) -> tensor shaped like x (out_channels channels)

where `noise_labels` is the preconditioning's c_noise (N,), `class_labels` int64 (N,) or None, and `cond`
the condition image of a bridge (N, Cc, H, W), concatenated on the channel axis inside the network.
"""

from fsg.nets.adm import ADMConfig
from fsg.nets.edm import DhariwalUNetConfig, SongUNetConfig
from fsg.nets.grow import GrownConfig
from fsg.nets.mlp import MLPConfig
from fsg.nets.unet import UNetConfig

NETWORK_CONFIGS = [MLPConfig, UNetConfig, ADMConfig, SongUNetConfig, DhariwalUNetConfig, GrownConfig]
