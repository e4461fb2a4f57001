"""Numbers entering through recipes and --set: ranges declared on the fields, NaN/inf refused, alias bombs, echoes cut
short, recipes that are not text. Every message names the dotted key."""

import math
import time

import pytest

from fsg.errors import UserError
from fsg.io.config import ECHO_CHARS, MAX_YAML_NODES, ConfigError, Interval, _expanded_size, parse_range, parse_yaml, show
from fsg.train.recipe import load_recipe


def refused(overrides, recipe="tiny/edm_toy"):
    with pytest.raises(UserError) as e:
        load_recipe(recipe, overrides)
    return str(e.value)


# ------------------------------------------------------------------------------------------------- ranges

def test_the_message_names_the_key_the_range_and_the_value():
    assert refused(["train.lr=nan"]) == "train.lr: must be a finite number > 0, got nan"
    assert refused(["train.lr=.nan"]) == "train.lr: must be a finite number > 0, got nan"
    assert refused(["train.lr=-inf"]) == "train.lr: must be a finite number > 0, got -inf"
    assert refused(["train.lr=0"]) == "train.lr: must be a finite number > 0, got 0.0"
    assert refused(["train.augment=1.5"]) == "train.augment: must be a finite number in [0, 1], got 1.5"
    assert refused(["train.betas=[0.9, 1.0]"]) == "train.betas[1]: must be a finite number in [0, 1), got 1.0"


@pytest.mark.parametrize("key,value", [
    ("train.ckpt_every", 0), ("train.log_every", 0), ("train.log_every", -3), ("train.sample_every", -1),
    ("train.max_steps", 0), ("train.batch_size", 0), ("train.seed", -1), ("train.keep_ckpts", 0),
    ("train.keep_ckpts", -2), ("train.ema_every", 0), ("sample.steps", 0), ("data.channels", 2),
    ("data.holdout", 1.0), ("process.sigma_min", -1.0), ("process.sigma_max", 0.0), ("process.sigma_data", ".nan"),
])
def test_out_of_range_values_are_refused_by_name(key, value):
    message = refused([f"{key}={value}"])
    assert message.startswith(f"{key}: must be ") and "\n" not in message


@pytest.mark.parametrize("key,value,expected", [
    ("train.keep_ckpts", -1, -1), ("train.keep_ckpts", 1, 1), ("train.sample_every", 0, 0), ("train.seed", 0, 0),
    ("sample.s_tmax", ".inf", math.inf), ("train.augment", 1, 1.0), ("train.micro_batch", "null", None),
])
def test_values_at_the_edges_of_their_ranges_are_taken(key, value, expected):
    section, name = key.split(".")
    assert getattr(getattr(load_recipe("tiny/edm_toy", [f"{key}={value}"]), section), name) == expected


def test_every_float_must_be_finite_without_a_declared_range():
    """P_mean declares no range (any real number), yet NaN and inf are refused; so is a method's float."""
    assert refused(["process.P_mean=.nan"]) == "process.P_mean: must be a finite number, got nan"
    assert refused(["process.P_mean=inf"]) == "process.P_mean: must be a finite number, got inf"
    assert load_recipe("tiny/edm_toy", ["process.P_mean=-3.5"]).process.P_mean == -3.5
    assert refused(["method.target_ema=.nan"], "tiny/cd_toy").startswith("method.target_ema: must be a finite number")


def test_interval_notation_by_hand():
    (gt0,) = parse_range("(0, inf)")
    assert 1e-300 in gt0 and 0.0 not in gt0 and math.inf not in gt0 and math.nan not in gt0
    (closed,) = parse_range("[0, inf]")
    assert math.inf in closed and 0.0 in closed and -1e-12 not in closed
    half, minus_one = parse_range("[1, inf) or -1")
    assert isinstance(half, Interval) and minus_one == -1.0
    assert str(half) == ">= 1" and str(gt0) == "> 0" and str(parse_range("[0, 1)")[0]) == "[0, 1)"


# ------------------------------------------------------------------------------------------------- YAML

def test_expanded_size_counts_aliases_by_hand():
    import yaml

    from fsg.io.config import _StrictLoader

    # root mapping 1 + key 'a' 1 + list 1 + 2 items + key 'b' 1 + the alias expanded again (list 1 + 2 items) = 9
    node = yaml.compose("a: &x [1, 2]\nb: *x\n", Loader=_StrictLoader)
    assert _expanded_size(node, {}, set()) == 9


def test_an_alias_bomb_is_refused_at_once_without_expanding():
    """9 levels of 9 aliases: 9^9 (387 million) strings from a 500-byte file; the message echoes none of them."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    lines += ["description: *a8"]
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"expand to more than {MAX_YAML_NODES:,} values") as e:
        parse_yaml("\n".join(lines))
    assert time.perf_counter() - start < 2 and len(str(e.value)) < 200


def test_a_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match="recursive YAML alias"):
        parse_yaml("a: &x [1, *x]\n")


def test_a_large_value_is_echoed_cut_short(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("description: [" + ", ".join(["'" + "x" * 50 + "'"] * 2000) + "]\n")     # a list in a string field
    with pytest.raises(UserError) as e:
        load_recipe(p)
    assert str(e.value).startswith("description: expected a string, got [") and len(str(e.value)) < 150
    assert len(show("y" * 10_000)) == ECHO_CHARS and len(show(list(range(10_000)))) <= ECHO_CHARS


def test_a_recipe_that_is_not_utf8_text_is_one_line(tmp_path):
    p = tmp_path / "noise.yaml"
    p.write_bytes(bytes([0xB5, 0x00, 0xFF, 0x13]) * 50)
    with pytest.raises(UserError, match=r"not a YAML recipe \(not UTF-8 text: byte 0 is 0xb5\)"):
        load_recipe(p)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (2 << 20))
    with pytest.raises(UserError, match="is not a recipe"):
        load_recipe(big)


def test_an_unhashable_tag_is_a_user_error():
    assert refused(["method.name=[1, 2]"]).startswith("method.name: must be one of")
