"""Importers of public checkpoints: openai CM and DDBM `.pt`, EDM / ECT / EDM2 `.pkl`, into fsg's model form.

- `.pt` / `.pth` is read with `torch.load(weights_only=True)`: a state dict of guided-diffusion's ADM
  UNet. The architecture is inferred from the tensor shapes (`infer_adm_config`); the image size, which
  the weights do not fix, and the training method come from the file name (`cd_imagenet64_l2.pt`,
  `e2h_ema_0.9999_420000.pt`) or from overrides.
- `.pkl` (EDM, ECT, EDM2) is a pickle of code: `torch_utils.persistence` stores each network class with the
  source of its module and rebuilds it by exec'ing that source. `_RestrictedUnpickler` allows only the
  rebuilding of tensors, storages and plain numeric numpy arrays, plain containers, and a replacement of the
  persistence hook that records (class name, state) and never runs the stored source; any other global is
  refused before it can be called. The network is then built from the recorded constructor arguments, and its
  weights are the recorded parameters and buffers. An EDM2 snapshot (NVlabs/edm2 `training_loop.py`: a dict of
  `encoder`, `dataset_kwargs`, `loss_fn` and the `ema` Precond, all float16) becomes an `edm2` network (its UNet
  and log-variance head, `fsg.nets.edm2`), EDM's process with the snapshot's sigma_data and its loss's
  P_mean / P_std, and, for the SD-VAE latent models, the encoder's latent scale and bias (`meta["vae"]`).

Either way the result is the network's own state dict (reference names, canonical shapes, float32) and
fsg's metadata, checked by loading strictly into the network the metadata describes. Overrides are
metadata keys (`shape=[3, 64, 64]`, `network={"num_head_channels": 32}`, `precond="consistency"`);
mappings merge into the inferred ones.
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fsg.core.edm import EDMProcess, VPProcess
from fsg.data.vae import vae_meta
from fsg.errors import UserError
from fsg.io.checkpoint import MODEL_FILE, load_torch_file, read_model, save_model
from fsg.io.config import ConfigError, from_dict, to_dict
from fsg.nets.adm import ADMConfig
from fsg.nets.edm import DhariwalUNetConfig, SongUNetConfig
from fsg.nets.edm2 import EDM2UNetConfig
from fsg.models.meta import load_state_strict, network_config_from_meta

META_KEYS = ("format", "process", "precond", "network", "shape", "out_channels", "cond_channels", "num_classes",
             "method", "step", "sample", "train_grid", "source", "fsg_version")

# The bridge process of DDBM's released VP checkpoints (args.sh: beta_d=2, beta_min=0.1, t in [1e-4, 1], cov_xy=0).
DDBM_VP_PROCESS = {"name": "bridge-vp", "beta_d": 2.0, "beta_min": 0.1, "sigma_data": 0.5, "cov_xy": 0.0,
                   "t_min": 1e-4, "t_max": 1.0}
# Image sizes of the released ADM checkpoints, by a token of their file names (openai/consistency_models, DDBM).
_RESOLUTION_HINTS = {"imagenet64": 64, "bedroom256": 256, "cat256": 256, "e2h": 64, "diode": 256}
# openai/consistency_models file prefixes -> (precond, method).
_CM_PREFIXES = {"edm": ("diffusion", "edm"), "cd": ("consistency", "cd"), "ct": ("consistency", "ct")}


# ----------------------------------------------------------------------------------------- public API

def import_checkpoint(path: Path, **overrides: Any) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a public checkpoint (`.pt`/`.pth` ADM state dict or EDM/ECT `.pkl`) -> (state dict, metadata)."""
    path = Path(path)
    _check_override_keys(overrides)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        state, meta = _import_adm(path, overrides)
    elif suffix == ".pkl":
        state, meta = _import_edm_pickle(path)
    else:
        raise UserError(f"{path}: unknown checkpoint type (expected .pt, .pth, .pkl or an fsg .safetensors)")
    return _finalize(path, state, meta, overrides)


def read_checkpoint(path: Path, **overrides: Any) -> tuple[dict[str, torch.Tensor], dict]:
    """Like `import_checkpoint`, and also reads fsg model files (a `.safetensors` file or a folder)."""
    path = Path(path)
    if path.suffix.lower() in (".pt", ".pth", ".pkl"):
        return import_checkpoint(path, **overrides)
    _check_override_keys(overrides)
    state, meta = read_model(path)
    return _finalize(path, state, meta, overrides)


def save_converted(out: Path, state: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write a model file: OUT if it ends in .safetensors, else OUT/model.safetensors; returns its path."""
    out = Path(out)
    dst = out if out.suffix == ".safetensors" else out / MODEL_FILE
    save_model(dst, state, meta)
    return dst


def convert_checkpoint(src: Path, out: Path, **overrides: Any) -> Path:
    """Write SRC (any checkpoint `read_checkpoint` takes) in fsg's form; returns the model file's path."""
    return save_converted(out, *read_checkpoint(src, **overrides))


def build_network(meta: dict, device: str | torch.device = "cpu") -> nn.Module:
    """The (freshly initialised) network that the metadata describes."""
    cfg = network_config_from_meta(meta)
    with torch.device(device):
        return cfg.build(tuple(meta["shape"]), meta["out_channels"], meta.get("cond_channels", 0), meta.get("num_classes", 0))


def parameter_count(meta: dict) -> int:
    """Exact number of parameters (buffers excluded) of the network, counted without allocating it."""
    return sum(p.numel() for p in build_network(meta, "meta").parameters())


def infer_adm_config(state_dict: dict[str, torch.Tensor], resolution: int) -> ADMConfig:
    """The ADMConfig whose network has exactly these tensors, for images of `resolution`.

    The layout of guided-diffusion's UNetModel: input_blocks = [conv] + per level (num_res_blocks
    res blocks [+ attention], then a downsampler except at the last level); output_blocks = per level,
    deepest first, num_res_blocks + 1 res blocks [+ attention] with an upsampler closing each level but
    the first. Head size and time scale are not in the weights: the defaults (64, 1000) are CM's and DDBM's.
    """
    sd = state_dict
    try:
        out_layers: dict[int, set[int]] = collections.defaultdict(set)
        for key in sd:
            if m := re.match(r"output_blocks\.(\d+)\.(\d+)\.", key):
                out_layers[int(m.group(1))].add(int(m.group(2)))
        n_out = len(out_layers)
        if n_out == 0:
            raise UserError("not a state dict of guided-diffusion's ADM UNet (no output_blocks)")

        def is_attention(prefix: str) -> bool:
            return f"{prefix}.qkv.weight" in sd

        ups = [i for i in range(n_out) if any(j > 0 and not is_attention(f"output_blocks.{i}.{j}") for j in out_layers[i])]
        nrb = ups[0] if ups else n_out - 1
        levels = n_out // (nrb + 1)
        if n_out != levels * (nrb + 1) or ups != [(nrb + 1) * k + nrb for k in range(levels - 1)]:
            raise UserError("the output blocks do not follow guided-diffusion's UNet layout")
        mc = sd["time_embed.0.weight"].shape[1]
        level_channels = [sd[f"output_blocks.{(levels - 1 - level) * (nrb + 1)}.0.out_layers.3.weight"].shape[0]
                          for level in range(levels)]
        middle = sd["middle_block.0.out_layers.3.weight"].shape[0]
        scale_shift = sd["middle_block.0.emb_layers.1.weight"].shape[0] == 2 * middle
    except KeyError as e:
        raise UserError(f"not a state dict of guided-diffusion's ADM UNet (no {e.args[0]})") from None
    if any(ch % mc for ch in level_channels):
        raise UserError(f"ADM state dict: level channels {level_channels} are not multiples of model_channels {mc}")
    if resolution % (1 << (levels - 1)):
        raise UserError(f"an ADM UNet with {levels} levels cannot take images of size {resolution}")
    attention_levels = [level for level in range(levels) if is_attention(f"input_blocks.{1 + level * (nrb + 1)}.1")]
    return ADMConfig(model_channels=mc, channel_mult=tuple(ch // mc for ch in level_channels), num_res_blocks=nrb,
                     attention_resolutions=tuple(resolution >> level for level in attention_levels),
                     use_scale_shift_norm=scale_shift,
                     resblock_updown=levels > 1 and f"input_blocks.{nrb + 1}.0.in_layers.2.weight" in sd)


# --------------------------------------------------------------------------------- metadata and checks

def _check_override_keys(overrides: dict) -> None:
    for key in overrides:
        if key not in META_KEYS:
            raise UserError(f"--set {key}: not a model metadata key (valid: {', '.join(META_KEYS)})")


def _merge(meta: dict, overrides: dict) -> dict:
    meta = dict(meta)
    for key, value in overrides.items():
        old = meta.get(key)
        merge = isinstance(old, dict) and isinstance(value, dict)
        if key == "network" and merge and value.get("arch", old.get("arch")) != old.get("arch"):
            merge = False           # a network of another arch replaces the inferred one
        meta[key] = {**old, **value} if merge else value
    return meta


def _finalize(path: Path, state: dict, meta: dict, overrides: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Apply overrides, then load strictly into the described network (built on the meta device, so for
    free): a clear error if the weights do not fit, and the network's own canonical state dict if they do."""
    meta = _merge(meta, overrides)
    meta = {**{k: meta[k] for k in META_KEYS if k in meta}, **meta}     # the documented key order, for --info
    try:
        net = build_network(meta, "meta")
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except (KeyError, TypeError) as e:
        raise UserError(f"{path}: incomplete model metadata ({type(e).__name__}: {e})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True, assign=True)
    except RuntimeError:
        c, h, w = meta["shape"]
        load_state_strict(net, state, f"{path} (as a {meta['network']['arch']} network for {c}x{h}x{w} images)")
        raise
    return {k: v.contiguous() for k, v in net.state_dict().items()}, meta


# ------------------------------------------------------------------------------ ADM .pt (CM, DDBM)

def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    obj = load_torch_file(path)         # a one-line UserError naming a refused global, or a truncated file
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise UserError(f"{path}: expected a state dict (parameter names -> tensors), found {type(obj).__name__}")
    return obj


def _adm_resolution(path: Path, overrides: dict) -> int:
    shape = overrides.get("shape")
    if shape is not None:
        if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and all(isinstance(s, int) for s in shape)):
            raise UserError(f"--set shape: expected [C, H, W], got {shape!r}")
        return shape[-1]
    name = path.name.lower()
    for token, resolution in _RESOLUTION_HINTS.items():
        if token in name:
            return resolution
    raise UserError(f"{path}: the image size of an ADM checkpoint is neither in its weights nor in its name; "
                    f"pass it, e.g. --set shape=[3,64,64]")


def _cm_meta(path: Path, overrides: dict) -> dict:
    """Process, preconditioning, method and sampling defaults of an openai/consistency_models file."""
    prefix = path.name.split("_")[0].lower()
    if prefix in _CM_PREFIXES:
        precond, method = _CM_PREFIXES[prefix]
    elif "precond" in overrides and "method" in overrides:
        precond, method = overrides["precond"], overrides["method"]
    else:
        raise UserError(f"{path}: cannot tell a diffusion model from a consistency model by this name (openai's files "
                        f"start with edm_, cd_ or ct_); pass --set precond=diffusion|consistency --set method=edm|cd|ct")
    meta = {"process": asdict(EDMProcess(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5)), "precond": precond, "method": method}
    if precond == "consistency":
        # The N of the training grid that multistep --ts indices refer to (scripts/launch.sh: CD 40, CT 201 / 151).
        meta["train_grid"] = 40 if method == "cd" else 201 if "imagenet" in path.name.lower() else 151
        meta["sample"] = {"sampler": "consistency", "steps": 1}
    else:
        meta["sample"] = {"sampler": "heun", "steps": 40}
    return meta


def _import_adm(path: Path, overrides: dict) -> tuple[dict[str, torch.Tensor], dict]:
    state = _load_weights(path)
    resolution = _adm_resolution(path, overrides)
    try:
        cfg = infer_adm_config(state, resolution)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    if "input_blocks.0.0.weight" not in state or "out.2.weight" not in state:
        raise UserError(f"{path}: not a state dict of guided-diffusion's ADM UNet (no input_blocks.0.0 or out.2 convolution)")
    in_ch, out_ch = state["input_blocks.0.0.weight"].shape[1], state["out.2.weight"].shape[0]
    if out_ch > in_ch:
        raise UserError(f"{path}: {out_ch} output channels for {in_ch} input channels (learned variances); "
                        f"fsg reads networks that predict the image only")
    num_classes = state["label_emb.weight"].shape[0] if "label_emb.weight" in state else 0
    step = re.search(r"_ema_[\d.]+_(\d+)\.pth?$", path.name)             # DDBM: e2h_ema_0.9999_420000.pt
    meta = {"format": 1, "network": to_dict(cfg), "shape": [out_ch, resolution, resolution], "out_channels": out_ch,
            "cond_channels": in_ch - out_ch, "num_classes": num_classes, "step": int(step.group(1)) if step else 0,
            "source": path.name}
    if in_ch > out_ch:   # DDBM: the condition image is concatenated to x
        meta.update(process=dict(DDBM_VP_PROCESS), precond="diffusion", method="ddbm", sample={"sampler": "dbim", "steps": 20})
    else:
        meta.update(_cm_meta(path, overrides))
    return state, meta


# --------------------------------------------------------------------------------- EDM / ECT .pkl

# Persistent classes of NVlabs/edm and locuslab/ect snapshots (training/networks.py, loss.py, augment.py).
_EDM_CLASSES = {"Linear", "Conv2d", "GroupNorm", "UNetBlock", "PositionalEmbedding", "FourierEmbedding", "SongUNet",
                "DhariwalUNet", "VPPrecond", "VEPrecond", "iDDPMPrecond", "EDMPrecond", "ECMPrecond",
                "VPLoss", "VELoss", "EDMLoss", "ECMLoss", "AugmentPipe"}
# Persistent classes of NVlabs/edm2 snapshots (training/networks_edm2.py, training_loop.py, encoders.py).
_EDM2_CLASSES = {"Precond", "UNet", "Block", "MPConv", "MPFourier", "EDM2Loss", "StabilityVAEEncoder", "StandardRGBEncoder"}
_ARCHS = {"SongUNet": ("songunet", SongUNetConfig), "DhariwalUNet": ("dhariwal", DhariwalUNetConfig)}
EDM2_SAMPLE_STEPS = 32        # NVlabs/edm2 generate_images.py: 32 Heun steps (63 NFE)


class _Record:
    """What a pickled object becomes here: its class name and its state; nothing of it is executed."""

    class_name = "?"

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state

    def __setstate__(self, state):
        self.state = state


_CONTAINERS = {name: type(name, (_Record,), {"class_name": name}) for name in ("ModuleDict", "ModuleList", "Sequential")}


class _EasyDict(dict):
    """Stands for dnnlib.util.EasyDict: a dict."""


def _load_storage(data: bytes):
    """torch.storage._load_from_bytes, but with weights_only=True: a storage saved by torch.save."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _method_reference(obj, name: str) -> str:
    """Stands for builtins.getattr, with which bound methods are pickled (ECT's `ECMLoss.t_to_r`): only a
    name comes back, no attribute is looked up."""
    return f"<method {name}>"


def _numpy_scalar(dtype, data):
    """numpy's scalar reconstructor for plain (non-object) dtypes, e.g. EDM's skip_scale = np.sqrt(0.5)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar of an object dtype")
    return np.frombuffer(data, dtype=dtype)[0]


class _NDArrayClass:
    """Stands for numpy.ndarray where a pickle passes it to numpy's array reconstructor, and for nothing else."""


class _Array:
    """What numpy's `_reconstruct(ndarray, ...)` and the array's `__setstate__` make here: a plain numeric array."""

    def __setstate__(self, state):
        try:
            _, shape, dtype, fortran, raw = state
        except (TypeError, ValueError):
            raise pickle.UnpicklingError("malformed numpy array state") from None
        self.array = _plain_array(raw, dtype, shape, "F" if fortran else "C")


def _plain_array(raw, dtype, shape, order: str) -> np.ndarray:
    """An array of a plain (non-object) dtype from its bytes: numpy's array pickles without numpy's reconstructors."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(raw, (bytes, bytearray)) or order not in "CF":
        raise pickle.UnpicklingError("numpy array of an object dtype or without raw bytes")
    return np.frombuffer(bytes(raw), dtype=dtype).reshape(shape, order=order).copy()


def _array_reconstruct(cls, shape, typecode) -> _Array:
    """numpy.core.multiarray._reconstruct (pickle protocols <= 4): an empty ndarray that __setstate__ fills."""
    if cls is not _NDArrayClass:
        raise pickle.UnpicklingError("numpy reconstructor of a class other than ndarray")
    return _Array()


def _array_from_buffer(buffer, dtype, shape, order) -> np.ndarray:
    """numpy.core.numeric._frombuffer (pickle protocol 5)."""
    return _plain_array(buffer, dtype, shape, order)


def _array_value(value):
    """A numpy array as unpickled here (an `_Array` or, for protocol 5, an ndarray)."""
    return value.array if isinstance(value, _Array) else value


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "getattr"): _method_reference,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): _NDArrayClass,
    ("numpy.core.multiarray", "_reconstruct"): _array_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _array_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _array_from_buffer,
    ("numpy._core.numeric", "_frombuffer"): _array_from_buffer,
    **{("torch.nn.modules.container", name): cls for name, cls in _CONTAINERS.items()},
}


def _refusal(what: str, path: Path) -> str:
    return (f"refusing to unpickle {what} from {path}: not an EDM/ECT network "
            f"(fsg reads the SongUNet and DhariwalUNet snapshots of NVlabs/edm and locuslab/ect, "
            f"and the Precond snapshots of NVlabs/edm2)")


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) == ("torch_utils.persistence", "_reconstruct_persistent_obj"):
            return self._persistent_record
        if (module, name) not in _SAFE_GLOBALS:
            raise UserError(_refusal(f"{module}.{name}", self.path))
        return _SAFE_GLOBALS[module, name]

    def _persistent_record(self, meta: dict) -> _Record:
        """Stands for torch_utils.persistence._reconstruct_persistent_obj: keeps the state, never execs the source."""
        name = meta.get("class_name") if isinstance(meta, dict) else None
        if name not in _EDM_CLASSES | _EDM2_CLASSES:
            raise UserError(_refusal(f"the persistent class {name!r}", self.path))
        return _Record(name, dict(meta.get("state") or {}))


def _restricted_load(path: Path):
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
            return _RestrictedUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ... for foreign or truncated files
        raise UserError(f"{path}: unreadable pickle ({type(e).__name__}: {e})") from None


def _record_state_dict(record: _Record, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a recorded torch module: its parameters and persistent buffers, recursively."""
    state = record.state
    out = {prefix + k: v.detach() for k, v in state.get("_parameters", {}).items() if v is not None}
    transient = state.get("_non_persistent_buffers_set", set())
    out.update({prefix + k: v for k, v in state.get("_buffers", {}).items() if v is not None and k not in transient})
    for name, child in state.get("_modules", {}).items():
        if isinstance(child, _Record):
            out.update(_record_state_dict(child, f"{prefix}{name}."))
    return out


def _edm_process_meta(path: Path, precond: _Record, resolution: int) -> dict:
    """Process, preconditioning, method and sampling defaults of an EDM/ECT preconditioner."""
    s = precond.state
    if precond.class_name == "EDMPrecond":
        steps = 18 if resolution <= 32 else 40       # EDM's generate.py recipes: CIFAR-10 18, 64x64 datasets 40
        return {"process": asdict(EDMProcess(sigma_data=float(s.get("sigma_data", 0.5)))), "precond": "diffusion",
                "method": "edm", "sample": {"sampler": "heun", "steps": steps}}
    if precond.class_name == "ECMPrecond":
        process = EDMProcess(sigma_min=float(s.get("sigma_min", 0.002)), sigma_data=float(s.get("sigma_data", 0.5)))
        return {"process": asdict(process), "precond": "ect", "method": "ect", "sample": {"sampler": "consistency", "steps": 1}}
    if precond.class_name == "VPPrecond":
        vp = VPProcess()
        process = VPProcess(beta_d=float(s.get("beta_d", vp.beta_d)), beta_min=float(s.get("beta_min", vp.beta_min)),
                            epsilon_t=float(s.get("epsilon_t", vp.epsilon_t)), M=int(s.get("M", vp.M)))
        return {"process": asdict(process), "precond": "diffusion", "method": "edm", "sample": {"sampler": "heun", "steps": 18}}
    raise UserError(f"{path}: {precond.class_name} checkpoints are not supported (fsg reads EDMPrecond, VPPrecond and ECMPrecond)")


def _import_edm_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    data = _restricted_load(path)
    precond = data.get("ema") if isinstance(data, dict) else None
    if isinstance(precond, _Record) and precond.class_name == "Precond":
        return _import_edm2_pickle(path, data, precond)
    model = precond.state.get("_modules", {}).get("model") if isinstance(precond, _Record) else None
    if not isinstance(model, _Record):
        raise UserError(f"{path}: no 'ema' network in this pickle (EDM, ECT and EDM2 snapshots hold one)")
    if model.class_name not in _ARCHS:
        raise UserError(f"{path}: a {model.class_name} network; fsg reads SongUNet and DhariwalUNet")
    arch, config_cls = _ARCHS[model.class_name]
    kwargs = dict(model.state.get("_init_kwargs") or {})
    try:
        resolution, in_ch, out_ch = kwargs.pop("img_resolution"), kwargs.pop("in_channels"), kwargs.pop("out_channels")
    except KeyError as e:
        raise UserError(f"{path}: the {model.class_name} record lacks its constructor argument {e.args[0]}") from None
    num_classes = kwargs.pop("label_dim", 0)
    kwargs.pop("label_dropout", None)      # training-time classifier-free guidance; fsg's methods apply it
    try:
        cfg = from_dict(config_cls, {"arch": arch, **kwargs}, "network")
    except ConfigError as e:
        raise UserError(f"{path}: {model.class_name} with an option fsg does not implement: {e}") from None
    meta = {"format": 1, "network": to_dict(cfg), "shape": [in_ch, resolution, resolution], "out_channels": out_ch,
            "cond_channels": 0, "num_classes": num_classes, "step": 0, "source": path.name,
            **_edm_process_meta(path, precond, resolution)}
    try:
        return _record_state_dict(model), meta
    except (AttributeError, TypeError) as e:
        raise UserError(f"{path}: malformed {model.class_name} record ({e})") from None


def _import_edm2_pickle(path: Path, data: dict, precond: _Record) -> tuple[dict[str, torch.Tensor], dict]:
    """An NVlabs/edm2 snapshot: the Precond's UNet (EDM2's defaults for the constructor arguments a snapshot does not
    record), its log-variance head, EDM's process with the loss's P_mean / P_std, and the latent encoder."""
    modules = precond.state.get("_modules", {})
    unet, head = modules.get("unet"), modules.get("logvar_linear")
    if not (isinstance(unet, _Record) and unet.class_name == "UNet" and isinstance(head, _Record)):
        raise UserError(f"{path}: an EDM2 Precond without its UNet and log-variance head")
    kwargs = dict(unet.state.get("_init_kwargs") or {})
    try:
        resolution, channels, num_classes = kwargs.pop("img_resolution"), kwargs.pop("img_channels"), kwargs.pop("label_dim")
        logvar_channels = head.state["_parameters"]["weight"].shape[1]
    except (KeyError, AttributeError, TypeError) as e:
        raise UserError(f"{path}: malformed EDM2 UNet record (no {e})") from None
    if list(kwargs.pop("resample_filter", [1, 1])) != [1, 1]:
        raise UserError(f"{path}: an EDM2 UNet with resample_filter other than [1, 1]; fsg implements [1, 1] only")
    try:
        cfg = from_dict(EDM2UNetConfig, {"arch": "edm2", **kwargs, "logvar_channels": logvar_channels}, "network")
    except ConfigError as e:
        raise UserError(f"{path}: an EDM2 UNet with an option fsg does not implement: {e}") from None
    loss = data.get("loss_fn")
    moments = {k: float(loss.state[k]) for k in ("P_mean", "P_std") if k in loss.state} if isinstance(loss, _Record) else {}
    process = EDMProcess(sigma_data=float(precond.state.get("sigma_data", 0.5)), **moments)
    meta = {"format": 1, "network": to_dict(cfg), "shape": [channels, resolution, resolution], "out_channels": channels,
            "cond_channels": 0, "num_classes": num_classes, "step": 0, "source": path.name, "process": asdict(process),
            "precond": "diffusion", "method": "edm2", "sample": {"sampler": "heun", "steps": EDM2_SAMPLE_STEPS}}
    encoder = data.get("encoder")
    if isinstance(encoder, _Record) and encoder.class_name == "StabilityVAEEncoder":
        meta["vae"] = _edm2_vae(path, encoder)
    try:
        return _record_state_dict(precond), meta
    except (AttributeError, TypeError) as e:
        raise UserError(f"{path}: malformed Precond record ({e})") from None


def _edm2_vae(path: Path, encoder: _Record) -> dict:
    """The SD-VAE latent encoding of an EDM2 latent model (encoders.py `StabilityVAEEncoder`), as `fsg.data.vae`
    records it: the VAE's name and the per-channel scale and bias from its raw latents to the network's."""
    try:
        scale, bias = (np.asarray(_array_value(encoder.state[k]), dtype=np.float64) for k in ("scale", "bias"))
    except KeyError as e:
        raise UserError(f"{path}: the StabilityVAEEncoder record has no {e}") from None
    return vae_meta(str(encoder.state.get("vae_name", "")), scale.ravel().tolist(), bias.ravel().tolist())
