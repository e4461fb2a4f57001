"""Each protocol of issue 24 end to end through `fsg eval-fid`, on the bundled digits model or digit files, with the
small feature networks of tests/test_eval_networks.py standing in for Inception and DINOv2 (their sha256 pinned by
the test): EDM's three seed sets with min and mean, EDM2's FD_DINOv2, ADM's five numbers from a reference batch,
clean-fid's modes, the bridges' paired protocol; `--make-ref` in each format; and the stamp of every result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fsg.eval import dinov2 as dinov2_mod
from fsg.eval import inception as inception_mod
from fsg.io.refstats import read_reference, read_stats_pickle, sha256_file
from fsg.models.load import BUNDLED_MODEL
from tests.test_eval import digit_pixels, run_cli  # noqa: F401 (a fixture)
from tests.test_eval_networks import fake_inception, tiny_dinov2

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("weights")
    inception, inception_sha = fake_inception(folder)
    dinov2, dinov2_sha = tiny_dinov2(folder)
    return {"inception": inception, "inception_sha": inception_sha, "dinov2": dinov2, "dinov2_sha": dinov2_sha}


@pytest.fixture
def cli(weights, monkeypatch, capsys, tmp_path):
    """Run `fsg eval-fid ARGS --inception FAKE --dinov2 TINY --device cpu` with the fakes' hashes pinned; returns
    (exit code, stdout, stderr, the --json result or None)."""
    monkeypatch.setattr(inception_mod, "INCEPTION_SHA256", weights["inception_sha"])
    monkeypatch.setattr(dinov2_mod, "DINOV2_SHA256", weights["dinov2_sha"])

    def run(*args):
        out = tmp_path / "result.json"
        out.unlink(missing_ok=True)
        code, stdout, stderr = run_cli(monkeypatch, capsys, *args, "--inception", weights["inception"], "--dinov2",
                                       weights["dinov2"], "--device", "cpu", *(["--json", out] if "--make-ref" not in args else []))
        return code, stdout, stderr, json.loads(out.read_text()) if out.exists() else None

    return run


@pytest.fixture
def digits_npz(tmp_path, digit_pixels):  # noqa: F811
    """120 digits as an ADM-layout sample file (uint8 NHWC)."""
    np.savez(tmp_path / "digits120.npz", digit_pixels[:120])
    return tmp_path / "digits120.npz"


def test_edm_on_the_bundled_model_reports_min_and_mean_of_three_labelled_seed_sets(cli, tmp_path, digits_npz, weights):
    code, out, _, _ = cli("--protocol", "edm", "--make-ref", digits_npz, "--out", tmp_path / "ref.npz")
    assert code == 0 and "edm reference (inception-tf) of 120 images" in out
    assert set(np.load(tmp_path / "ref.npz").files) == {"mu", "sigma"}          # exactly EDM's fid-refs keys
    code, out, _, result = cli("--protocol", "edm", "--model", BUNDLED_MODEL, "-n", 12, "--ref", tmp_path / "ref.npz")
    assert code == 0
    fids = [s["fid"] for s in result["sets"]]
    assert [s["set"] for s in result["sets"]] == ["0-11", "50000-50011", "100000-100011"] and len(set(fids)) == 3
    assert result["headline"] == "min" and result["fid"] == min(fids)
    assert result["mean"]["fid"] == pytest.approx(sum(fids) / 3, rel=1e-12)
    stamp = result["stamp"]
    assert stamp["evaluator"] == "NVlabs/edm fid.py" and stamp["protocol"] == "edm"
    assert stamp["features"] == {"inception-tf": weights["inception_sha"]}
    assert stamp["reference_format"] == "edm" and stamp["reference_sha256"] == sha256_file(tmp_path / "ref.npz")
    assert stamp["n"] == [12, 12, 12] and stamp["protocol_n"] == 50_000 and stamp["seed"] == 0
    assert stamp["seeds"] == ["0-11", "50000-50011", "100000-100011"] and stamp["uint8"] == "round"
    assert stamp["model_sha256"] == sha256_file(BUNDLED_MODEL) and stamp["sampler"] == "consistency" and stamp["nfe"] == 1
    assert not stamp["comparable"] and stamp["departures"] == ["12 samples per set, not the protocol's 50,000"]
    assert stamp["notes"] == [f"{tmp_path / 'ref.npz'} does not record its feature space (edm format): taken as "
                              "'inception-tf'"]
    for line in ("evaluator: NVlabs/edm fid.py", "inception-tf sha256 " + weights["inception_sha"], "seeds: 0-11, ",
                 "sampler: consistency, NFE 1", "comparable: NO: see the departures",
                 "departure: 12 samples per set, not the protocol's 50,000"):
        assert line in out
    # a seed set is a range of sample indices: the first set alone is the same 12 samples
    code, _, _, first = cli("--protocol", "edm", "--model", BUNDLED_MODEL, "--seeds", "0-11", "--ref", tmp_path / "ref.npz")
    assert first["fid"] == pytest.approx(fids[0], rel=1e-9) and first["mean"] is None
    assert any("1 set(s), not the protocol's 3" in n for n in first["stamp"]["departures"])
    # sample files: one per set
    code, _, _, files = cli("--protocol", "edm", "--samples", digits_npz, "--samples", digits_npz, "--samples",
                            digits_npz, "--ref", tmp_path / "ref.npz")
    assert [s["set"] for s in files["sets"]] == [str(digits_npz)] * 3 and files["fid"] == files["sets"][0]["fid"]
    assert files["stamp"]["seeds"] is None and files["stamp"]["samples"] == [str(digits_npz)] * 3


def test_edm2_reports_fid_and_fd_dinov2_zero_for_the_reference_itself(cli, tmp_path, digits_npz, weights):
    code, out, _, _ = cli("--protocol", "edm2", "--make-ref", digits_npz, "--out", tmp_path / "ref.pkl")
    ref = read_stats_pickle(tmp_path / "ref.pkl")
    assert code == 0 and set(ref) == {"num_images", "fid", "fd_dinov2"} and ref["num_images"] == 120
    assert ref["fd_dinov2"]["mu"].shape == (64,) and ref["fid"]["sigma"].dtype == np.float64
    code, _, _, result = cli("--protocol", "edm2", "--samples", digits_npz, "--ref", tmp_path / "ref.pkl")
    assert code == 0 and result["fid"] == pytest.approx(0, abs=1e-6) and result["fd_dinov2"] == pytest.approx(0, abs=1e-6)
    assert result["stamp"]["features"] == {"inception-tf": weights["inception_sha"], "dinov2": weights["dinov2_sha"]}
    assert result["stamp"]["reference_format"] == "edm2" and result["stamp"]["samples"] == [str(digits_npz)]
    code, _, _, result = cli("--protocol", "edm2", "--model", BUNDLED_MODEL, "-n", 6, "--ref", tmp_path / "ref.pkl")
    assert code == 0 and len(result["sets"]) == 3 and result["fd_dinov2"] == min(s["fd_dinov2"] for s in result["sets"])


def test_adm_uses_the_batchs_statistics_for_fid_and_its_images_for_precision_recall(cli, tmp_path, digits_npz,
                                                                                   digit_pixels):  # noqa: F811
    code, _, _, _ = cli("--protocol", "adm", "--make-ref", digits_npz, "--out", tmp_path / "adm.npz")
    batch = np.load(tmp_path / "adm.npz")
    assert code == 0 and set(batch.files) == {"arr_0", "mu", "sigma", "mu_s", "sigma_s"}
    np.testing.assert_array_equal(batch["arr_0"], digit_pixels[:120])        # fewer than 10,000: all, in order
    code, _, _, same = cli("--protocol", "adm", "--samples", digits_npz, "--ref", tmp_path / "adm.npz")
    assert code == 0 and same["fid"] == pytest.approx(0, abs=1e-6) and same["sfid"] == pytest.approx(0, abs=1e-4)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["is"] > 1.0
    assert same["stamp"]["evaluator"] == "openai/guided-diffusion evaluations/evaluator.py"
    # The same whole-set statistics with other images in arr_0 (noise): FID and sFID stay 0 (the stored statistics
    # are used, as ADM's evaluator does), precision and recall drop (they come from arr_0).
    noise = np.random.default_rng(0).integers(0, 256, size=(50, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "noise_batch.npz", noise, **{k: batch[k] for k in ("mu", "sigma", "mu_s", "sigma_s")})
    code, _, _, mixed = cli("--protocol", "adm", "--samples", digits_npz, "--ref", tmp_path / "noise_batch.npz")
    assert mixed["fid"] == pytest.approx(0, abs=1e-6) and mixed["sfid"] == pytest.approx(0, abs=1e-4)
    assert mixed["precision"] < 0.5 and mixed["recall"] < 0.5
    code, _, _, model = cli("--protocol", "adm", "--model", BUNDLED_MODEL, "-n", 30, "--ref", tmp_path / "adm.npz")
    assert code == 0 and model["stamp"]["uint8"] == "floor" and model["stamp"]["seeds"] == ["0-29"]
    assert {"fid", "sfid", "is", "precision", "recall"} <= model.keys() and 0 <= model["precision"] <= 1


def test_clean_fid_modes_name_their_network(cli, digits_npz, weights):
    for protocol, network in (("clean", "inception"), ("legacy-tf", "inception-tf")):
        code, _, _, result = cli("--protocol", protocol, "--samples", digits_npz, "--ref", digits_npz, "--kid")
        assert code == 0 and result["fid"] == pytest.approx(0, abs=1e-6) and result["kid"] is not None
        assert result["stamp"]["features"] == {network: weights["inception_sha"]}
        assert result["stamp"]["evaluator"].startswith("clean-fid") and result["stamp"]["comparable"]


def test_bridge_protocol_from_files_with_ddbms_reference(cli, tmp_path, digit_pixels):  # noqa: F811
    # 40 pairs in one batch: 36 equal, 4 constant images at -1 against +1 (MSE 4 after the 224 upsampling too):
    # MSE = 4 * 4 / 40.
    samples = digit_pixels[:40].copy()
    targets = samples.copy()
    samples[36:], targets[36:] = 0, 255
    np.savez(tmp_path / "samples.npz", samples)
    np.savez(tmp_path / "targets.npz", targets)
    code, out, _, _ = cli("--protocol", "bridge", "--make-ref", tmp_path / "targets.npz", "--out", tmp_path / "ref.npz")
    assert code == 0 and set(np.load(tmp_path / "ref.npz").files) == {"arr_0", "mu", "sigma"}
    assert read_reference(tmp_path / "ref.npz").format == "ddbm"
    code, _, _, result = cli("--protocol", "bridge", "--samples", tmp_path / "samples.npz", "--ref", tmp_path / "ref.npz")
    assert code == 0 and result["mse"] == pytest.approx(0.4, rel=1e-6) and result["lpips"] is None
    assert result["is"] > 0 and result["fid"] > 0
    stamp = result["stamp"]
    assert stamp["evaluator"] == "alexzhou907/DDBM evaluations/evaluator.py" and stamp["uint8"] == "floor"
    assert stamp["departures"] == ["LPIPS not measured: no LPIPS weights (--lpips DIR or $FSG_LPIPS)"]
    np.savez(tmp_path / "short.npz", samples[:39])
    code, _, err, _ = cli("--protocol", "bridge", "--samples", tmp_path / "short.npz", "--ref", tmp_path / "ref.npz")
    assert code == 2 and "the samples end at 39 images" in err


def test_bridge_protocol_samples_the_bundled_model_once_per_pair(cli, tmp_path):
    from fsg.data import build_dataset
    from fsg.data.config import DataConfig
    from fsg.eval.images import to_uint8

    data = build_dataset(DataConfig(source="digits", resolution=16))       # the bundled model's 16x16 digits
    targets = to_uint8(torch.stack([data[i]["x"] for i in range(40)])).permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "targets.npz", targets)
    code, _, _, result = cli("--protocol", "bridge", "--model", BUNDLED_MODEL, "--paired", tmp_path / "targets.npz",
                             "-n", 16)
    assert code == 0 and result["stamp"]["n"] == [16] and result["mse"] > 0
    assert "one sample for each of the first 16 of the 40 pairs" in result["stamp"]["departures"]
    assert any("the FID reference is the paired targets" in n for n in result["stamp"]["notes"])
    assert not result["stamp"]["comparable"]


def test_bridge_protocol_samples_a_bridge_model_on_its_training_pairs(cli, tmp_path, digits_npz):
    # DDBM's protocol: conditions from the train split the model records, one sample per pair, targets its x.
    from fsg.data.config import DataConfig
    from fsg.io.checkpoint import save_model
    from fsg.io.config import to_dict
    from tests.test_bridges import tiny_bridge_model

    model = tiny_bridge_model()
    model.meta["data"] = to_dict(DataConfig(source="digits", degrade="down2"))
    save_model(tmp_path / "bridge.safetensors", model.denoiser.net.state_dict(), model.meta)
    code, _, _, result = cli("--protocol", "bridge", "--model", tmp_path / "bridge.safetensors", "-n", 8, "--steps", 3,
                             "--ref", digits_npz)
    assert code == 0 and result["stamp"]["n"] == [8] and result["stamp"]["sampler"] == "dbim"
    assert result["stamp"]["reference"] == str(digits_npz) and result["mse"] > 0
    assert any("first 8 of the 1,797 pairs" in n for n in result["stamp"]["departures"])


def test_protocols_refuse_other_features_and_missing_targets(cli, digits_npz):
    code, _, err, _ = cli("--protocol", "edm", "--samples", digits_npz, "--ref", digits_npz, "--features", "digits")
    assert code == 2 and "measures in 'inception-tf'" in err
    code, _, err, _ = cli("--protocol", "bridge", "--model", BUNDLED_MODEL, "-n", 4)
    assert code == 2 and "compares sample i with target i" in err
    code, _, err, _ = cli("--protocol", "edm2", "--samples", digits_npz, "--ref", digits_npz, "-n", 5)
    assert code == 2 and "sample file is scored whole" in err
