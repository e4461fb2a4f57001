"""Files that would run code: refused in one line naming the file and the global, never with torch's advice to load
them with weights_only=False, and nothing runs (a marker file would appear)."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fsg.errors import UserError
from fsg.io.checkpoint import foreign_global, load_torch_file

ROOT = Path(__file__).resolve().parents[1]


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(params=["zip", "legacy"])
def evil(request, tmp_path):
    """A .pt whose unpickling would run `touch marker`: torch.save's zip format, or a plain protocol-4 pickle."""
    path, marker = tmp_path / f"evil_{request.param}.pt", tmp_path / "pwned"
    if request.param == "zip":
        torch.save({"w": torch.zeros(2), "x": Payload(marker)}, path)
    else:
        with open(path, "wb") as f:
            pickle.dump({"x": Payload(marker)}, f, protocol=4)
    yield path
    assert not marker.exists()


def one_line_refusal(e, path):
    text = str(e.value)
    assert "\n" not in text and "weights_only" not in text and "trust" not in text
    assert str(path) in text and "refusing to unpickle the global" in text
    assert text.split("global ")[1].split(" ")[0] in ("posix.system", "os.system", "nt.system")


def test_load_torch_file_names_the_global(evil):
    with pytest.raises(UserError) as e:
        load_torch_file(evil)
    one_line_refusal(e, evil)


def test_init_and_teacher_models_are_refused(evil):
    from fsg.models.load import load_model

    with pytest.raises(UserError) as e:
        load_model(evil)                     # what --init and --teacher call
    one_line_refusal(e, evil)


def test_latents_are_refused_as_code_and_as_non_finite(evil, tmp_path):
    from fsg.app.edit import read_latent

    with pytest.raises(UserError) as e:
        read_latent(evil, (1, 2, 2))
    one_line_refusal(e, evil)
    np.save(tmp_path / "nan.npy", np.full((1, 2, 2), np.nan, np.float32))
    with pytest.raises(UserError, match="non-finite values"):
        read_latent(tmp_path / "nan.npy", (1, 2, 2))
    np.save(tmp_path / "obj.npy", np.array([Payload(tmp_path / "pwned")], dtype=object), allow_pickle=True)
    with pytest.raises(UserError, match="cannot read .*obj.npy as an array of numbers"):
        read_latent(tmp_path / "obj.npy", (1, 2, 2))


def test_a_planted_state_is_skipped_by_resume_auto_naming_the_global(tmp_path, capsys):
    from fsg.train.runfolder import newest_state

    torch.save({"step": 1, "w": torch.zeros(1)}, tmp_path / "state-00000001.pt")
    torch.save({"step": 2, "x": Payload(tmp_path / "pwned")}, tmp_path / "state-00000002.pt")
    path, state = newest_state(tmp_path, lambda m: print(m, file=sys.stderr))
    assert path.name == "state-00000001.pt" and state["step"] == 1
    err = capsys.readouterr().err
    assert "skipping unreadable training state" in err and "state-00000002.pt: refusing to unpickle the global" in err
    assert not (tmp_path / "pwned").exists()


def test_foreign_global_reads_opcodes_only(tmp_path):
    with open(tmp_path / "ok.pkl", "wb") as f:
        pickle.dump({"a": [1, 2]}, f, protocol=2)
    assert foreign_global(tmp_path / "ok.pkl") is None
    (tmp_path / "junk").write_bytes(b"\x00\x01 not a pickle")
    assert foreign_global(tmp_path / "junk") is None


def test_convert_prints_one_line_and_exits_2(tmp_path):
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"x": Payload(tmp_path / "pwned")}, f, protocol=4)
    r = subprocess.run([sys.executable, "-m", "fsg", "convert", str(evil), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "refusing to unpickle the global" in r.stderr and "weights_only" not in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()
