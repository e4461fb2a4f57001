"""Model files and training states: round trip, atomic writes, truncated and foreign files."""

import pytest
import torch

from fsg.errors import UserError
from fsg.io.checkpoint import list_states, load_state, read_model, save_model, save_state, state_path
from fsg.models.load import load_model
from tests.helpers import tiny_model


def test_model_roundtrip_through_run_folder_and_file(tmp_path):
    m = tiny_model()
    save_model(tmp_path / "model.safetensors", m.denoiser.net.state_dict(), m.meta)
    for path in (tmp_path, tmp_path / "model.safetensors"):
        loaded = load_model(path)
        x, t = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 2.0])
        assert torch.equal(loaded.denoiser(x, t), m.denoiser(x, t))
        assert loaded.meta["fsg_version"] and loaded.meta["process"]["name"] == "edm"


def test_truncated_and_foreign_files(tmp_path):
    m = tiny_model()
    path = tmp_path / "model.safetensors"
    save_model(path, m.denoiser.net.state_dict(), m.meta)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated"):
        read_model(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file at all")
    with pytest.raises(UserError, match="junk.safetensors"):
        read_model(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError, match="without fsg metadata"):
        read_model(tmp_path / "plain.safetensors")
    with pytest.raises(UserError, match="model not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="without model.safetensors"):
        load_model(tmp_path / "empty_dir")


def test_other_architecture_is_refused(tmp_path):
    m = tiny_model()
    meta = dict(m.meta, network=dict(m.meta["network"], model_channels=16))
    save_model(tmp_path / "model.safetensors", m.denoiser.net.state_dict(), meta)
    with pytest.raises(UserError, match="do not fit the architecture"):
        load_model(tmp_path)


def test_training_state_roundtrip_and_listing(tmp_path):
    for step in (5, 10):
        save_state(state_path(tmp_path, step), {"step": step, "w": torch.arange(3)})
    (tmp_path / ".state-00000015.pt.abc.tmp").write_bytes(b"partial")     # a write that never finished
    assert [s for s, _ in list_states(tmp_path)] == [5, 10]
    assert torch.equal(load_state(state_path(tmp_path, 10))["w"], torch.arange(3))
    (tmp_path / "state-00000020.pt").write_bytes(b"\x80garbage")
    with pytest.raises(UserError, match="unreadable training state"):
        load_state(tmp_path / "state-00000020.pt")


def test_state_files_refuse_code(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/pwned",))

    with open(tmp_path / "state-00000001.pt", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(UserError):
        load_state(tmp_path / "state-00000001.pt")
    assert not (tmp_path / "pwned").exists()
