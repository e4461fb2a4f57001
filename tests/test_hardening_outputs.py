"""Output locations are checked before the work starts (edit, eval-fid, convert, demo), and results never overwrite the
user's files; options a command cannot use are refused, not ignored."""

import hashlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fsg.cli import app
from fsg.errors import UserError

runner = CliRunner()


def refusal(*args) -> str:
    """The UserError message of `fsg ARGS` run in this process (main() would print it as one line and exit 2)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, UserError), (result.output, result.exception)
    assert "\n" not in str(result.exception)
    return str(result.exception)


def digits(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


def hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def never(*args, **kwargs):
    raise AssertionError("the work started before the outputs were checked")


def test_edit_never_writes_over_its_inputs_or_a_users_files(tmp_path, monkeypatch):
    import fsg.app.edit as edit

    inputs = digits(tmp_path / "in")
    before = hashes(inputs)
    monkeypatch.setattr(edit, "load_model", never)
    with pytest.raises(UserError, match="would overwrite an input image"):
        edit.run_edit("denoise", None, inputs, inputs, sigma=0.5)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "0.png").write_bytes(b"a picture of mine")
    with pytest.raises(UserError, match=r"holds .*0\.png and 1 more file|holds .*0\.png that"):
        edit.run_edit("denoise", None, inputs, mine, sigma=0.5)
    assert hashes(inputs) == before and (mine / "0.png").read_bytes() == b"a picture of mine"
    for bad in (float("nan"), -0.5):
        with pytest.raises(UserError, match="--sigma: must be a finite number > 0"):
            edit.run_edit("denoise", None, inputs, tmp_path / "o", sigma=bad)


def test_edit_runs_again_into_its_own_earlier_output(tmp_path):
    from fsg.app.edit import run_edit

    inputs, out = digits(tmp_path / "in"), tmp_path / "out"
    run_edit("denoise", None, inputs, out, sigma=0.5, add_noise=True, warn=lambda m: None)
    report = run_edit("denoise", None, inputs, out, sigma=0.5, add_noise=True, warn=lambda m: None)
    assert report["n"] == 2 and (out / "comparison.png").is_file()


def test_edit_refuses_options_the_model_cannot_use(tmp_path):
    inputs = digits(tmp_path / "in")
    assert "not class-conditional" in refusal("edit", "denoise", "--input", inputs, "--out", tmp_path / "o",
                                              "--sigma", "0.5", "--class-label", "3", "--device", "cpu")
    assert "--seed: must be at least 0" in refusal("edit", "denoise", "--input", inputs, "--out", tmp_path / "o",
                                                  "--sigma", "0.5", "--seed", "-1", "--device", "cpu")
    assert "--seeds: must be at least 0" in refusal("interpolate", "--out", tmp_path / "i.png", "--seeds", "-1,2",
                                                    "--device", "cpu")
    assert not (tmp_path / "o").exists() and not (tmp_path / "i.png").exists()


def test_eval_fid_checks_its_outputs_and_numbers_first(tmp_path, monkeypatch):
    import fsg.app.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_fid", never)
    np.savez(tmp_path / "s.npz", np.zeros((4, 8, 8, 1), np.uint8))
    (tmp_path / "result.json").mkdir()
    base = ["eval-fid", "--samples", tmp_path / "s.npz", "--ref", "digits", "--features", "digits", "--device", "cpu"]
    assert "expected FILE.json, got" in refusal(*base, "--json", tmp_path / "result.json")      # an existing folder
    assert "expected FILE.json" in refusal(*base, "--json", tmp_path / "result.txt")
    (tmp_path / "afile").write_text("x")
    assert "is a file, not a folder" in refusal(*base, "--json", tmp_path / "afile" / "r.json")
    assert "--batch-size: must be at least 1, got 0" in refusal(*base, "--batch-size", "0")
    assert "--seed: must be at least 0" in refusal(*base, "--seed", "-3")


def test_make_ref_never_writes_over_its_source(tmp_path):
    from fsg.app.evaluate import make_reference

    np.savez(tmp_path / "imgs.npz", np.zeros((4, 8, 8, 1), np.uint8))
    before = (tmp_path / "imgs.npz").read_bytes()
    with pytest.raises(UserError, match="is the --make-ref source itself"):
        make_reference(tmp_path / "imgs.npz", tmp_path / "imgs.npz", features="digits")
    with pytest.raises(UserError, match=r"expected FILE\.pkl"):
        make_reference(tmp_path / "imgs.npz", tmp_path / "ref.npz", protocol="edm2")
    assert (tmp_path / "imgs.npz").read_bytes() == before


def test_convert_never_writes_over_a_model(tmp_path):
    from fsg.io.checkpoint import save_model
    from tests.helpers import tiny_model

    m = tiny_model()
    save_model(tmp_path / "model.safetensors", m.denoiser.net.state_dict(), m.meta)
    before = (tmp_path / "model.safetensors").read_bytes()
    assert "exists; convert into a new folder" in refusal("convert", tmp_path / "model.safetensors", "--out", tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_demo_checks_its_folder_and_count_first(tmp_path):
    (tmp_path / "f").write_text("mine")
    assert "is a file, not a folder" in refusal("demo", "--run-dir", tmp_path / "f", "--device", "cpu")
    assert "-n: the toy distances need at least 2 samples, got 0" in refusal("demo", "--run-dir", tmp_path / "d",
                                                                             "-n", "0", "--device", "cpu")
    assert (tmp_path / "f").read_text() == "mine" and not (tmp_path / "d").exists()


def test_grow_decoder_encode_refuses_training_options(tmp_path):
    message = refusal("grow-decoder", "--stage", "encode", "--recipe", "tiny/pagoda_mnist_distill", "--max-steps", "3",
                      "--run-dir", tmp_path / "lat")
    assert "--max-steps does not apply" in message and not (tmp_path / "lat").exists()
