"""What consistency distillation and training share: the target network theta^-, the distance d(., .)
and the loss d(f_theta(x_{t_{n+1}}, t_{n+1}), f_theta^-(x_{t_n}, t_n)) (Eq. 7 and 10 of Song et al. 2023)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from fsg.core.processes import ict_huber_c, pseudo_huber
from fsg.methods.base import Method, SharedDropout, batch_labels

DISTANCES = ("l2", "l1", "pseudo-huber", "lpips")


def consistency_distance(a: torch.Tensor, b: torch.Tensor, metric: str, huber_c: float | None = None,
                         lpips: nn.Module | None = None) -> torch.Tensor:
    """Per-sample distance d(a, b): mean squared / absolute error, pseudo-Huber or LPIPS."""
    if metric == "l2":
        return (a - b).pow(2).flatten(1).mean(1)
    if metric == "l1":
        return (a - b).abs().flatten(1).mean(1)
    if metric == "pseudo-huber":
        c = huber_c if huber_c is not None else ict_huber_c(a[0].numel())
        return pseudo_huber(a - b, c)
    if metric == "lpips":
        # as the CM reference: gray -> RGB, bilinear upsampling to 224 below 256 px
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        if a.shape[-1] < 256:
            a, b = (torch.nn.functional.interpolate(v, size=224, mode="bilinear", align_corners=False) for v in (a, b))
        return lpips(a, b).flatten()
    raise ValueError(f"unknown distance {metric!r}")


def load_lpips(device) -> nn.Module:
    """LPIPS from local weights only ($FSG_LPIPS, see fsg.eval.paired.load_lpips); never downloads."""
    from fsg.eval.paired import load_lpips as load

    return load(None, device).requires_grad_(False)


class ConsistencyMethod(Method):
    """A consistency model f_theta with boundary scalings, trained against a target network theta^-."""

    precond = "consistency"
    default_sampler = "consistency"
    default_steps = 1

    def __init__(self, cfg, model, process, **kw):
        super().__init__(cfg, model, process, **kw)
        self.target = copy.deepcopy(model).requires_grad_(False)
        self.lpips = load_lpips(next(model.parameters()).device) if cfg.distance == "lpips" else None

    def to(self, device):
        super().to(device)
        self.target.to(device)
        if self.lpips is not None:
            self.lpips.to(device)
        return self

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

    def pair_loss(self, nets, batch, x_t, t, target_point, r, weight):
        """Online f(x_t, t) against stop-gradient target f^-(x_r, r) with the same dropout mask.

        `target_point(online_rng)` computes x_r without gradients; `t`, `r` are per-sample (N,).
        """
        y, labels = batch.get("cond"), batch_labels(batch)
        rng = SharedDropout(x_t.device)
        online = nets["model"](x_t, t, cond=y, labels=labels)
        with torch.no_grad():
            x_r = target_point()
            with rng.replay():
                target = self.target(x_r, r, cond=y, labels=labels)
        dist = consistency_distance(online, target, self.cfg.distance, self.cfg.huber_c, self.lpips)
        loss = (weight * dist).mean()
        return {"model": loss}, {"distance": dist.mean().item()}
