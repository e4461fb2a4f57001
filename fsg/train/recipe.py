"""The recipe schema: one YAML file = one frozen `Recipe` (data, process, network, method, train, sample).

`process`, `network` and `method` are tagged unions: `process.name`, `network.arch` and `method.name`
pick the dataclass that validates the rest of the section. A number's allowed range is written in its annotation
(`Annotated[float, "(0, inf)"]`, checked by fsg.io.config, which refuses NaN and inf everywhere else).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Union

from fsg.core import PROCESSES, ProcessConfig
from fsg.data.config import DataConfig
from fsg.errors import UserError
from fsg.io.config import apply_overrides, dump_yaml, from_dict, parse_yaml
from fsg.methods import METHODS
from fsg.nets import NETWORKS, NetworkConfig
from fsg.resources import find_recipe, recipe_hint
from fsg.train.phema import PhemaConfig

MethodConfig = Union[tuple(method.config for method in METHODS.values())]


@dataclass(frozen=True)
class TrainConfig:
    batch_size: Annotated[int, "[1, inf)"] = 128            # global batch (all ranks, all micro-batches)
    micro_batch: Annotated[int, "[1, inf)"] | None = None   # per-rank micro-batch for gradient accumulation (None: no accumulation)
    max_steps: Annotated[int, "[1, inf)"] = 1000            # optimizer steps
    optimizer: Literal["adam", "adamw", "radam"] = "adam"
    lr: Annotated[float, "(0, inf)"] = 1e-3                 # peak learning rate
    betas: tuple[Annotated[float, "[0, 1)"], Annotated[float, "[0, 1)"]] = (0.9, 0.999)
    eps: Annotated[float, "(0, inf)"] = 1e-8
    weight_decay: Annotated[float, "[0, inf)"] = 0.0
    warmup_steps: Annotated[int, "[0, inf)"] = 0            # linear warm-up from 0 to lr
    lr_decay: Literal["none", "cosine", "poly", "inv_sqrt"] = "none"
    lr_decay_steps: Annotated[int, "[0, inf)"] = 0          # poly/cosine: horizon (0: max_steps); inv_sqrt: reference step t_ref
    lr_poly_power: Annotated[float, "(0, inf)"] = 0.96      # poly decay exponent (DDM)
    min_lr: Annotated[float, "[0, inf)"] = 0.0              # floor of the decayed learning rate
    grad_clip: Annotated[float, "(0, inf)"] | None = None   # clip the global gradient norm to this value
    ema: tuple[Annotated[float, "[0, 1)"], ...] = (0.999,)  # eval EMA rates; the first is exported as model.safetensors
    ema_halflife_steps: Annotated[float, "(0, inf)"] | None = None  # alternative to rates: one EMA with this half-life in steps
    ema_every: Annotated[int, "[1, inf)"] = 1               # update the EMAs every N steps (DDM: 8)
    ema_start: Annotated[int, "[0, inf)"] = 0               # copy the weights into the EMAs until this step
    log_every: Annotated[int, "[1, inf)"] = 50              # metrics.jsonl / progress every N steps
    ckpt_every: Annotated[int, "[1, inf)"] = 500            # full training state every N steps (and at the end)
    sample_every: Annotated[int, "[0, inf)"] = 0            # sample grid PNG every N steps (0: about 10 per run, at checkpoints) and at the end
    keep_ckpts: Annotated[int, "[1, inf) or -1"] = 2        # keep this many training states (-1: all)
    seed: Annotated[int, "[0, 1e18]"] = 0
    bf16: bool = False                                      # CUDA: bf16 autocast
    channels_last: bool = False                             # CUDA: channels_last memory format
    compile: bool = False                                   # CUDA: torch.compile the network
    dropout: Annotated[float, "[0, 1)"] | None = None       # a network started from --init/--teacher: its dropout (None: the start model's; ECT CIFAR-10: 0.2)
    label_dropout: Annotated[float, "[0, 1]"] = 0.0         # drop class labels with this probability (classifier-free guidance)
    augment: Annotated[float, "[0, 1]"] = 0.0               # EDM's geometric augmentation probability p (EDM/DDM CIFAR-10: 0.12); needs network.augment_dim: 9
    tensorboard: bool = False                               # also log scalars and grids to RUN/tensorboard (needs the tensorboard package)
    phema: PhemaConfig | None = None                        # post-hoc EMA: {stds: [0.05, 0.10], every: N} snapshots in RUN/phema (`fsg phema`)


@dataclass(frozen=True)
class SampleConfig:
    sampler: str | None = None                              # default sampler of the exported model (None: by method)
    steps: Annotated[int, "[1, inf)"] | None = None         # default steps of the exported model (None: by method)
    grid: Annotated[int, "[1, inf)"] = 64                   # samples in the training-time grid PNG
    s_churn: Annotated[float, "[0, inf)"] = 0.0             # EDM Algorithm 2 stochasticity
    s_tmin: Annotated[float, "[0, inf)"] = 0.0
    s_tmax: Annotated[float, "[0, inf]"] = float("inf")
    s_noise: Annotated[float, "[0, inf)"] = 1.0


@dataclass(frozen=True)
class Recipe:
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NETWORKS["mlp"])
    method: MethodConfig = field(default_factory=METHODS["diffusion"].config)
    process: ProcessConfig = field(default_factory=PROCESSES["edm"])
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    description: str = ""                    # one line: what the recipe reproduces
    reference: str = ""                      # paper number this recipe targets (e.g. "FID 3.55, 1 step")


MAX_RECIPE_BYTES = 1 << 20                 # a recipe is a page of YAML; a larger file is not one


def read_recipe_text(p: Path) -> str:
    """The text of a recipe file; a UserError for a large file or one that is not UTF-8 text."""
    try:
        size = p.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise UserError(f"{p}: {size:,} bytes is not a recipe (YAML text of at most {MAX_RECIPE_BYTES:,} bytes)")
        return p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{p}: not a YAML recipe (not UTF-8 text: byte {e.start} is 0x{e.object[e.start]:02x})") from None
    except OSError as e:
        raise UserError(f"{p}: cannot read the recipe ({e.strerror})") from None


def load_recipe(path: str | Path | None, overrides: typing.Sequence[str] = (), defaults: dict | None = None) -> Recipe:
    """Read a recipe file (or just `defaults`), apply `--set` overrides, validate into a Recipe."""
    data: dict = dict(defaults or {})
    if path is not None:
        p = find_recipe(path)              # a file as given, else a shipped recipe of that name (tiny/edm_toy)
        if not p.is_file():
            raise UserError(f"recipe not found: {p}{recipe_hint(path)}")
        loaded = parse_yaml(read_recipe_text(p), where=str(p))
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: a recipe is a mapping of sections, got {type(loaded).__name__}")
        data.update(loaded)
    apply_overrides(data, list(overrides or ()))
    return from_dict(Recipe, data)


def recipe_yaml(recipe: Recipe) -> str:
    return dump_yaml(recipe)
