"""A model records its teacher portably: the path, the path relative to the model's folder and the weight fingerprint;
a copied model finds its teacher by the relative path, a user's --teacher is checked by the fingerprint, and a teacher
that cannot be found is one line naming where it was looked for."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fsg.app.edit import pagoda_teacher
from fsg.app.train import train
from fsg.errors import UserError
from fsg.io.checkpoint import MODEL_FILE, save_model
from fsg.models.load import load_model, load_teacher
from fsg.models.meta import model_fingerprint, relocate_teacher, teacher_candidates
from fsg.resources import shipped
from tests.helpers import tiny_meta, tiny_model


def write(folder: Path, model, meta=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_model(folder / MODEL_FILE, model.denoiser.net.state_dict(), meta or model.meta)
    return folder


def pair(root: Path, **meta):
    """root/teacher and root/student, the student recording the teacher as training does."""
    teacher = tiny_model(seed=1)
    write(root / "teacher", teacher)
    record = dict(tiny_meta(), teacher=str((root / "teacher").resolve()),
                  teacher_fingerprint=model_fingerprint(teacher.denoiser.net), **meta)
    write(root / "student", tiny_model(seed=2), relocate_teacher(record, root / "student"))
    return teacher


def test_the_relative_path_is_recorded_from_the_model_folder(tmp_path):
    meta = relocate_teacher({"teacher": str(tmp_path / "runs" / "edm" / MODEL_FILE)}, tmp_path / "runs" / "cd")
    assert meta["teacher_relpath"] == f"../edm/{MODEL_FILE}"
    assert "teacher_relpath" not in relocate_teacher({"teacher_relpath": "stale"}, tmp_path)    # no teacher, no path
    where = teacher_candidates({"teacher": "/gone/edm", "teacher_relpath": "../edm"}, tmp_path / "cd" / MODEL_FILE)
    assert where == [Path("/gone/edm"), (tmp_path / "edm").resolve()]


def test_a_copied_model_finds_its_teacher_by_the_relative_path(tmp_path):
    teacher = pair(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")                                   # the recorded absolute path is gone
    found = load_teacher(load_model(tmp_path / "b" / "student"))
    assert found.path == (tmp_path / "b" / "teacher" / MODEL_FILE).resolve()
    assert model_fingerprint(found.denoiser.net) == model_fingerprint(teacher.denoiser.net)


def test_a_teacher_with_other_weights_at_the_recorded_path_is_passed_over(tmp_path):
    pair(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    write(tmp_path / "a" / "teacher", tiny_model(seed=3))          # retrained in place after the copy
    found = load_teacher(load_model(tmp_path / "b" / "student"))
    assert found.path.parent == (tmp_path / "b" / "teacher").resolve()
    write(tmp_path / "b" / "teacher", tiny_model(seed=4))
    with pytest.raises(UserError) as e:
        load_teacher(load_model(tmp_path / "b" / "student"))
    message = str(e.value)
    assert "\n" not in message and message.count("(other weights)") == 2 and "pass --teacher" in message


def test_the_users_teacher_is_checked_by_its_fingerprint(tmp_path):
    teacher = pair(tmp_path / "a")
    shutil.move(tmp_path / "a" / "teacher", tmp_path / "elsewhere")
    student = load_model(tmp_path / "a" / "student")
    with pytest.raises(UserError, match=r"not where it was recorded: \S+/a/teacher \(missing\); pass --teacher"):
        load_teacher(student)
    found = load_teacher(student, tmp_path / "elsewhere")
    assert model_fingerprint(found.denoiser.net) == model_fingerprint(teacher.denoiser.net)
    write(tmp_path / "other", tiny_model(seed=5))
    with pytest.raises(UserError, match=r"is not the teacher .* was trained with \(other weights\)$"):
        load_teacher(student, tmp_path / "other")
    write(tmp_path / "none", tiny_model(seed=6))
    with pytest.raises(UserError, match="records no teacher: pass --teacher"):
        load_teacher(load_model(tmp_path / "none"))


def test_pagoda_editing_finds_the_copied_teacher_and_checks_its_shape_first(tmp_path):
    pair(tmp_path / "a", method="pagoda", latent_factor=1)          # a generator at its teacher's resolution
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    generator = load_model(tmp_path / "b" / "student")
    assert pagoda_teacher(generator, None, "cpu").path.parent == (tmp_path / "b" / "teacher").resolve()
    write(tmp_path / "wide", tiny_model(seed=7, shape=(1, 16, 16)))
    with pytest.raises(UserError, match=r"makes data of shape \(1, 16, 16\)"):
        pagoda_teacher(generator, tmp_path / "wide", "cpu")


def test_training_records_the_teacher_portably(tmp_path):
    shutil.copytree(shipped("assets", "edm_toy"), tmp_path / "a" / "edm")
    train("distill", "tiny/cd_toy", ["sample.grid=4"], run_dir=tmp_path / "a" / "cd", device="cpu", max_steps=1,
          teacher=tmp_path / "a" / "edm", progress=False)
    meta = load_model(tmp_path / "a" / "cd").meta
    assert meta["teacher"] == str((tmp_path / "a" / "edm").resolve()) and meta["teacher_relpath"] == "../edm"
    assert meta["teacher_fingerprint"] == model_fingerprint(load_model(tmp_path / "a" / "edm").denoiser.net)
    shutil.move(tmp_path / "a", tmp_path / "b")
    assert load_teacher(load_model(tmp_path / "b" / "cd")).path.parent == (tmp_path / "b" / "edm").resolve()
