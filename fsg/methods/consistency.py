"""What consistency distillation and training share: the target network theta^-, the distance d(., .) and the loss

    L = lambda(t, r) d(f_theta(x_t, t), f_theta^-(x_r, r)),   r < t,

Eq. 7 (CD) and Eq. 10 (CT) of Song et al. 2023 with their t_{n+1} written t and t_n written r. Each method says how
it draws the pair (t, r) and the target point x_r (`target_point`), then calls `pair_loss`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fsg.core.distances import consistency_distance
from fsg.methods.base import Method, online_and_target
from fsg.nets.lpips import load_lpips as lpips_network


def load_lpips(device) -> nn.Module:
    """LPIPS as a frozen loss network, from local weights only ($FSG_LPIPS, see fsg.nets.lpips); never downloads."""
    return lpips_network(None, device).requires_grad_(False)


class ConsistencyMethod(Method):
    """A consistency model f_theta with boundary scalings, trained against a target network theta^-."""

    precond = "consistency"
    default_sampler = "consistency"
    default_steps = 1

    def __init__(self, cfg, model, process, **kw):
        super().__init__(cfg, model, process, **kw)
        self.target = copy.deepcopy(model).requires_grad_(False)
        self.lpips = load_lpips(next(model.parameters()).device) if cfg.distance == "lpips" else None

    def frozen(self):
        return [*super().frozen(), self.target, *([self.lpips] if self.lpips is not None else [])]

    def target_ema(self, step: int) -> float:
        """mu of the target network at `step`."""
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """theta^- <- stopgrad(mu theta^- + (1 - mu) theta) (Algorithm 2/3 of Song et al. 2023)."""
        mu = self.target_ema(step)
        for p_t, p in zip(self.target.parameters(), self.model.parameters()):
            p_t.lerp_(p.detach(), 1 - mu)
        for b_t, b in zip(self.target.buffers(), self.model.buffers()):
            b_t.copy_(b)

    def state_dict(self):
        return {"target": self.target.state_dict()}

    def load_state_dict(self, state):
        self.target.load_state_dict(state["target"])

    def pair_loss(self, nets, batch, x_t: torch.Tensor, t: torch.Tensor, x_r: torch.Tensor, r: torch.Tensor,
                  weight: torch.Tensor):
        """lambda d(f_theta(x_t, t), f_theta^-(x_r, r)), the target under the online pass's dropout mask; t, r (N,)."""
        online, target = online_and_target(nets["model"], self.target, x_t, t, x_r, r, cond=batch.get("cond"),
                                           labels=batch.get("label"))
        dist = consistency_distance(online, target, self.cfg.distance, self.cfg.huber_c, self.lpips)
        return {"model": (weight * dist).mean()}, {"distance": dist.mean().item()}
