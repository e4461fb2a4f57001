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
from fsg.errors import UserError
from fsg.io.checkpoint import MODEL_FILE, list_states, load_state, save_model, save_state, state_path
from fsg.models.meta import load_state_strict, relocate_teacher
from fsg.nets.edm2 import normalize_weights_
from fsg.sampling.noise import sample_seed
from fsg.train.dist import DistEnv, all_reduce_max, barrier
from fsg.train.ema import EMAs, halflife_rate
from fsg.train.phema import SNAPSHOT_DIR, PostHocEMA
from fsg.train.runfolder import METRICS_FILE, newest_state, say_stderr, truncate_metrics
from fsg.train.runlog import RunLog, default_sample_every, write_run_record

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
    max_steps: int | None = None          # stop after this step; train.max_steps stays the schedules' horizon
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


def unique_sum(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the distinct loss tensors: a loss that updates several modules (sCM's, which trains the model and
    its adaptive weighting) is listed under each module's name and counted once."""
    return sum({id(v): v for v in losses.values()}.values())


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
        self.sample_every = self.t.sample_every or default_sample_every(self.t.max_steps, self.t.ckpt_every)
        self.stop_reason: str | None = None
        self.step = 0
        self.wall_before = 0.0                # training seconds behind the resumed step
        self.runlog: RunLog | None = None     # metrics.jsonl (and TensorBoard) while fit() runs

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
        # --- post-hoc EMA (train.phema, fsg.train.phema): power-function EMAs, snapshots in RUN/phema (rank 0 writes)
        self.phema = None
        if self.t.phema is not None:
            folder = self.run_dir / SNAPSHOT_DIR if self.env.is_main else None
            self.phema = PostHocEMA(self.modules["model"], self.t.phema, folder, self.meta).to(self.device)
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
                "method": self.method.state_dict(), "rng": rng, "wall_time": self.wall_time(),
                **({"phema": self.phema.state_dict()} if self.phema is not None else {})}

    def load(self, state: dict[str, Any], where: str = "the training state") -> None:
        """Load a training state; a state of another architecture or method is a UserError naming `where`."""
        try:
            self._load(state, where)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            detail = f"no {e}" if isinstance(e, KeyError) else str(e).strip().splitlines()[0][:200]
            raise UserError(f"{where} does not fit this run's recipe (network, method or optimizers changed, e.g. "
                            f"with --set?): {detail}") from None

    def _load(self, state: dict[str, Any], where: str) -> None:
        for k, m in self.modules.items():
            load_state_strict(m, state["nets"][k], f"--resume {where}: nets.{k}")
        for k, o in self.optims.items():
            o.load_state_dict(state["optims"][k])
        self.emas.load_state_dict(state["emas"])
        if self.phema is not None:
            if "phema" not in state:
                raise UserError("this run's checkpoint holds no post-hoc EMA: train.phema was not set when it was written")
            self.phema.load_state_dict(state["phema"])
        self.method.load_state_dict(state["method"])
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = int(state["step"])
        self.wall_before = float(state.get("wall_time", 0.0))     # an older state holds none: the clock starts at 0

    def restore(self) -> Path | None:
        """Load the state `--resume` names (auto: the newest that loads, past truncated or unreadable ones, each
        named) and cut metrics.jsonl to its step; returns its path (None: a fresh start)."""
        r = self.opts.resume
        if r is None:
            return None
        say = say_stderr if self.env.is_main else (lambda message: None)
        found = newest_state(self.ckpt_dir, say) if r == "auto" else (Path(r), load_state(r))
        path = None
        if found is not None:
            path, state = found
            self.load(state, str(path))
            if r == "auto":
                say(f"--resume auto: continuing from {path} (step {self.step})")
        if self.env.is_main:
            truncate_metrics(self.run_dir / METRICS_FILE, self.step)
        return path

    def save_checkpoint(self) -> None:
        """Rank 0 writes the training state and refreshes model.safetensors; the others wait."""
        if self.env.is_main:
            save_state(state_path(self.ckpt_dir, self.step), self.state())
            if self.t.keep_ckpts > 0:                       # -1 keeps every state
                for _, old in list_states(self.ckpt_dir)[: -self.t.keep_ckpts]:
                    old.unlink(missing_ok=True)
            self.export()
        barrier()

    def export_module(self) -> nn.Module:
        """The weights to sample from: the first eval EMA, else the first post-hoc EMA profile, else the raw model."""
        if self.emas.shadows:
            return self.emas.shadows[0]
        return self.phema.shadows[0] if self.phema is not None else self.modules["model"]

    def export(self) -> None:
        model = self.export_module()
        meta = relocate_teacher(dict(self.meta, step=self.step), self.run_dir)    # the teacher also by relative path
        save_model(self.run_dir / MODEL_FILE, model.net.state_dict(), meta)

    # ------------------------------------------------------------------ loop
    def _micro_batches(self, batch: dict[str, torch.Tensor]):
        n = next(iter(batch.values())).shape[0]
        size = self.t.micro_batch or n
        return [{k: v[i:i + size] for k, v in batch.items()} for i in range(0, n, size)]

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        # --- EDM2's forced weight normalisation (fsg.nets.edm2): once per optimizer step, before its first forward,
        # never inside one (a no-op for networks without magnitude-preserving layers)
        for m in self.modules.values():
            normalize_weights_(m)
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
                objective = unique_sum(losses)
                objective.mul(frac).backward()
            stepped |= set(losses)
            total_loss += frac * float(objective.detach())
            for k, v in mb_logs.items():
                logs[k] = logs.get(k, 0.0) + frac * v
        if all_reduce_max(0.0 if math.isfinite(total_loss) else 1.0, self.device) > 0:
            states = list_states(self.ckpt_dir)
            kept = f"the last good checkpoint is {states[-1][1]}" if states else \
                f"no checkpoint was written yet (train.ckpt_every is {self.t.ckpt_every})"
            raise TrainingStopped(EXIT_NONFINITE, f"non-finite loss at step {self.step}; {kept}")
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
        if self.phema is not None:
            self.phema.update(self.modules["model"], self.step)
        logs["loss"] = total_loss
        logs["lr"] = self.t.lr * factor
        return logs

    def _should_stop(self, started: float) -> bool:
        local = self.stop_reason is not None or (
            self.opts.time_budget is not None and time.time() - started > self.opts.time_budget)
        if local and self.stop_reason is None:
            self.stop_reason = "time budget"
        return all_reduce_max(1.0 if local else 0.0, self.device) > 0

    def wall_time(self) -> float:
        """Seconds of training behind the current step (fsg.train.runlog): the earlier attempts' and this one's."""
        return self.runlog.wall_time() if self.runlog is not None else self.wall_before

    def fit(self, stream_factory: Callable[[int], Any]) -> int:
        """Train from the current step (`restore()` resumes) to max_steps; returns the final step. Every attempt ends
        with a metrics line for its last step and, on rank 0, RUN/run.json saying how it ended."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        stream = iter(stream_factory(self.step))
        self.runlog = RunLog(self.run_dir, self.t.batch_size, enabled=self.env.is_main, tensorboard=self.t.tensorboard,
                             wall_time=self.wall_before)
        previous = self._install_signals()
        started, first_step = time.time(), self.step
        from fsg.train.progress import TrainProgress
        progress = TrainProgress(self.max_steps, self.step, enabled=self.opts.progress and self.env.is_main)
        try:
            with progress:
                while self.step < self.max_steps:
                    logs = self.train_step(next(stream))
                    self.step += 1
                    self.runlog.add(self.step, logs)
                    progress.update(self.step, logs.get("loss", float("nan")))
                    if self.step % self.t.log_every == 0:
                        self.runlog.write()
                    if self.step % self.t.ckpt_every == 0 and self.step < self.max_steps:
                        self.save_checkpoint()
                    if self.step % self.sample_every == 0 and self.step < self.max_steps:
                        self.grid()
                    if self.step < self.max_steps and self._should_stop(started):
                        self.runlog.write()
                        self.save_checkpoint()
                        self._record(self.stop_reason, first_step, started)
                        self._requeue()
                        raise TrainingStopped(EXIT_PREEMPTED, f"stopped by {self.stop_reason} after step {self.step}; "
                                                              f"checkpoint written, continue with --resume auto")
            self.runlog.write()
            self.save_checkpoint()
            self._record(f"--max-steps {self.max_steps}" if self.step < self.t.max_steps else None, first_step, started)
            self.grid()
        except TrainingStopped as e:
            if e.code == EXIT_NONFINITE:
                self.runlog.write()
                self._record("non-finite loss", first_step, started)
            raise
        finally:
            for name, handler in previous.items():
                signal.signal(getattr(signal, name), handler)
            self.runlog.close()
        return self.step

    def _record(self, stopped_by: str | None, first_step: int, started: float) -> None:
        if self.env.is_main:
            write_run_record(self.run_dir, step=self.step, horizon=self.t.max_steps, requested=self.opts.max_steps,
                             stopped_by=stopped_by, started_at=first_step, started=started,
                             images_seen=self.step * self.t.batch_size, wall_time=self.wall_time())

    def grid(self) -> None:
        if self.env.is_main and self.sample_grid is not None:
            path = self.run_dir / "samples" / f"grid-{self.step:08d}.png"
            self.sample_grid(self.export_module(), path)
            if self.runlog is not None:
                self.runlog.image(self.step, path)

    def _requeue(self) -> None:
        """Rank 0 asks Slurm to requeue the job (after the checkpoint); the other ranks wait for it, since a rank that
        exits first makes `srun --kill-on-bad-exit` or torchrun kill rank 0 before it has asked."""
        job = os.environ.get("SLURM_JOB_ID")
        if self.opts.requeue and job and self.env.is_main:
            subprocess.run(["scontrol", "requeue", job], check=False)
        barrier()
