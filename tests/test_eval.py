"""fsg.eval: distances against closed forms, KID's unbiasedness, clean-fid parity, the digits feature space
and `fsg eval-fid` end to end on small data."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fsg.errors import UserError
from fsg.eval import inception as inception_mod
from fsg.eval.fid import accumulate, fd, stats_of
from fsg.app.evaluate import measure_reference
from fsg.eval.images import to_uint8
from fsg.eval.inception import INCEPTION_SHA256, INCEPTION_URL, CleanFeatures
from fsg.eval.paired import paired_metrics
from fsg.nets.lpips import LIN_FILE, LPIPS_CHANNELS, VGG_FILE, _vgg16_trunk, load_lpips
from fsg.eval.stats import Stats
from fsg.app.image_sources import Reference, array_source, folder_source, open_source
from fsg.eval.stats import FeatureStats, fid_from_stats, frechet_distance, kid, mmd_rbf, sliced_wasserstein


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_orthogonal(d: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=torch.float64))
    return q


# ----------------------------------------------------------------------------------------------- Fréchet distance

def test_frechet_distance_of_commuting_covariances_has_the_closed_form():
    # With sigma_i = Q diag(s_i) Q^T, (sigma1 sigma2)^{1/2} = Q diag(sqrt(s1 s2)) Q^T, so
    # d^2 = ||mu1 - mu2||^2 + sum_k (sqrt(s1_k) - sqrt(s2_k))^2.
    d = 6
    q = random_orthogonal(d, 0)
    s1 = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1, 4.0], dtype=torch.float64)
    s2 = torch.tensor([1.0, 1.0, 0.5, 5.0, 0.4, 1.0], dtype=torch.float64)
    mu1 = torch.arange(d, dtype=torch.float64)
    mu2 = mu1 + torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    expected = (1 + 4 + 0.25) + float(((s1.sqrt() - s2.sqrt()) ** 2).sum())
    got = frechet_distance(mu1, q @ torch.diag(s1) @ q.T, mu2, q @ torch.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)
    # numpy input, diagonal case
    assert frechet_distance(mu1.numpy(), np.diag(s1.numpy()), mu2.numpy(), np.diag(s2.numpy())) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_stays_finite_when_covariances_are_singular():
    # 5 samples in 16 dimensions: both covariances have rank <= 4; the distance of a set to itself is 0
    # up to the square roots of rounding-level eigenvalues (~sqrt(1e-16 * trace) each).
    x = torch.randn(5, 16, generator=gen(1), dtype=torch.float64)
    acc = FeatureStats(16)
    acc.update(x)
    assert fid_from_stats(acc, acc) == pytest.approx(0.0, abs=1e-5)
    y = FeatureStats(16)
    y.update(torch.randn(5, 16, generator=gen(2), dtype=torch.float64))
    assert math.isfinite(fid_from_stats(acc, y)) and fid_from_stats(acc, y) > 0


# ----------------------------------------------------------------------------------------------- FeatureStats

def test_feature_stats_streams_to_the_sample_mean_and_unbiased_covariance():
    x = torch.randn(103, 5, generator=gen(3), dtype=torch.float64) * 3 + 7
    acc = FeatureStats(5)
    for chunk in x.split(17):
        acc.update(chunk)
    assert acc.n == 103
    torch.testing.assert_close(acc.mu(), torch.from_numpy(x.numpy().mean(axis=0)))
    torch.testing.assert_close(acc.sigma(), torch.from_numpy(np.cov(x.numpy(), rowvar=False)))
    halves = FeatureStats(5)
    halves.update(x[:50])
    other = FeatureStats(5)
    other.update(x[50:])
    halves.merge(other)
    torch.testing.assert_close(halves.sigma(), acc.sigma())


def test_fid_of_a_set_with_itself_is_zero_and_a_mean_shift_adds_its_squared_norm():
    # Shifting every feature by c leaves the covariance unchanged, so FD = ||c||^2 exactly.
    x = torch.randn(4000, 8, generator=gen(4), dtype=torch.float64) @ torch.randn(8, 8, generator=gen(5), dtype=torch.float64)
    a, b = FeatureStats(8), FeatureStats(8)
    a.update(x)
    c = torch.tensor([0.5, -1.0, 0, 0, 2.0, 0, 0, 0.25], dtype=torch.float64)
    b.update(x + c)
    assert fid_from_stats(a, a) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_stats(a, b) == pytest.approx(float(c @ c), rel=1e-8)


def _all_reduce_worker(rank: int, world: int, init_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x = torch.randn(60, 4, generator=gen(6), dtype=torch.float64)
    shard = FeatureStats(4, keep=True)
    shard.update(x[rank::world])
    shard.all_reduce()
    assert shard.n == 60
    torch.testing.assert_close(shard.sigma(), torch.from_numpy(np.cov(x.numpy(), rowvar=False)))
    assert shard.features().shape == (60, 4)
    dist.destroy_process_group()


def test_feature_stats_all_reduce_sums_the_shards_of_two_processes(tmp_path):
    torch.multiprocessing.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init")), nprocs=2)


# ----------------------------------------------------------------------------------------------- KID and toy metrics

def test_kid_is_unbiased_for_two_samples_of_one_distribution():
    # MMD^2_u has mean 0 when both sets come from one law; the V-statistic would be biased upward by about
    # 2 (E k(x, x) - E k(x, x')) / m ~ 0.3 here, more than 10 standard errors of the average below.
    values = []
    for r in range(300):
        x = torch.randn(50, 4, generator=gen(100 + r), dtype=torch.float64)
        y = torch.randn(50, 4, generator=gen(1000 + r), dtype=torch.float64)
        values.append(kid(x, y, num_subsets=1, max_subset_size=50, generator=gen(r))[0])
    v = torch.tensor(values)
    assert abs(float(v.mean())) < 3 * float(v.std()) / math.sqrt(len(v))


def test_kid_matches_the_closed_form_mmd_of_two_uniform_laws():
    # d = 1: k(x, y) = (xy + 1)^3 = <phi(x), phi(y)> with phi(x) = (x^3, sqrt(3) x^2, sqrt(3) x, 1), so
    # MMD^2 = (E x^3 - E y^3)^2 + 3 (E x^2 - E y^2)^2 + 3 (E x - E y)^2. U(-1, 1): moments 0, 1/3, 0;
    # U(0, 2): 1, 4/3, 2. MMD^2 = 4 + 3 + 3 = 10.
    x = torch.rand(50_000, 1, generator=gen(7), dtype=torch.float64) * 2 - 1
    y = torch.rand(50_000, 1, generator=gen(8), dtype=torch.float64) * 2
    mean, std = kid(x, y, num_subsets=100, max_subset_size=1000, generator=gen(9))
    assert mean == pytest.approx(10.0, abs=4 * std / math.sqrt(100))
    assert 0 < std < 1


def test_sliced_wasserstein_on_hand_computed_cases():
    # 1-D: quantiles of {0, 1} and {0, 0, 1} differ by 1 on (1/2, 2/3]: W_1 = W_2^2 = 1/6.
    a, b = torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [0.0], [1.0]])
    assert sliced_wasserstein(a, b, n_proj=3, p=1) == pytest.approx(1 / 6)
    assert sliced_wasserstein(a, b, n_proj=3, p=2) ** 2 == pytest.approx(1 / 6)
    # A shift by c moves every projection by theta.c: SW_2^2 = E (theta.c)^2 = |c|^2 / d.
    x = torch.randn(300, 2, generator=gen(10))
    c = torch.tensor([1.0, 2.0])
    assert sliced_wasserstein(x, x, generator=gen(11)) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x, x + c, n_proj=4000, generator=gen(11)) ** 2 == pytest.approx(5 / 2, rel=0.05)


def test_mmd_rbf_matches_the_closed_form_for_gaussians():
    # x, x' ~ N(0, s^2 I_d), y ~ N(delta, s^2 I_d), k = exp(-|u|^2 / 2h^2):
    # E k(x, x') = A, E k(x, y) = A exp(-|delta|^2 / 2(h^2 + 2 s^2)), A = (h^2 / (h^2 + 2 s^2))^{d/2}.
    h, s, d = 1.0, 1.0, 2
    delta = torch.tensor([1.0, 0.0])
    a_ = (h * h / (h * h + 2 * s * s)) ** (d / 2)
    expected = 2 * a_ * (1 - math.exp(-1.0 / (2 * (h * h + 2 * s * s))))
    p = torch.randn(3000, 2, generator=gen(12))
    q = torch.randn(3000, 2, generator=gen(13)) + delta
    assert mmd_rbf(p, q, [h]) == pytest.approx(expected, rel=0.1)
    assert abs(mmd_rbf(p, torch.randn(3000, 2, generator=gen(14)), [h])) < 0.1 * expected


# ----------------------------------------------------------------------------------------------- clean-fid parity

def _tiny_net(x: torch.Tensor) -> torch.Tensor:
    """A fixed feature map on clean-fid's input (float [B, 3, 299, 299] in [0, 255]) -> [B, 6]."""
    pooled = F.avg_pool2d(x / 255, 50).flatten(1)  # (B, 75)
    w = torch.randn(pooled.shape[1], 6, generator=gen(15))
    return torch.tanh(pooled @ w)


def _write_pngs(folder, count: int, seed: int, offset: int = 0) -> None:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = np.clip(rng.normal(120 + offset, 60, size=(16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated")
def test_fid_matches_clean_fid_with_the_same_feature_network(tmp_path):
    from cleanfid import fid as cleanfid_fid

    _write_pngs(tmp_path / "a", 20, seed=0)
    _write_pngs(tmp_path / "b", 20, seed=1, offset=30)
    expected = cleanfid_fid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), mode="clean", custom_feat_extractor=_tiny_net,
                                        device=torch.device("cpu"), num_workers=0, use_dataparallel=False, verbose=False,
                                        batch_size=8)
    extractor = CleanFeatures(_tiny_net, 6, "tiny")
    a = accumulate(folder_source(tmp_path / "a").batches(7), extractor)
    b = accumulate(folder_source(tmp_path / "b").batches(7), extractor)
    assert expected > 0.01
    assert fid_from_stats(a, b) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------------------------- inception weights

def test_missing_inception_weights_give_one_line_naming_file_hash_and_url(tmp_path, monkeypatch):
    monkeypatch.setattr(inception_mod, "default_inception_locations", lambda: [tmp_path / "nowhere.pt"])
    with pytest.raises(UserError) as err:
        inception_mod.find_inception()
    message = str(err.value)
    assert "\n" not in message and "inception-2015-12-05.pt" in message
    assert INCEPTION_SHA256 in message and INCEPTION_URL in message and "~/.cache/fsg/" in message


def test_eval_fid_without_inception_weights_exits_2_with_the_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inception_mod, "default_inception_locations", lambda: [tmp_path / "nowhere.pt"])
    np.savez(tmp_path / "s.npz", np.zeros((4, 8, 8, 1), np.uint8))
    code, _, err = run_cli(monkeypatch, capsys, "--samples", tmp_path / "s.npz", "--ref", "digits")
    assert code == 2
    assert err.count("\n") == 1 and INCEPTION_SHA256 in err and INCEPTION_URL in err


class _FakeInception(torch.nn.Module):
    """Stands in for NVIDIA's TorchScript file: a `layers` module mapping [B, 3, 299, 299] to [B, 2048, 1, 1]."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(3, 2048, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")
def test_inception_extractor_matches_clean_fids_own_wrapper_on_a_torchscript_file(tmp_path, monkeypatch):
    from cleanfid.fid import get_folder_features
    from cleanfid.inception_torchscript import InceptionV3W

    torch.manual_seed(0)
    torch.jit.script(_FakeInception()).save(str(tmp_path / "inception-2015-12-05.pt"))
    monkeypatch.setattr(inception_mod, "INCEPTION_SHA256", inception_mod.sha256_file(tmp_path / "inception-2015-12-05.pt"))
    _write_pngs(tmp_path / "imgs", 5, seed=2)
    wrapper = InceptionV3W(str(tmp_path), download=False, resize_inside=False)
    expected = get_folder_features(str(tmp_path / "imgs"), wrapper, num_workers=0, batch_size=2, device=torch.device("cpu"),
                                   mode="clean", verbose=False)
    extractor = inception_mod.load_inception(tmp_path / "inception-2015-12-05.pt")
    got = torch.cat([extractor(b) for b in folder_source(tmp_path / "imgs").batches(3)])
    assert got.shape == (5, 2048)
    torch.testing.assert_close(got, torch.from_numpy(expected), rtol=1e-5, atol=1e-5)


def test_a_file_with_the_wrong_sha256_is_refused(tmp_path):
    fake = tmp_path / "inception-2015-12-05.pt"
    fake.write_bytes(b"truncated")
    with pytest.raises(UserError, match="sha256"):
        inception_mod.find_inception(tmp_path)  # a folder holding the file works as well as the file


# ----------------------------------------------------------------------------------------------- the CLI on digits

def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run `fsg eval-fid ARGS` in this process through the console entry point; (exit code, stdout, stderr)."""
    from fsg.cli import main

    monkeypatch.setattr(sys, "argv", ["fsg", "eval-fid", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


@pytest.fixture(scope="module")
def digit_pixels() -> np.ndarray:
    """The sklearn digits as the uint8 pixels a model trained on them would be scored on, NHWC (1797, 8, 8, 1)."""
    from fsg.data.builtin import digits

    return to_uint8(digits()[0]).permute(0, 2, 3, 1).numpy()


def test_eval_fid_digits_is_small_for_real_digits_and_large_for_noise(tmp_path, monkeypatch, capsys, digit_pixels):
    np.savez(tmp_path / "real.npz", digit_pixels[:1000])
    noise = np.random.default_rng(0).integers(0, 256, size=(1000, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", noise)
    code, out, _ = run_cli(monkeypatch, capsys, "--samples", tmp_path / "real.npz", "--ref", "digits", "--features", "digits",
                           "--kid", "--json", tmp_path / "real.json", "--device", "cpu")
    assert code == 0 and "FID" in out
    real = json.loads((tmp_path / "real.json").read_text())
    assert {"protocol", "fid", "kid", "kid_std", "sets", "stamp"} <= real.keys()
    stamp = real["stamp"]
    assert stamp["n"] == [1000] and list(stamp["features"]) == ["digits"] and stamp["reference"] == "digits"
    assert stamp["nfe"] is None and stamp["samples"] == [str(tmp_path / "real.npz")] and stamp["comparable"]
    code, _, _ = run_cli(monkeypatch, capsys, "--samples", tmp_path / "noise.npz", "--ref", "digits", "--features", "digits",
                         "--kid", "--json", tmp_path / "noise.json", "--device", "cpu")
    noisy = json.loads((tmp_path / "noise.json").read_text())
    assert real["fid"] < 1.0 < 50 < noisy["fid"]
    assert abs(real["kid"]) < 3 * real["kid_std"] and noisy["kid"] > 100 * real["kid_std"]


def test_float_nchw_samples_score_like_their_uint8_pixels(digit_pixels):
    from fsg.eval.digits import load_digits_features

    extractor = load_digits_features()
    ref = stats_of(accumulate(open_source("digits").batches(512), extractor), "digits", "digits", 8)
    pixels = digit_pixels[:300]
    floats = (pixels.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1)  # NCHW in [-1, 1]
    fids = [fd(accumulate(array_source(a, "s").batches(128), extractor), ref) for a in (pixels, floats)]
    assert fids[0] == pytest.approx(fids[1], rel=1e-9)


def test_an_npz_with_images_and_statistics_keeps_both(tmp_path, digit_pixels):
    # A DDBM-style reference holds arr_0 (uint8 NHWC) and TF-Inception mu/sigma: both are kept (the fix of issue 24:
    # such a file used to be read as images only). Stats alone are a Reference without images.
    np.savez(tmp_path / "ref_batch.npz", digit_pixels[:10], mu=np.zeros(3), sigma=np.eye(3))
    ref = open_source(tmp_path / "ref_batch.npz")
    assert isinstance(ref, Reference) and ref.format == "ddbm"
    assert ref.images.count == 10 and ref.images.resolution == 8 and ref.stats["inception-tf"].mu.shape == (3,)
    np.savez(tmp_path / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))
    stats = open_source(tmp_path / "stats.npz")
    assert isinstance(stats, Reference) and stats.images is None and stats.stats[None].n is None


def test_make_ref_writes_stats_that_reproduce_the_fid(tmp_path, monkeypatch, capsys, digit_pixels):
    np.savez(tmp_path / "s.npz", digit_pixels[::3])
    code, out, _ = run_cli(monkeypatch, capsys, "--make-ref", "digits", "--out", tmp_path / "ref.npz", "--features", "digits",
                           "--kid", "--device", "cpu")
    assert code == 0 and "1797 images" in out
    stats = Stats.from_arrays(dict(np.load(tmp_path / "ref.npz")), "ref.npz")
    assert stats.n == 1797 and stats.features == "digits" and stats.resolution == 8 and stats.feats.shape == (1797, 128)
    results = []
    for ref in ("digits", tmp_path / "ref.npz"):
        code, _, _ = run_cli(monkeypatch, capsys, "--samples", tmp_path / "s.npz", "--ref", ref, "--features", "digits",
                             "--kid", "--json", tmp_path / "r.json", "--device", "cpu")
        results.append(json.loads((tmp_path / "r.json").read_text()))
    assert results[0]["fid"] == pytest.approx(results[1]["fid"], rel=1e-9)
    assert results[0]["kid"] == pytest.approx(results[1]["kid"], rel=1e-6)


def test_statistics_of_another_feature_space_are_refused():
    from fsg.eval.digits import load_digits_features

    inception_like = Stats(np.zeros(128), np.eye(128), 10, "inception", 32, "cifar.npz")
    ref = Reference("cifar.npz", "fsg", "0" * 64, {"inception": inception_like}, None)
    with pytest.raises(UserError, match="'inception' and no images; this evaluation needs digits"):
        measure_reference(ref, [load_digits_features()], {"fid": "digits"}, set(), 64)
    no_feats = Stats(np.zeros(128), np.eye(128), 10, "digits", 8, "d.npz")
    ref = Reference("d.npz", "fsg", "0" * 64, {"digits": no_feats}, None)
    with pytest.raises(UserError, match="needs digits"):
        measure_reference(ref, [load_digits_features()], {"fid": "digits"}, {"digits"}, 64)   # KID needs raw features


def test_bad_paths_exit_2(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "--samples", tmp_path / "missing.npz", "--ref", "digits", "--features", "digits")
    assert code == 2 and "missing.npz" in err
    (tmp_path / "x.txt").write_text("hello")
    code, _, err = run_cli(monkeypatch, capsys, "--samples", tmp_path / "x.txt", "--ref", "digits", "--features", "digits")
    assert code == 2 and "x.txt" in err
    monkeypatch.delenv("FSG_CIFAR10", raising=False)
    np.savez(tmp_path / "s.npz", np.zeros((4, 8, 8, 1), np.uint8))
    code, _, err = run_cli(monkeypatch, capsys, "--samples", tmp_path / "s.npz", "--ref", "cifar10-train", "--features", "digits")
    assert code == 2 and "FSG_CIFAR10" in err


def test_eval_fid_generates_from_a_model_on_the_fly(tmp_path, monkeypatch, capsys):
    from fsg.io.checkpoint import save_model
    from tests.helpers import tiny_model

    model = tiny_model(shape=(1, 8, 8), sampler="heun", steps=3)
    save_model(tmp_path / "model.safetensors", model.denoiser.net.state_dict(), model.meta)
    code, _, _ = run_cli(monkeypatch, capsys, "--model", tmp_path / "model.safetensors", "-n", 24, "--batch-size", 10,
                         "--ref", "digits", "--features", "digits", "--json", tmp_path / "r.json", "--device", "cpu")
    result = json.loads((tmp_path / "r.json").read_text())
    stamp = result["stamp"]
    assert code == 0 and stamp["n"] == [24] and stamp["samples"] is None and stamp["seeds"] == ["0-23"]
    assert stamp["nfe"] == 2 * 3 - 1  # EDM's Heun, 3 steps of 2 evaluations except the last (to sigma = 0, Euler)
    assert stamp["sampler"] == "heun" and stamp["model_sha256"] == inception_mod.sha256_file(tmp_path / "model.safetensors")
    assert result["fid"] > 0


# ----------------------------------------------------------------------------------------------- the digits network

def test_shipped_digits_network_classifies_its_held_out_digits():
    from fsg.eval.digits import load_digits_net
    from fsg.eval.train_features import accuracy, split_sets

    net, meta = load_digits_net()
    sets = split_sets(gen(meta["seed"]))  # the split train() drew first from its generator
    for name, (_, _, x_test, y_test) in sets.items():
        acc = accuracy(net, x_test, y_test)
        assert acc >= 0.97
        assert acc == pytest.approx(meta["test_accuracy"][name], abs=1e-6)


def test_digits_features_accept_any_size_and_channel_count(digit_pixels):
    from fsg.eval.digits import load_digits_features

    extractor = load_digits_features()
    gray = torch.from_numpy(digit_pixels[:8]).permute(0, 3, 1, 2)  # (8, 1, 8, 8)
    rgb = gray.expand(-1, 3, -1, -1)
    big = F.interpolate(gray.float(), size=(28, 28), mode="bilinear", antialias=True, align_corners=False).round().to(torch.uint8)
    assert extractor(gray).shape == (8, 128)
    torch.testing.assert_close(extractor(rgb), extractor(gray))
    # resizing in the extractor or before it (then quantizing) gives nearly the same features
    torch.testing.assert_close(extractor(big), extractor(gray), atol=0.1, rtol=0.05)


# ----------------------------------------------------------------------------------------------- paired metrics

def test_paired_mse_is_in_the_minus_one_one_scale():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    y = torch.full((3, 1, 4, 4), 255, dtype=torch.uint8)
    y[:, :, :2] = 0  # half of every target agrees with its sample
    # per pixel (-1 - 1)^2 = 4 on half of the pixels -> MSE 2
    metrics = paired_metrics([x[:2], x[2:]], [y], batch_size=2)
    assert metrics["n"] == 3 and metrics["mse"] == pytest.approx(2.0) and metrics["lpips"] is None
    with pytest.raises(UserError, match="end at 2"):
        paired_metrics([x[:2]], [y])


def test_eval_fid_paired_reports_mse_against_targets_in_index_order(tmp_path, monkeypatch, capsys, digit_pixels):
    samples = digit_pixels[:50]
    targets = samples.copy()
    targets[1::2] = 255 - targets[1::2]  # every other target is the negative image: in [-1, 1], b = -a
    np.savez(tmp_path / "s.npz", samples)
    np.savez(tmp_path / "t.npz", targets)
    code, out, _ = run_cli(monkeypatch, capsys, "--samples", tmp_path / "s.npz", "--ref", "digits", "--features", "digits",
                           "--paired", tmp_path / "t.npz", "--json", tmp_path / "r.json", "--device", "cpu")
    result = json.loads((tmp_path / "r.json").read_text())
    a = samples[1::2].astype(np.float64) / 127.5 - 1
    expected = float((4 * a**2).mean()) / 2  # (a - (-a))^2 = 4 a^2 on half of the pairs, 0 on the other half
    assert code == 0 and "MSE" in out and result["lpips"] is None
    assert result["mse"] == pytest.approx(expected, rel=1e-6)


def test_lpips_needs_local_weights_and_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.delenv("FSG_LPIPS", raising=False)
    with pytest.raises(UserError, match="--lpips DIR"):
        load_lpips()
    with pytest.raises(UserError, match=LIN_FILE):
        torch.save({f"features.{k}": v for k, v in _vgg16_trunk().state_dict().items()}, tmp_path / VGG_FILE)
        load_lpips(tmp_path)


def test_lpips_is_zero_on_equal_images_symmetric_and_positive_otherwise(tmp_path):
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in _vgg16_trunk().state_dict().items()}, tmp_path / VGG_FILE)
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(LPIPS_CHANNELS)}, tmp_path / LIN_FILE)
    lpips = load_lpips(tmp_path)
    x = torch.rand(2, 3, 32, 32, generator=gen(16)) * 2 - 1
    y = torch.rand(2, 3, 32, 32, generator=gen(17)) * 2 - 1
    assert lpips(x, x).abs().max() < 1e-6
    torch.testing.assert_close(lpips(x, y), lpips(y, x))
    assert bool((lpips(x, y) > 0).all())
