"""Shipped files (bundled models, features, recipes) are found from a source checkout and from a wheel."""

from pathlib import Path

import fsg.resources as resources
from fsg.resources import find_recipe, shipped

ROOT = Path(__file__).resolve().parents[1]


def test_source_checkout_files_are_found_in_place():
    assert shipped("assets", "cd_digits", "model.safetensors") == ROOT / "assets" / "cd_digits" / "model.safetensors"
    assert shipped("no", "such") == ROOT / "no" / "such"           # the error names the checkout's path


def test_a_wheels_bundle_comes_first(tmp_path, monkeypatch):
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "x.txt").write_text("bundled")
    monkeypatch.setattr(resources, "BUNDLE", tmp_path)
    assert shipped("assets", "x.txt") == tmp_path / "assets" / "x.txt"
    assert shipped("recipes", "tiny", "edm_toy.yaml") == ROOT / "recipes" / "tiny" / "edm_toy.yaml"


def test_recipe_names_resolve_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = ROOT / "recipes" / "tiny" / "edm_toy.yaml"
    for name in ("recipes/tiny/edm_toy.yaml", "tiny/edm_toy.yaml", "tiny/edm_toy"):
        assert find_recipe(name) == expected
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "edm_toy.yaml").write_text("{}")
    assert find_recipe("tiny/edm_toy.yaml") == Path("tiny/edm_toy.yaml")    # a file of the user's comes first
    assert find_recipe("tiny/nothing") == Path("tiny/nothing")
