"""The feature networks of issue 24's protocols, without their weights: the legacy-TF Inception path against the
forward of a TorchScript file with NVIDIA's interface, and fsg's DINOv2 ViT against identities, the released
state-dict layout and the weight-file checks. Also the small networks the protocol tests use (`fake_inception`,
`tiny_dinov2`)."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsg.errors import UserError
from fsg.eval import dinov2 as dinov2_mod
from fsg.eval import inception as inception_mod
from fsg.eval.dinov2 import DINOV2_FILE, DINOV2_URL, DinoViT, prepare_dinov2


class _FakeMixed6(nn.Module):
    """A 17x17-style block whose 1x1 branch is `conv` (post-ReLU), as in the real graph."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(c, 8, 1), nn.ReLU())
        self.tower = nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x)], dim=1)


class FakeInception(nn.Module):
    """The interface of NVIDIA's inception-2015-12-05.pt with tiny layers: `layers` (with `mixed_6.conv`), `output`
    and the forward the file has (TF-1 resize by affine_grid/grid_sample, [-1, 1], layers, optional softmax without
    the output bias, as the file's TorchScript code does; clean-fid inception_torchscript.py calls it). Features: 12-d pool, 7 * 9 * 9 spatial."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 6, 33, stride=33), mixed_6=_FakeMixed6(6),
                                                pool2=nn.AdaptiveAvgPool2d(1)))
        self.output = nn.Linear(12, 10)

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        batch_size, channels, height, width = img.shape
        x = img.to(torch.float32)
        theta = torch.eye(2, 3, device=x.device)
        theta[0, 2] += theta[0, 0] / width - theta[0, 0] / 299
        theta[1, 2] += theta[1, 1] / height - theta[1, 1] / 299
        theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
        grid = F.affine_grid(theta, [batch_size, channels, 299, 299], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = (x - 128) / 128
        features = self.layers(x).reshape(batch_size, -1)
        if return_features:
            return features
        logits = F.linear(features, self.output.weight) if no_output_bias else self.output(features)
        return logits.softmax(dim=1)


def fake_inception(folder) -> tuple:
    """Write a scripted FakeInception as inception-2015-12-05.pt in `folder`; (path, its sha256)."""
    torch.manual_seed(0)
    path = folder / inception_mod.INCEPTION_FILE
    with warnings.catch_warnings():     # torch deprecates TorchScript; NVIDIA's file is one
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(FakeInception()).save(str(path))
    return path, inception_mod.sha256_file(path)


def tiny_dinov2(folder, seed: int = 0) -> tuple:
    """A DINOv2 ViT with the released layout but 64-d tokens (one head) and 2 blocks, saved as the weight file;
    (path, its sha256)."""
    torch.manual_seed(seed)
    net = DinoViT(dim=64, depth=2, mlp=128)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    path = folder / DINOV2_FILE
    torch.save(net.state_dict(), path)
    return path, inception_mod.sha256_file(path)


# ----------------------------------------------------------------------------------------------- Inception, legacy TF

@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_legacy_tf_outputs_equal_the_files_own_forward(tmp_path, monkeypatch):
    # fsg runs the layers one by one (to read mixed_6.conv) after its own TF-1 resize: the pool3 features and the
    # class probabilities must be those of the file's forward(return_features=True) and forward(no_output_bias=...).
    path, sha = fake_inception(tmp_path)
    monkeypatch.setattr(inception_mod, "INCEPTION_SHA256", sha)
    images = torch.randint(0, 256, (5, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    base = torch.jit.load(str(path))
    for bias in (False, True):
        net = inception_mod.load_inception_tf(path, logits_bias=bias)
        out = net.outputs(images)
        torch.testing.assert_close(out["features"], base(images, return_features=True))
        torch.testing.assert_close(out["logits"].softmax(dim=1), base(images, no_output_bias=not bias))
        assert out["spatial"].shape == (5, 7 * 9 * 9) and net.sha256 == sha
    gray = images[:, :1]
    torch.testing.assert_close(net(gray), net(gray.expand(-1, 3, -1, -1)))   # gray is replicated to RGB


# ----------------------------------------------------------------------------------------------- DINOv2

def test_dinov2_vitl14_has_the_released_state_dict_layout():
    # facebookresearch/dinov2 hub dinov2_vitl14(pretrained=False).state_dict(): 343 tensors, 304,368,640 parameters
    with torch.device("meta"):
        state = DinoViT().state_dict()
    assert len(state) == 343 and sum(t.numel() for t in state.values()) == 304_368_640
    assert state["pos_embed"].shape == (1, 1370, 1024) and state["blocks.23.attn.qkv.weight"].shape == (3072, 1024)
    assert state["blocks.0.ls1.gamma"].shape == (1024,) and state["mask_token"].shape == (1, 1024)


def test_dinov2_without_layerscale_returns_the_normalized_cls_token_for_any_image():
    # ls1 = ls2 = 0 makes every block the identity: the output is LayerNorm(cls_token + pos_embed[:, 0]).
    torch.manual_seed(0)
    net = DinoViT(dim=64, depth=2, mlp=128).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
        for block in net.blocks:
            block.ls1.gamma.zero_()
            block.ls2.gamma.zero_()
    x = prepare_dinov2(torch.randint(0, 256, (2, 3, 20, 20), dtype=torch.uint8))
    expected = F.layer_norm(net.cls_token[0, 0] + net.pos_embed[0, 0], (64,), net.norm.weight, net.norm.bias, 1e-6)
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected.expand(2, -1))


def test_attention_with_zero_queries_averages_the_values():
    # q = k = 0: every softmax weight is 1/N, so each token's output is proj(mean over tokens of v).
    attn = dinov2_mod.Attention(64, 1)
    with torch.no_grad():
        attn.qkv.weight.zero_()
        attn.qkv.bias.zero_()
        attn.qkv.weight[128:].copy_(torch.eye(64))
        attn.proj.weight.copy_(torch.eye(64))
        attn.proj.bias.zero_()
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(attn(x), x.mean(dim=1, keepdim=True).expand(-1, 5, -1))


def test_dinov2_input_is_224_bicubic_with_imagenet_normalization():
    white = torch.full((1, 1, 30, 30), 255, dtype=torch.uint8)
    x = prepare_dinov2(white)                      # a constant image stays constant: (1 - mean) / std per channel
    assert x.shape == (1, 3, 224, 224)
    expected = (1 - torch.tensor(dinov2_mod.IMAGENET_MEAN)) / torch.tensor(dinov2_mod.IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 100, 7], expected)


def test_dinov2_weights_missing_unpinned_or_wrong(tmp_path, monkeypatch):
    monkeypatch.delenv("FSG_DINOV2", raising=False)
    monkeypatch.setattr(dinov2_mod, "default_dinov2_locations", lambda: [tmp_path / "nowhere.pth"])
    with pytest.raises(UserError) as err:
        dinov2_mod.load_dinov2()
    message = str(err.value)
    assert "\n" not in message and DINOV2_FILE in message and DINOV2_URL in message and "~/.cache/fsg/" in message
    assert "FSG_DINOV2" in message and "sha256" in message
    path, sha = tiny_dinov2(tmp_path)
    with pytest.raises(UserError, match="not DINOv2 ViT-L/14"):      # no pinned hash: only the real architecture
        dinov2_mod.load_dinov2(path)
    monkeypatch.setattr(dinov2_mod, "DINOV2_SHA256", "0" * 64)
    with pytest.raises(UserError, match=f"sha256 {sha} is not that of {DINOV2_FILE}"):
        dinov2_mod.load_dinov2(tmp_path)
    monkeypatch.setattr(dinov2_mod, "DINOV2_SHA256", sha)
    features = dinov2_mod.load_dinov2(tmp_path)
    out = features(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8))
    assert out.shape == (3, 64) and features.sha256 == sha and torch.isfinite(out).all()
