"""The strict recipe loader: every error names the dotted key."""

import pytest

from fsg.io.config import ConfigError, parse_yaml
from fsg.train.recipe import load_recipe


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_scientific_notation_is_a_float(tmp_path):
    r = load_recipe(write(tmp_path, "train:\n  lr: 1e-4\n  max_steps: 10\n"))
    assert r.train.lr == 1e-4 and isinstance(r.train.lr, float)
    assert parse_yaml("a: 3e5")["a"] == 300000.0


def test_unknown_key_names_dotted_key_and_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'train\.lrr'.*'train\.lr'"):
        load_recipe(write(tmp_path, "train:\n  lrr: 1\n"))
    with pytest.raises(ConfigError, match=r"train\.bogus"):
        load_recipe(write(tmp_path, "train: {}\n"), ["train.bogus=1"])


def test_wrong_type_and_bad_choice(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected an integer"):
        load_recipe(write(tmp_path, "train:\n  max_steps: '10'\n"))
    with pytest.raises(ConfigError, match=r"train\.optimizer: must be one of"):
        load_recipe(None, ["train.optimizer=sgd"])
    with pytest.raises(ConfigError, match=r"method\.name: must be one of"):
        load_recipe(None, ["method.name=nope"])
    with pytest.raises(ConfigError, match=r"network\.hidden: expected an integer"):
        load_recipe(None, ["network.arch=mlp", "network.hidden=wide"])


def test_tagged_union_validates_the_member_fields(tmp_path):
    r = load_recipe(None, ["method.name=cd", "method.num_scales=40"])
    assert r.method.num_scales == 40
    with pytest.raises(ConfigError, match=r"unknown key 'method\.s0'"):
        load_recipe(None, ["method.name=cd", "method.s0=2"])       # a CT key on a CD method


def test_duplicate_keys_rejected(tmp_path):
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_recipe(write(tmp_path, "train:\n  lr: 1\n  lr: 2\n"))


def test_invalid_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_recipe(write(tmp_path, "train: [1, 2\n"))
    from fsg.errors import UserError
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_every_shipped_recipe_validates():
    from pathlib import Path
    recipes = sorted(Path(__file__).resolve().parents[1].glob("recipes/**/*.yaml"))
    assert recipes
    for path in recipes:
        load_recipe(path)
