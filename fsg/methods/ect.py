"""Easy Consistency Tuning (ECT; Geng et al. 2024) and Stable Consistency Tuning (SCT; Wang, Geng & Li 2024).

Both tune a diffusion model (an fsg EDM teacher, or an imported EDM/ECT checkpoint) into a consistency
model f_theta(x, t) of the process x_t = x0 + t eps; the loss calls no teacher, only the network itself:

    t ~ exp(N(P_mean, P_std^2)),  r = r(t, stage) < t          ECT's mapping (fsg.core.schedules.ect_r)
    eps ~ N(0, I), shared:  x_t = x0 + t eps
    x0_hat = x0                                                 ECT: one-sample estimate of E[x0 | x_t]
    x0_hat = sum_j w_j x0_j,  w = softmax_j(-||x_t - x0_j||^2 / 2t^2)   SCT: the score identity over the batch
    x_r = x_t - (t - r) (x_t - x0_hat) / t                      one Euler step of the PF-ODE (= x0 + r eps for ECT)
    target = stopgrad f_theta(x_r, r)                           same weights, same dropout mask; f(x, 0) = x
    loss = w(t, r) (sqrt(||f_theta(x_t, t) - target||^2 + c^2) - c)

w(t, r) = 1 / (t - r) (the CIFAR-10 reference) or EDM's lambda(t) = (t^2 + sd^2) / (t sd)^2 (the ImageNet-64
variant, `weighting: edm`). c = 0 gives the plain L2 norm, as the reference does.

Verified against locuslab/ect (training/loss.py on `main` and `imgnet`, training/networks.py ECMPrecond,
training/ct_training_loop.py): the t distribution, both mappings and their clamp, the stage counter
`stage = tick // double_ticks`, shared eps, the shared dropout mask, f(x_0, 0) = x0 where r = 0, the
pseudo-Huber norm and both weightings, EDM scalings in train mode and boundary scalings in eval mode.

Choices of fsg:
- The process is EDM with the teacher's sigma_data; a VP-preconditioned teacher is tuned with EDM scalings
  exactly as the reference transfers EDM's VP CIFAR-10 network into ECMPrecond. The boundary sigma_min of
  the eval scalings is the teacher's (0.002) unless `sigma_min` is set; the reference's ECMPrecond uses
  0.003, which `recipes/ect_cifar10.yaml` sets. The exported process records it, so the consistency sampler
  re-noises with sqrt(t^2 - sigma_min^2) around the same boundary.
- `target_var` (logged for both modes) is the delta-method variance per dimension of the x0 estimate given x_t,
  hence of the Euler target direction: sum_j v_ij^2 ||x0_j - m_i||^2 / d averaged over the batch, where m_i is
  the batch's score-identity mean and v_ij the estimator's weights (ECT: v = identity; SCT: v = w). It is a
  lower bound: where the weights collapse on the own sample (small t, or any t < ~3 on images at batch 128)
  m_i = x0_i and it reads ~0 while the true variance is the posterior variance, ECT's. `ref_ess`, the mean
  effective number of references 1 / sum_j w_ij^2, says where that happens (1: SCT's target is ECT's).
  benchmarks/ect_vs_sct.py measures the real bias and variance per t by Monte Carlo.

SCT (Wang, Geng & Li 2024, arXiv 2410.18958). Its code is not released and its full text could not be read; what
could be read (abstract, figure captions, section summaries, the ICLR 2025 reviews) settles some of fsg's choices:
- CONFIRMED in structure: the variance-reduced target is the self-normalised score-identity estimate above, the
  Stable Target Field form (Xu et al. 2023; Fig. 1, every reviewer). SCT's own equation (Eq. 13/14 of the
  submitted version) is UNVERIFIED.
- CONFIRMED: the sample's own x0 is one of the references (Fig. 1: "CT is a special case of SCT with only one
  reference sample"; STF's code). It is also what makes the estimate exactly unbiased for E[x0 | x_t] at every
  batch size when the other references are i.i.d. data (tests/test_sct_estimator.py), so a finite batch costs
  variance, never bias.
- LEFT OPEN, leaning against: the references are the current (micro-)batch of this rank. Fig. 4 ablates a
  "batch-based" stable target against a better "(all)", a wider reference set of UNVERIFIED extent (STF draws
  a separate reference batch of 1,024-4,096). A wider pool must keep the own sample and draw the others i.i.d.
  to stay unbiased.
- CONFIRMED in spirit: with class labels a sample whose label was kept sees only same-class references (the
  paper's conditional estimate, "not directly applicable to non-categorical conditioning"). LEFT OPEN: a sample
  whose label was dropped sees the whole batch (the unconditional posterior); SCT's "CFG" guides with a worse
  copy of the model itself, and whether it drops labels at all is UNVERIFIED.
- LEFT OPEN (only its existence is confirmed): the smoother schedule. fsg's form makes ECT's stage continuous
  through the middle of each stage, stage = max(k / N - 1/2, 0) instead of floor(k / N) (fsg.core.schedules.
  ect_stage), so dt has ECT's geometric mean over each stage. fsg's first form, k / N, ran half a stage ahead
  (dt 0.72x ECT's on average, 0.5x at the end of each stage); on the toy over four teachers the mid-stage form
  lowered SCT's worst 1-step sliced W2 from 0.089 to 0.073 (issue 19).
- UNVERIFIED, inherited from ECT: the mapping r(t), q, k, b, the weighting, the pseudo-Huber c and every
  hyperparameter of the recipes.
- Not SCT's: the edge-skipping option of the consistency sampler is fsg's re-noising variant on a single-phase
  model; SCT's edge-skipping is a sampler for its phased (multistep) models, which fsg does not train.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from fsg.core.distances import pseudo_huber
from fsg.core.edm import EDMProcess
from fsg.core.process import append_dims, randn
from fsg.core.schedules import ect_r, ect_stage
from fsg.errors import UserError
from fsg.methods.base import Method, RunInfo, online_and_target


@dataclass(frozen=True)
class ECTConfig:
    name: Literal["ect"] = "ect"
    target: Literal["sample", "batch"] = "sample"      # x0_hat: the sample itself (ECT) or the batch score identity (SCT)
    schedule: Literal["stages", "smooth"] = "stages"   # stage = floor(k / N) (ECT) or max(k / N - 1/2, 0) (SCT), N = double_steps
    P_mean: float = -1.1                     # ln t ~ N(P_mean, P_std^2) (CIFAR-10; ImageNet-64: -0.8)
    P_std: float = 2.0                       # (ImageNet-64: 1.6)
    mapping: Literal["sigmoid", "const"] = "sigmoid"   # r(t) of ECT
    q: float = 2.0                           # dt shrinks by q each stage (ImageNet-64: 4; "1 hour" run: 256)
    k: float = 8.0                           # sigmoid mapping: r = t (1 - q^-(stage+1) (1 + k sigmoid(-b t)))
    b: float = 1.0
    double_steps: int = 25000                # optimizer steps per stage (reference: 250 ticks of 100 iterations)
    huber_c: float = 0.0                     # pseudo-Huber c; 0 = the L2 norm (CIFAR-10: 0; ImageNet-64: 0.06)
    weighting: Literal["inv_dt", "edm"] = "inv_dt"     # 1/(t - r) (CIFAR-10) or (t^2 + sd^2)/(t sd)^2 (ImageNet-64)
    sigma_min: float | None = None           # boundary of the eval scalings (None: the teacher's; reference 0.003)


@dataclass(frozen=True)
class SCTConfig(ECTConfig):
    """ECT's fields with SCT's defaults: the batch score-identity target and the smooth schedule."""

    name: Literal["sct"] = "sct"
    target: Literal["sample", "batch"] = "batch"
    schedule: Literal["stages", "smooth"] = "smooth"


def reference_weights(x_t: torch.Tensor, t: torch.Tensor, x0_ref: torch.Tensor,
                      labels: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
    """w_ij = softmax_j(-||x_t,i - x0_j||^2 / (2 t_i^2)) over the reference samples j, float64 (N, M).

    The posterior p(x0_j | x_t,i) of x_t = x0 + t eps when x0 is uniform on the references (the score
    identity grad log p_t(x) = E[(x0 - x) / t^2 | x_t = x], Stable Target Field of Xu et al. 2023). With
    labels, query i sees only references of its class; a query label of -1 (dropped) sees all of them.
    """
    q, ref = x_t.flatten(1).double(), x0_ref.flatten(1).double()                # (N, d), (M, d)
    d2 = (q.pow(2).sum(1, keepdim=True) + ref.pow(2).sum(1) - 2 * q @ ref.T).clamp(min=0)   # (N, M)
    logits = -d2 / (2 * t.double()[:, None] ** 2)
    if labels is not None:
        visible = (labels[:, None] < 0) | (labels[:, None] == ref_labels[None, :])         # (N, M)
        logits = logits.masked_fill(~visible, float("-inf"))
    return logits.softmax(dim=1)


def posterior_mean(w: torch.Tensor, x0_ref: torch.Tensor) -> torch.Tensor:
    """x0_hat_i = sum_j w_ij x0_j, shaped like one reference per query (N, ...), in x0_ref's dtype."""
    m = w @ x0_ref.flatten(1).double()                                          # (N, d)
    return m.to(x0_ref.dtype).reshape(w.shape[0], *x0_ref.shape[1:])


def estimate_variance(v: torch.Tensor, x0_ref: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """sum_j v_ij^2 ||x0_j - m_i||^2 / d (N,): the variance per dimension of the estimate sum_j v_ij x0_j.

    For v = the self-normalised weights this is the delta-method variance of the importance estimate, close to
    the true variance when many references share the weight and ~0 where the weights collapse on one sample
    (then m_i is that sample); for v = one-hot on the query's own sample it is ||x0_i - m_i||^2 / d.
    """
    ref, m = x0_ref.flatten(1).double(), mean.flatten(1).double()               # (M, d), (N, d)
    v2 = v.double().pow(2)                                                      # (N, M)
    sq = v2 @ ref.pow(2).sum(1) - 2 * ((v2 @ ref) * m).sum(1) + v2.sum(1) * m.pow(2).sum(1)
    return sq.clamp(min=0) / ref.shape[1]


def euler_target_point(x_t: torch.Tensor, t: torch.Tensor, r: torch.Tensor, x0_hat: torch.Tensor) -> torch.Tensor:
    """x_r = x_t - (t - r) (x_t - x0_hat) / t: Euler step of dx/dt = (x - D(x, t)) / t with D = x0_hat."""
    tt, rr = append_dims(t, x_t.ndim), append_dims(r, x_t.ndim)
    return x_t - (tt - rr) * (x_t - x0_hat) / tt


def tuning_process(process, sigma_min: float | None) -> EDMProcess:
    """The EDM process ECT trains in: the teacher's when it is EDM, else EDM with the teacher's sigma_data."""
    name = getattr(process, "name", None)
    if name not in ("edm", "vp"):
        raise UserError(f"ECT/SCT tune EDM or VP diffusion models of the process x_t = x0 + t eps; the teacher's process is '{name}'")
    base = process if name == "edm" else EDMProcess(sigma_data=process.sigma_data)
    return base if sigma_min is None else dataclasses.replace(base, sigma_min=sigma_min)


class ECTMethod(Method):
    """ECT (and, with SCTConfig's defaults, SCT): the consistency loss against the network's own stop-gradient output."""

    name = "ect"
    config = ECTConfig
    precond = "ect"
    command = "tune-sct"
    paired = False
    init_from_teacher = True
    default_sampler = "consistency"
    default_steps = 1

    processes = ("edm",)

    @classmethod
    def process_for(cls, cfg, process):
        return tuning_process(process, cfg.sigma_min)

    def __init__(self, cfg, model, process, *, teacher=None, run: RunInfo = RunInfo()):
        if cfg.double_steps < 1:
            raise UserError(f"method.double_steps must be at least 1, got {cfg.double_steps}")
        # build_run copied the teacher's weights into `model`; the loss never calls the teacher, so it is not kept.
        super().__init__(cfg, model, process, run=run)

    def stage(self, step: int) -> float:
        """ECT's stage floor(k / double_steps), or fsg's smooth max(k / double_steps - 1/2, 0) (SCT)."""
        return ect_stage(step, self.cfg.double_steps, smooth=self.cfg.schedule == "smooth")

    def weight(self, t: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if self.cfg.weighting == "edm":
            return self.process.loss_weight(t)
        return 1 / (t - r)

    def loss(self, nets, batch, step, gen):
        x0, c = batch["x"], self.cfg
        labels_in, labels = batch.get("label"), batch.get("label_true")   # what the network sees; the data's classes
        n, stage = x0.shape[0], self.stage(step)
        t = (c.P_mean + c.P_std * randn((n,), gen, x0.device)).exp()           # (N,)
        r = ect_r(t, stage, c.q, c.k, c.b, c.mapping)                           # (N,), 0 <= r < t
        x_t = x0 + append_dims(t, x0.ndim) * randn(x0.shape, gen, x0.device)

        with torch.no_grad():
            w = reference_weights(x_t, t, x0, labels_in, labels)                # (N, N)
            mean = posterior_mean(w, x0)
            v = w if c.target == "batch" else torch.eye(n, dtype=w.dtype, device=w.device)
            target_var = estimate_variance(v, x0, mean).mean()
            ref_ess = (1 / w.pow(2).sum(1)).mean()                              # effective references per sample
            x_r = euler_target_point(x_t, t, r, mean if c.target == "batch" else x0)

        live = r > 0
        # f(x, 0) = x: where r = 0 the target is x_r itself; the net sees t there only to keep ln(r) finite.
        online, f_r = online_and_target(nets["model"], self.model, x_t, t, x_r, torch.where(live, r, t), labels=labels_in)
        target = torch.where(append_dims(live, x0.ndim), f_r.nan_to_num(), x_r)

        dist = pseudo_huber(online - target, c.huber_c)                         # (N,)
        loss = (self.weight(t, r) * dist).mean()
        return {"model": loss}, {"distance": dist.mean().item(), "target_var": target_var.item(),
                                 "ref_ess": ref_ess.item(), "stage": stage}


class SCTMethod(ECTMethod):
    name = "sct"
    config = SCTConfig
