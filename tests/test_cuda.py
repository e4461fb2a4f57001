"""The CUDA path: bf16 autocast with channels_last training, torchrun's DDP with nccl, and sampling on the GPU.
Skipped without a CUDA device (CI has none); run on a GPU machine with `python3 -m pytest -q -m cuda`."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.test_engine import env

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

RECIPE = """
data: {source: digits, resolution: 16}
network: {arch: unet, model_channels: 16, channel_mult: [1, 2], num_res_blocks: 1, attn_resolutions: []}
method: {name: diffusion}
process: {name: edm}
train: {batch_size: 64, max_steps: 30, lr: 1e-3, ema: [0.9], log_every: 10, ckpt_every: 1000, seed: 3,
        bf16: true, channels_last: true}
sample: {grid: 16, sampler: heun, steps: 4}
"""


def run(*args):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda")
    (d / "r.yaml").write_text(RECIPE)
    r = run("-m", "fsg", "train-diffusion", "--recipe", d / "r.yaml", "--run-dir", d / "run", "--no-progress",
            "--device", "cuda")
    assert r.returncode == 0, r.stderr
    return d


def test_bf16_channels_last_training_is_finite(trained):
    lines = [json.loads(line) for line in (trained / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [10, 20, 30]
    assert all(np.isfinite(line["loss"]) for line in lines)
    weights = load_file(trained / "run" / "model.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())   # masters stay fp32


def test_torchrun_one_gpu_uses_nccl_ddp(trained):
    r = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "fsg", "train-diffusion",
            "--recipe", trained / "r.yaml", "--run-dir", trained / "ddp", "--no-progress", "--device", "cuda",
            "--set", "train.max_steps=10")
    assert r.returncode == 0, r.stderr
    assert "1 process (nccl, DDP)" in r.stderr
    assert (trained / "ddp" / "model.safetensors").is_file()


def test_sampling_on_the_gpu_counts_nfe_and_is_seeded(trained):
    outs = []
    for name in ("a", "b"):
        r = run("-m", "fsg", "sample", "--model", trained / "run", "-n", "8", "--seed", "5", "--device", "cuda",
                "--out", trained / f"{name}.npz")
        assert r.returncode == 0, r.stderr
        assert "NFE 7" in r.stdout + r.stderr      # Heun, 4 steps: 2 * 4 - 1
        outs.append(np.load(trained / f"{name}.npz")["arr_0"])
    assert outs[0].shape == (8, 16, 16, 1)
    assert np.array_equal(outs[0], outs[1])


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny"
BF16 = ("--device", "cuda", "--no-progress", "--set", "train.bf16=true")
# every method's tiny recipe for 3 bf16 steps on the GPU: (name, command, recipe, start: (flag, run or asset))
CHAIN = [
    ("cd", "distill", "cd_digits", ("--teacher", "asset:edm_digits")),
    ("ct", "train-consistency", "ct_digits", None),
    ("ect", "tune-sct", "ect_digits", ("--teacher", "asset:edm_digits")),
    ("sct", "tune-sct", "sct_digits", ("--teacher", "asset:edm_digits")),
    ("ddm", "train-diffusion", "ddm_digits", None),
    ("ddbm", "train-diffusion", "ddbm_edges_digits", None),
    ("cbd", "distill", "cbd_edges_digits", ("--teacher", "ddbm")),
    ("cbt", "train-consistency", "cbt_edges_digits", ("--init", "ddbm")),
    ("pagoda_teacher", "train-diffusion", "pagoda_mnist_teacher", None),
    ("pagoda8", "grow-decoder", "pagoda_mnist_distill", ("--teacher", "pagoda_teacher")),
    ("pagoda16", "grow-decoder", "pagoda_mnist_grow16", ("--teacher", "pagoda_teacher", "--init", "pagoda8")),
    ("scm_ct", "train-consistency", "scm_ct_digits", None),                 # JVP through the UNet in bf16
    ("scm_cd", "distill", "scm_cd_digits", ("--teacher", "asset:edm_digits")),
    ("meanflow", "train-consistency", "meanflow_digits", None),
]


@pytest.fixture(scope="module")
def chain_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("chain")


@pytest.mark.parametrize("name,command,recipe,start", CHAIN, ids=[c[0] for c in CHAIN])
def test_every_method_trains_and_samples_on_the_gpu(chain_dir, name, command, recipe, start):
    """Three bf16 steps of each tiny recipe on the GPU (the final sample grid included), then `fsg sample` of
    the exported model on the GPU. Runs in CHAIN order: later stages start from earlier runs."""
    args = []
    start = start or ()
    for flag, source in zip(start[::2], start[1::2]):
        path = ROOT / "assets" / source[6:] if source.startswith("asset:") else chain_dir / source
        if not path.exists():
            pytest.skip(f"{source} did not train")
        args += [flag, path]
    if command == "tune-sct":
        args += ["--mode", recipe.split("_")[0]]
    r = run("-m", "fsg", command, "--recipe", TINY / f"{recipe}.yaml", "--run-dir", chain_dir / name,
            "--max-steps", "3", *args, *BF16)
    assert r.returncode == 0, r.stderr[-3000:]
    if name == "pagoda_teacher":
        return
    out = chain_dir / f"{name}.npz"
    r = run("-m", "fsg", "sample", "--model", chain_dir / name, "-n", "4", "--device", "cuda", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.isfinite(np.load(out)["arr_0"]).all()
