"""Forward-mode derivatives through every fsg network: the JVP of torch.func (attention on its math path) equals a
central finite difference of the network in float64, in the input and in the noise label."""

import pytest
import torch

from fsg.nets import NETWORKS
from fsg.nets.forward_ad import jvp

CASES = {   # arch -> (data shape, small config with attention where the network has it)
    "mlp": ((2,), dict(hidden=16, depth=1, emb_dim=8)),
    "unet": ((1, 8, 8), dict(model_channels=8, channel_mult=(1, 2), attn_resolutions=(4,))),
    "adm": ((1, 8, 8), dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,),
                            num_head_channels=16)),
    "songunet": ((1, 8, 8), dict(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))),
    "dhariwal": ((1, 8, 8), dict(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,))),
    "grown": ((1, 16, 16), dict(base={"arch": "unet", "model_channels": 8, "channel_mult": [1, 2], "attn_resolutions": [4]},
                                levels=1, channels=8)),
    "edm2": ((1, 8, 8), dict(model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                             channels_per_head=8, logvar_channels=8)),
}


def test_every_registered_network_has_a_jvp_case():
    assert set(NETWORKS) <= set(CASES), set(NETWORKS) - set(CASES)


@pytest.mark.parametrize("arch", list(CASES))
@pytest.mark.parametrize("double_norm", [False, True])
def test_jvp_matches_central_differences(arch, double_norm):
    from fsg.io.config import from_dict

    shape, kw = CASES[arch]
    cfg_cls = NETWORKS[arch]
    fields = {f for f in cfg_cls.__dataclass_fields__}
    if double_norm and "double_norm" not in fields:
        pytest.skip(f"{arch} has no time modulation option")
    cfg = from_dict(cfg_cls, {**kw, **({"double_norm": True} if double_norm else {})})
    torch.manual_seed(0)
    net = cfg.build(shape, shape[0]).double().eval()       # eval: the same (no) dropout in every evaluation
    with torch.no_grad():                      # zero-initialised output layers would make the derivative trivially 0
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    x, vx = (torch.randn(3, *shape, generator=g, dtype=torch.float64) for _ in range(2))
    c, vc = torch.rand(3, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)

    def f(x, c):
        return net(x, c)

    _, tangent = jvp(f, (x, c), (vx, vc))
    h = 1e-6
    numeric = (f(x + h * vx, c + h * vc) - f(x - h * vx, c - h * vc)) / (2 * h)
    scale = float(numeric.abs().max())
    assert scale > 1e-3
    assert torch.allclose(tangent, numeric, atol=1e-5 * scale, rtol=0), float((tangent - numeric).abs().max()) / scale
