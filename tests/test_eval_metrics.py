"""Issue 24's metrics against hand-computed values: precision/recall (Kynkäänniemi et al. 2019, as ADM's evaluator),
the Inception Score (ADM's 5,000-image splits), the Fréchet distance in closed form, ADM's sFID feature order, the
TF-1 resize of the legacy Inception protocol, the 8-bit rules, DDBM's paired aggregation, and the seed sets and
summaries of the protocols."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from fsg.errors import UserError
from fsg.eval.fid import fd
from fsg.eval.images import to_uint8, to_uint8_floor
from fsg.eval.inception import InceptionTF, tf1_resize
from fsg.eval.inception_score import ScoreStats, inception_score
from fsg.eval.paired import paired_metrics
from fsg.eval.precision_recall import manifold_radii, precision_recall
from fsg.eval.protocols import PROTOCOLS, deviations, get_protocol, parse_seeds, seed_sets, summarize
from fsg.eval.stats import FeatureStats, Stats


def column(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)[:, None]


# ----------------------------------------------------------------------------------------------- precision / recall

def test_radii_are_squared_distances_to_the_kth_neighbour_with_the_point_itself_the_0th():
    # {0, 1, 2, 3, 10}, k = 3: the 4th smallest of each row of |x_i - x_j|^2 (self included):
    # 0: {0, 1, 4, 9} -> 9; 1: {0, 1, 1, 4} -> 4; 2: -> 4; 3: {0, 1, 4, 9} -> 9; 10: {0, 49, 64, 81} -> 81.
    torch.testing.assert_close(manifold_radii(column(0, 1, 2, 3, 10), k=3), torch.tensor([9.0, 4, 4, 9, 81]))
    # duplicates count as neighbours: four copies of 0 have radius 0
    torch.testing.assert_close(manifold_radii(column(0, 0, 0, 0, 5), k=3), torch.tensor([0.0, 0, 0, 0, 25]))


def test_precision_and_recall_on_points_on_a_line_by_hand():
    # k = 1. Real {0, 1, 4, 100, 101}: radii (squared) 1, 1, 9, 1, 1. Fake {0.5, 2, 9, 30}: radii 2.25, 2.25, 49, 441.
    # Precision: 0.5 (0.25 <= 1 at 0), 2 (1 <= 1 at 1: the boundary counts) are in; 9 (25 > 9 at 4) and 30 are not: 2/4.
    # Recall: 0, 1 (0.25 <= 2.25 at 0.5) and 4 (25 <= 49 at 9) are in; 100 (4900 > 441 at 30) and 101 are not: 3/5.
    real, fake = column(0, 1, 4, 100, 101), column(0.5, 2, 9, 30)
    assert precision_recall(real, fake, k=1) == (pytest.approx(0.5), pytest.approx(0.6))
    assert precision_recall(real, fake, k=1, block=2) == (pytest.approx(0.5), pytest.approx(0.6))  # blocks change nothing


def test_precision_recall_of_equal_sets_is_one_and_of_far_clusters_zero():
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100) == (0.0, 0.0)


# ----------------------------------------------------------------------------------------------- Inception Score

def test_inception_score_of_hand_logits():
    # p = (3/4, 1/4) and (1/4, 3/4) (logits (ln 3, 0)): pbar = (1/2, 1/2), KL = 3/4 ln(3/2) + 1/4 ln(1/2) each.
    logits = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]], dtype=torch.float64)
    assert inception_score(logits) == pytest.approx(math.exp(0.75 * math.log(1.5) + 0.25 * math.log(0.5)), rel=1e-12)
    # confident and balanced over C classes: IS = C; one class for all: IS = 1 (0 log 0 = 0, not NaN)
    assert inception_score(torch.eye(4).repeat(3, 1) * 1e4) == pytest.approx(4.0, rel=1e-12)
    assert inception_score(torch.tensor([[1e4, 0.0]]).repeat(5, 1)) == pytest.approx(1.0, rel=1e-12)


def test_inception_score_is_the_mean_over_consecutive_splits_and_streams_in_any_order():
    # split_size 2 over 5 samples: splits {0, 1} (balanced: IS 2), {2, 3} (same class: 1), {4} (one sample: 1).
    logits = torch.tensor([[1e4, 0], [0, 1e4], [1e4, 0], [1e4, 0], [0, 1e4]])
    assert inception_score(logits, split_size=2) == pytest.approx((2 + 1 + 1) / 3, rel=1e-12)
    stats = ScoreStats(5, split_size=2)
    order = torch.tensor([4, 1, 3, 0, 2])
    stats.update(logits[order[:2]], order[:2])
    stats.update(logits[order[2:]], order[2:])
    assert stats.score() == pytest.approx(4 / 3, rel=1e-12)


# ----------------------------------------------------------------------------------------------- Fréchet distance

def test_fd_of_one_dimensional_gaussians_is_the_closed_form():
    # samples {-1, 1}: mean 0, unbiased variance 2; reference N(3, 8): d^2 = 3^2 + (sqrt 2 - sqrt 8)^2 = 9 + 2.
    acc = FeatureStats(1)
    acc.update(column(-1, 1))
    assert fd(acc, Stats(np.array([3.0]), np.array([[8.0]]), None, "x", None, "ref")) == pytest.approx(11.0, rel=1e-12)
    with pytest.raises(UserError, match="2-d statistics do not match the 1-d"):
        fd(acc, Stats(np.zeros(2), np.eye(2), None, "x", None, "ref"))


# ----------------------------------------------------------------------------------------------- legacy TF Inception

def test_tf1_resize_samples_source_pixel_i_times_w_over_299():
    # TF-1 ResizeBilinear without half-pixel centres: output column j reads x at j * 2 / 299, clamped at the last
    # pixel; columns [0, 100] give 100 * min(2 j / 299, 1). grid_sample's float32 coordinates err by < 0.01.
    x = torch.tensor([[0.0, 100.0], [0.0, 100.0]]).expand(1, 3, 2, 2)
    out = tf1_resize(x)
    expected = 100 * torch.clamp(torch.arange(299) * 2 / 299, max=1.0)
    assert out.shape == (1, 3, 299, 299)
    torch.testing.assert_close(out[0, 1, 150], expected, atol=0.01, rtol=0)
    ramp = torch.arange(299.0).expand(1, 3, 299, 299)
    torch.testing.assert_close(tf1_resize(ramp), ramp, atol=0.01, rtol=0)    # at 299 the identity


class _Known(nn.Module):
    """A 'conv' whose output is 100 c + 10 h + w at channel c, row h, column w, whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = torch.meshgrid(torch.arange(8.0), torch.arange(2.0), torch.arange(3.0), indexing="ij")
        return (100 * c + 10 * h + w).expand(len(x), 8, 2, 3)


class _Mixed6(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = _Known()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class _Base(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(OrderedDict(mixed_6=_Mixed6(), pool=nn.AdaptiveAvgPool2d(1)))
        self.output = nn.Linear(3, 2)


def test_sfid_features_are_the_first_7_channels_of_mixed_6_conv_in_nhwc_order():
    # guided-diffusion evaluator.py: spatial[..., :7] of an NHWC tensor, flattened: index (h * W + w) * 7 + c.
    out = InceptionTF(_Base()).outputs(torch.zeros(2, 3, 5, 5, dtype=torch.uint8))
    expected = [100 * c + 10 * h + w for h in range(2) for w in range(3) for c in range(7)]
    assert out["spatial"].shape == (2, 42)
    assert out["spatial"][1].tolist() == expected


# ----------------------------------------------------------------------------------------------- 8-bit rules, paired

def test_uint8_rules_of_edm_and_adm():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0])
    assert to_uint8(x).tolist() == [0, 64, 128, 255]          # EDM: trunc(127.5 x + 128): 0.5, 64.25, 128, 255.5
    assert to_uint8_floor(x).tolist() == [0, 63, 127, 255]    # ADM, DDBM: floor(127.5 (x + 1)): 0, 63.75, 127.5, 255


def test_ddbm_paired_metrics_upsample_and_average_batch_means():
    # 130 pairs of constant 8x8 images: the first 128 equal, the last 2 at -1 against +1 (MSE 4). Upsampling a
    # constant image keeps it, so DDBM's mean of batch means is (0 + 4) / 2, fsg's per-pair mean 2 * 4 / 130.
    samples = torch.zeros(130, 1, 8, 8, dtype=torch.uint8)
    targets = samples.clone()
    targets[128:] = 255
    assert paired_metrics([samples], [targets], ddbm=True)["mse"] == pytest.approx(2.0)
    assert paired_metrics([samples], [targets])["mse"] == pytest.approx(8 / 130)


# ----------------------------------------------------------------------------------------------- protocols and seeds

def test_edm_seed_sets_are_three_ranges_of_50000_and_a_reduced_run_keeps_their_starts():
    edm = PROTOCOLS["edm"]
    assert seed_sets(edm) == (range(0, 50_000), range(50_000, 100_000), range(100_000, 150_000))
    assert deviations(edm, [50_000] * 3, seed_sets(edm)) == ([], [])
    reduced = seed_sets(edm, n=100)
    assert reduced == (range(0, 100), range(50_000, 50_100), range(100_000, 100_100))
    breaking, other = deviations(edm, [100] * 3, reduced)
    assert breaking == ["100 samples per set, not the protocol's 50,000"] and other == []
    breaking, _ = deviations(edm, [50_000], (range(0, 50_000),))
    assert breaking == ["1 set(s), not the protocol's 3: the min is over 1"]
    breaking, other = deviations(edm, [50_000] * 3, parse_seeds("1-50000,50001-100000,100001-150000"))
    assert breaking == [] and "instead of the protocol's 0-49999, 50000-99999, 100000-149999" in other[0]
    assert seed_sets(PROTOCOLS["adm"]) == (range(0, 50_000),)
    assert seed_sets(PROTOCOLS["clean"], n=10) == (range(0, 10),)


def test_seeds_parse_like_edms_ranges_one_set_per_comma():
    assert parse_seeds("0-49999") == (range(0, 50_000),)
    assert parse_seeds("0-9, 10-19") == (range(0, 10), range(10, 20))
    assert parse_seeds("7") == (range(7, 8),)
    for bad in ("a-b", "9-3", "-5", ""):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)
    with pytest.raises(UserError, match="-n or --seeds"):
        seed_sets(PROTOCOLS["edm"], n=5, seeds="0-4")


def test_edm_reports_the_minimum_and_the_mean_of_the_sets_per_metric():
    per_set = [{"fid": 3.0, "fd_dinov2": 10.0}, {"fid": 1.0, "fd_dinov2": 12.0}, {"fid": 2.0, "fd_dinov2": 11.0}]
    headline, mean = summarize(PROTOCOLS["edm2"], per_set)
    assert headline == {"fid": 1.0, "fd_dinov2": 10.0} and mean == {"fid": 2.0, "fd_dinov2": 11.0}
    headline, mean = summarize(PROTOCOLS["adm"], [{"fid": 4.0, "is": 9.0}])
    assert headline == {"fid": 4.0, "is": 9.0} and mean is None


def test_protocols_fix_their_feature_network():
    assert get_protocol(None).features == "inception" and get_protocol(None, "digits").features == "digits"
    assert get_protocol("edm", "inception-tf").features == "inception-tf"
    with pytest.raises(UserError, match="protocol 'edm' measures in 'inception-tf'"):
        get_protocol("edm", "digits")
    with pytest.raises(UserError, match="unknown protocol 'fid50k'"):
        get_protocol("fid50k")
