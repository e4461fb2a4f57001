"""The one training engine: every method (EDM, DDBM, DDM, CD, CT, ECT, SCT, CBD, CBT, PaGoDA) runs here.

    batch = stream.batch_at(step) -> losses = method.loss(nets, batch, step, gen) -> backward ->
    optimizer step(s) -> method.after_step (target EMA) -> eval EMAs -> log / checkpoint / sample grid

Exact resume: the data order and every explicit random draw are pure functions of (seed, step, rank);
the checkpoint holds the weights, optimizer states, EMAs, the method's state (target network) and the
global RNG states (dropout). A run killed after step k and resumed reaches bit-identical weights.

Preemption: SIGTERM/SIGUSR1/SIGUSR2 or --time-budget make every rank finish its step, agree, write a
checkpoint and exit with EXIT_PREEMPTED (3); a non-finite loss stops with EXIT_NONFINITE (4) and keeps
the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from fsg.errors import EXIT_NONFINITE, EXIT_PREEMPTED
from fsg.io.checkpoint import MODEL_FILE, list_states, load_state, save_model, save_state, state_path
from fsg.sampling.noise import sample_seed
from fsg.train.dist import DistEnv, all_reduce_max, barrier
from fsg.train.ema import EMAs, halflife_rate

PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


class TrainingStopped(Exception):
    """The run stopped early on purpose (preemption, non-finite loss); `code` is the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


@dataclass
class RunOptions:
    run_dir: Path
    device: torch.device
    env: DistEnv = field(default_factory=DistEnv)
    max_steps: int | None = None          # overrides train.max_steps
    resume: str | None = None             # "auto" or a state file
    time_budget: float | None = None      # seconds; checkpoint and exit with EXIT_PREEMPTED when spent
    requeue: bool = False                 # `scontrol requeue $SLURM_JOB_ID` after a preemption checkpoint
    progress: bool = True


def lr_factor(step: int, t) -> float:
    """Multiplier of train.lr at `step`: linear warm-up, then the configured decay."""
    warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps > 0 else 1.0
    horizon = t.lr_decay_steps or t.max_steps
    if t.lr_decay == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * min(step / max(horizon, 1), 1.0)))
    elif t.lr_decay == "poly":
        decay = max((1 - step / max(horizon, 1)), 0.0) ** t.lr_poly_power
    elif t.lr_decay == "inv_sqrt":
        decay = 1 / math.sqrt(max(step / max(horizon, 1), 1.0))
    else:
        decay = 1.0
    return max(warm * decay, t.min_lr / t.lr if t.lr > 0 else 0.0) if t.lr_decay != "none" else warm


def make_optimizer(params, t, overrides: dict[str, Any]) -> torch.optim.Optimizer:
    kind = overrides.get("optimizer", t.optimizer)
    kw = dict(lr=overrides.get("lr", t.lr), betas=tuple(overrides.get("betas", t.betas)), eps=t.eps,
              weight_decay=overrides.get("weight_decay", t.weight_decay))
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}[kind]
    return cls(params, **kw)


def step_generator(seed: int, step: int, rank: int, micro: int, device: torch.device) -> torch.Generator:
    """The explicit generator of one micro-batch: a pure function of (seed, step, rank, micro)."""
    g = torch.Generator(device=device if device.type == "cuda" else "cpu")
    return g.manual_seed(sample_seed(seed, ((step * 4096) + rank) * 64 + micro))


class Trainer:
    """Runs a Method on a BatchStream; `export(step)` writes model.safetensors through `export_fn`."""

    def __init__(self, recipe, method, model_meta: dict[str, Any], opts: RunOptions,
                 sample_grid: Callable[[nn.Module, Path], None] | None = None,
                 transform: Callable[[dict, torch.Generator], dict] | None = None):
        self.recipe, self.method, self.meta, self.opts = recipe, method, model_meta, opts
        self.transform = transform or (lambda batch, gen: batch)
        self.t = recipe.train
        self.max_steps = opts.max_steps if opts.max_steps is not None else self.t.max_steps
        self.device, self.env = opts.device, opts.env
        self.run_dir = Path(opts.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.sample_grid = sample_grid
        self.stop_reason: str | None = None
        self.step = 0

        self.modules = method.trainable()
        for m in self.modules.values():
            m.to(self.device).train()
            if self.t.channels_last and self.device.type == "cuda":
                m.to(memory_format=torch.channels_last)
        method.to(self.device)
        self.optims = {name: make_optimizer(m.parameters(), self.t, method.optimizer_overrides(name))
                       for name, m in self.modules.items()}
        self.base_lrs = {name: [g["lr"] for g in o.param_groups] for name, o in self.optims.items()}
        rates = (halflife_rate(self.t.ema_halflife_steps, self.t.ema_every),) if self.t.ema_halflife_steps else self.t.ema
        self.emas = EMAs(self.modules["model"], rates, self.t.ema_every, self.t.ema_start).to(self.device)
        self.nets = self._wrap(self.modules)

    # ------------------------------------------------------------------ setup
    def _wrap(self, modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
        nets = {}
        for name, m in modules.items():
            net = m
            if self.env.group:
                ids = [self.device.index] if self.device.type == "cuda" else None
                net = nn.parallel.DistributedDataParallel(m, device_ids=ids)
            if self.t.compile and self.device.type == "cuda":
                net = torch.compile(net)
            nets[name] = net
        return nets

    def _install_signals(self):
        def handler(signum, frame):
            self.stop_reason = f"signal {signal.Signals(signum).name}"
        previous = {}
        for name in PREEMPT_SIGNALS:
            if hasattr(signal, name):
                previous[name] = signal.signal(getattr(signal, name), handler)
        return previous

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"step": self.step, "nets": {k: m.state_dict() for k, m in self.modules.items()},
                "optims": {k: o.state_dict() for k, o in self.optims.items()}, "emas": self.emas.state_dict(),
                "method": self.method.state_dict(), "rng": rng}

    def load(self, state: dict[str, Any]) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["nets"][k])
        for k, o in self.optims.items():
            o.load_state_dict(state["optims"][k])
        self.emas.load_state_dict(state["emas"])
        self.method.load_state_dict(state["method"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = int(state["step"])

    def resume_path(self) -> Path | None:
        r = self.opts.resume
        if r is None:
            return None
        if r == "auto":
            states = list_states(self.ckpt_dir)
            return states[-1][1] if states else None
        return Path(r)

    def save_checkpoint(self) -> None:
        """Rank 0 writes the training state and refreshes model.safetensors; the others wait."""
        if self.env.is_main:
            save_state(state_path(self.ckpt_dir, self.step), self.state())
            for _, old in list_states(self.ckpt_dir)[: -self.t.keep_ckpts]:
                old.unlink(missing_ok=True)
            self.export()
        barrier()

    def export_module(self) -> nn.Module:
        """The weights to sample from: the first eval EMA, or the raw model when there is none."""
        return self.emas.shadows[0] if self.emas.shadows else self.modules["model"]

    def export(self) -> None:
        model = self.export_module()
        meta = dict(self.meta, step=self.step)
        save_model(self.run_dir / MODEL_FILE, model.net.state_dict(), meta)

    # ------------------------------------------------------------------ loop
    def _micro_batches(self, batch: dict[str, torch.Tensor]):
        n = next(iter(batch.values())).shape[0]
        size = self.t.micro_batch or n
        return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        for o in self.optims.values():
            o.zero_grad(set_to_none=True)
        micro = self._micro_batches(batch)
        n_total = next(iter(batch.values())).shape[0]
        logs: dict[str, float] = {}
        stepped: set[str] = set()
        total_loss = 0.0
        for i, mb in enumerate(micro):
            last = i == len(micro) - 1
            sync = contextlib.ExitStack()
            if not last and self.env.group:
                for net in self.nets.values():
                    if hasattr(net, "no_sync"):
                        sync.enter_context(net.no_sync())
            gen = step_generator(self.t.seed, self.step, self.env.rank, i, self.device)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.t.bf16 and self.device.type == "cuda" \
                else contextlib.nullcontext()
            with sync:
                with autocast:
                    losses, mb_logs = self.method.loss(self.nets, self.transform(mb, gen), self.step, gen)
                frac = next(iter(mb.values())).shape[0] / n_total
                sum(losses.values()).mul(frac).backward()
            stepped |= set(losses)
            total_loss += frac * float(sum(v.detach() for v in losses.values()))
            for k, v in mb_logs.items():
                logs[k] = logs.get(k, 0.0) + frac * v
        if all_reduce_max(0.0 if math.isfinite(total_loss) else 1.0, self.device) > 0:
            raise TrainingStopped(EXIT_NONFINITE, f"non-finite loss at step {self.step}; the last good checkpoint is kept in {self.ckpt_dir}")
        factor = lr_factor(self.step, self.t)
        for name in stepped:
            opt = self.optims[name]
            for g, base in zip(opt.param_groups, self.base_lrs[name]):
                g["lr"] = base * factor
            if self.t.grad_clip:
                logs[f"grad_norm_{name}" if name != "model" else "grad_norm"] = float(
                    torch.nn.utils.clip_grad_norm_(self.modules[name].parameters(), self.t.grad_clip))
            opt.step()
        self.method.after_step(self.step)
        self.emas.update(self.modules["model"], self.step)
        logs["loss"] = total_loss
        logs["lr"] = self.t.lr * factor
        return logs

    def _should_stop(self, started: float) -> bool:
        local = self.stop_reason is not None or (
            self.opts.time_budget is not None and time.time() - started > self.opts.time_budget)
        if local and self.stop_reason is None:
            self.stop_reason = "time budget"
        return all_reduce_max(1.0 if local else 0.0, self.device) > 0

    def _log(self, logs: dict[str, float], rate: float) -> None:
        if not self.env.is_main:
            return
        line = {"step": self.step, **{k: round(v, 6) for k, v in logs.items()}, "it_s": round(rate, 3)}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")

    def _truncate_metrics(self) -> None:
        path = self.run_dir / "metrics.jsonl"
        if self.env.is_main and path.exists():
            keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= self.step]
            path.write_text("".join(ln + "\n" for ln in keep))

    def fit(self, stream_factory: Callable[[int], Any]) -> int:
        """Train from the resumed step to max_steps; returns the final step."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.resume_path()
        if path is not None:
            self.load(load_state(path))
            self._truncate_metrics()
        stream = iter(stream_factory(self.step))
        previous = self._install_signals()
        started = last_log = time.time()
        steps_since = 0
        window: dict[str, float] = {}   # the latest value of every key since the last log line (GAN steps alternate)
        from fsg.train.progress import TrainProgress
        progress = TrainProgress(self.max_steps, self.step, enabled=self.opts.progress and self.env.is_main)
        try:
            with progress:
                while self.step < self.max_steps:
                    logs = self.train_step(next(stream))
                    window.update(logs)
                    self.step += 1
                    steps_since += 1
                    progress.update(self.step, logs.get("loss", float("nan")))
                    if self.step % self.t.log_every == 0 or self.step == self.max_steps:
                        now = time.time()
                        self._log(window, steps_since / max(now - last_log, 1e-9))
                        last_log, steps_since, window = now, 0, {}
                    if self.step % self.t.ckpt_every == 0 and self.step < self.max_steps:
                        self.save_checkpoint()
                    if self.t.sample_every and self.step % self.t.sample_every == 0 and self.step < self.max_steps:
                        self.grid()
                    if self.step < self.max_steps and self._should_stop(started):
                        self.save_checkpoint()
                        self._requeue()
                        raise TrainingStopped(EXIT_PREEMPTED, f"stopped by {self.stop_reason} after step {self.step}; "
                                                              f"checkpoint written, continue with --resume auto")
            self.save_checkpoint()
            self.grid()
        finally:
            for name, handler in previous.items():
                signal.signal(getattr(signal, name), handler)
        return self.step

    def grid(self) -> None:
        if self.env.is_main and self.sample_grid is not None:
            self.sample_grid(self.export_module(), self.run_dir / "samples" / f"grid-{self.step:08d}.png")

    def _requeue(self) -> None:
        job = os.environ.get("SLURM_JOB_ID")
        if self.opts.requeue and job and self.env.is_main:
            subprocess.run(["scontrol", "requeue", job], check=False)
