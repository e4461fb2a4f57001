"""Reference statistics in the formats the papers publish (fsg.io.refstats): each written by the test as the
reference code writes it and read back, fsg's writers round-tripped, ADM's reference batches read as statistics
and images both, and pickles that name anything but plain data refused without running them."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from fsg.app.image_sources import Reference, open_images, open_source
from fsg.errors import UserError
from fsg.io.refstats import (read_reference, read_stats_pickle, write_adm_npz, write_ddbm_npz, write_edm2_pickle,
                             write_edm_npz)


def gaussian(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T


def test_edm_fid_refs_npz(tmp_path):
    mu, sigma = gaussian(4, 0)
    with open(tmp_path / "cifar10-32x32.npz", "wb") as f:
        np.savez(f, mu=mu, sigma=sigma)                 # NVlabs/edm fid.py ref: np.savez(dest, mu=mu, sigma=sigma)
    ref = read_reference(tmp_path / "cifar10-32x32.npz")
    assert ref.format == "edm" and ref.images is None and list(ref.gaussians) == ["fid"]
    np.testing.assert_array_equal(ref.gaussians["fid"][0], mu)
    write_edm_npz(tmp_path / "mine.npz", mu, sigma)
    assert set(np.load(tmp_path / "mine.npz").files) == {"mu", "sigma"}
    np.testing.assert_array_equal(read_reference(tmp_path / "mine.npz").gaussians["fid"][1], sigma)


def test_adm_reference_batch_is_read_as_statistics_and_images(tmp_path):
    # guided-diffusion's VIRTUAL_*.npz: whole-set mu, sigma, mu_s, sigma_s (and mu_clip, sigma_clip, unused) plus
    # arr_0, 10,000 uint8 NHWC images for precision/recall (here 6).
    (mu, sigma), (mu_s, sigma_s), (mu_c, sigma_c) = gaussian(4, 1), gaussian(5, 2), gaussian(3, 3)
    images = np.random.default_rng(4).integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "VIRTUAL_tiny.npz", images, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, mu_clip=mu_c,
             sigma_clip=sigma_c)
    ref = open_source(tmp_path / "VIRTUAL_tiny.npz", what="--ref")
    assert isinstance(ref, Reference) and ref.format == "adm"
    assert ref.stats["inception-tf"].mu.shape == (4,) and ref.stats["inception-tf-spatial"].mu.shape == (5,)
    np.testing.assert_array_equal(ref.stats["inception-tf-spatial"].sigma, sigma_s)
    assert ref.images.count == 6 and ref.images.resolution == 8
    first = next(ref.images.batches(4))
    np.testing.assert_array_equal(first.permute(0, 2, 3, 1).numpy(), images[:4])
    np.testing.assert_array_equal(open_images(tmp_path / "VIRTUAL_tiny.npz").batches(6).__next__().numpy(),
                                  images.transpose(0, 3, 1, 2))
    write_adm_npz(tmp_path / "mine.npz", images, (mu, sigma), (mu_s, sigma_s))
    back = read_reference(tmp_path / "mine.npz")
    assert back.format == "adm" and set(back.gaussians) == {"fid", "sfid"}
    np.testing.assert_array_equal(back.images, images)


def test_ddbm_reference_holds_the_targets_in_order(tmp_path):
    mu, sigma = gaussian(4, 5)
    targets = np.arange(5 * 4 * 4, dtype=np.uint8).reshape(5, 4, 4, 1)
    write_ddbm_npz(tmp_path / "e2h_ref.npz", targets, (mu, sigma))
    ref = open_source(tmp_path / "e2h_ref.npz")
    assert ref.format == "ddbm" and ref.stats["inception-tf"].n is None
    np.testing.assert_array_equal(next(ref.images.batches(5))[:, 0].numpy(), targets[..., 0])


def test_edm2_dataset_refs_pickle(tmp_path):
    (mu, sigma), (mu_d, sigma_d) = gaussian(4, 6), gaussian(3, 7)
    stats = {"num_images": 1281167, "fid": {"mu": mu, "sigma": sigma}, "fd_dinov2": {"mu": mu_d, "sigma": sigma_d}}
    with open(tmp_path / "img512.pkl", "wb") as f:
        pickle.dump(stats, f)                           # NVlabs/edm2 calculate_metrics.py save_stats
    ref = open_source(tmp_path / "img512.pkl", what="--ref")
    assert ref.format == "edm2" and ref.images is None and set(ref.stats) == {"inception-tf", "dinov2"}
    assert ref.stats["dinov2"].n == 1281167
    np.testing.assert_array_equal(ref.stats["dinov2"].sigma, sigma_d)
    write_edm2_pickle(tmp_path / "mine.pkl", 10, {"fid": (mu, sigma), "fd_dinov2": (mu_d, sigma_d)})
    back = read_stats_pickle(tmp_path / "mine.pkl")
    assert back["num_images"] == 10 and set(back) == {"num_images", "fid", "fd_dinov2"}
    np.testing.assert_array_equal(back["fid"]["mu"], mu)


def test_a_pickle_written_by_numpy_1_loads():
    # numpy 1.x names numpy.core.multiarray where numpy 2 writes numpy._core: EDM2's refs date from numpy 1.
    data = pickle.dumps({"fid": {"mu": np.zeros(2), "sigma": np.eye(2)}}, protocol=2).replace(b"numpy._core", b"numpy.core")
    from io import BytesIO

    from fsg.io.refstats import RestrictedUnpickler

    obj = RestrictedUnpickler(BytesIO(data)).load()
    np.testing.assert_array_equal(obj["fid"]["sigma"], np.eye(2))


class _Payload:
    """Unpickling this would call os.system: a reference file must never do that."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Custom:
    pass


@pytest.mark.parametrize("payload", ["code", "class"])
def test_pickled_code_in_a_reference_is_refused_without_running(tmp_path, monkeypatch, capsys, payload):
    from tests.test_eval import run_cli

    marker = tmp_path / "ran"
    obj = _Payload(str(marker)) if payload == "code" else _Custom()
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"num_images": 1, "fid": obj}, f)
    with pytest.raises(UserError, match="refusing to load the global"):
        read_stats_pickle(tmp_path / "evil.pkl")
    np.savez(tmp_path / "s.npz", np.zeros((4, 8, 8, 1), np.uint8))
    code, _, err = run_cli(monkeypatch, capsys, "--samples", tmp_path / "s.npz", "--ref", tmp_path / "evil.pkl",
                           "--features", "digits", "--device", "cpu")
    assert code == 2 and "fsg never runs code from a file" in err and err.count("\n") == 1
    assert not marker.exists()


def test_unreadable_or_empty_references_are_user_errors(tmp_path):
    (tmp_path / "x.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="x.pkl"):
        read_reference(tmp_path / "x.pkl")
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(UserError, match="not a dict of statistics"):
        read_reference(tmp_path / "list.pkl")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(UserError, match="neither images"):
        read_reference(tmp_path / "other.npz")
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.eye(2))
    with pytest.raises(UserError, match="not a mean and its covariance"):
        read_reference(tmp_path / "bad.npz")
