"""The conventions every command follows (issue 20): one error style, help texts that render, one meaning per flag
name, `--json`, EDM's seed lists and folders, ADM's .npz layout, shipped things by name, progress, toy metrics."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import typer

from fsg.cli import COMMANDS, app, main
from fsg.cli.common import BATCH_SIZE, parse_seeds
from fsg.errors import EXIT_NONFINITE, EXIT_PREEMPTED, EXIT_USER_ERROR, UserError

ROOT = Path(__file__).resolve().parents[1]
RESULT_COMMANDS = [("sample",), ("interpolate",), ("eval-fid",), ("eval-toy",), ("models",), ("recipe", "list"),
                   *[("edit", task) for task in ("inpaint", "colorize", "superres", "stroke", "denoise", "invert")]]


def run(monkeypatch, capsys, *args, env=None):
    """`fsg ARGS` through the console entry point in this process: (exit code, stdout, stderr)."""
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out, err = capsys.readouterr()
    return info.value.code or 0, out, err


def commands():
    """(path, click command) of every command, groups' subcommands included."""
    root = typer.main.get_command(app)
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands"):
            yield from (((name, sub_name), sub) for sub_name, sub in cmd.commands.items())
        else:
            yield (name,), cmd


def options(cmd) -> dict[str, object]:
    return {opt: p for p in cmd.params for opt in p.opts}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny saved models: an unconditional 1-step consistency model and a class-conditional one (3 classes)."""
    from fsg.io.checkpoint import save_model
    from tests.helpers import tiny_model

    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, kw in (("plain", {}), ("classes", {"num_classes": 3})):
        m = tiny_model(shape=(1, 8, 8), precond="consistency", sampler="consistency", steps=1, **kw)
        save_model(root / name / "model.safetensors", m.denoiser.net.state_dict(), m.meta)
        paths[name] = root / name
    return paths


# ------------------------------------------------------------------------------------------------ one error style
@pytest.mark.parametrize("args,needle", [
    (["sample", "--bogus"], "No such option: --bogus"),
    (["sample", "-n", "x", "--grid", "g.png"], "'-n' / '--num'"),
    (["edit", "inpaint", "--out", "o/"], "Missing option '--input'"),
    (["recipe", "show"], "Missing argument"),
    (["eval-fid", "--batch-size", "many"], "--batch-size"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_are_one_line_and_exit_2(monkeypatch, capsys, args, needle):
    code, out, err = run(monkeypatch, capsys, *args)
    assert code == EXIT_USER_ERROR and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fsg: error: ") and needle in lines[0], err
    assert "╭" not in err and "Traceback" not in err


def test_no_command_prints_the_help_and_the_exit_codes(monkeypatch, capsys):
    code, out, _ = run(monkeypatch, capsys, env={"COLUMNS": "200"})
    assert code == 0 and "Usage: fsg" in out
    code, out, _ = run(monkeypatch, capsys, "--help", env={"COLUMNS": "200"})
    text = " ".join(out.split())
    assert code == 0
    for number, what in ((0, "done"), (EXIT_USER_ERROR, "usage or user error"), (EXIT_PREEMPTED, "signal"),
                         (EXIT_NONFINITE, "non-finite loss")):
        assert f"{number} " in text and what in text
    assert EXIT_USER_ERROR == 2 and EXIT_PREEMPTED == 3 and EXIT_NONFINITE == 4      # as the README documents them


def test_version(monkeypatch, capsys):
    from fsg.version import __version__

    code, out, _ = run(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"fsg {__version__}"


# ------------------------------------------------------------------------------------------------ help that renders
def test_every_help_text_keeps_its_brackets(monkeypatch, capsys):
    """rich markup took '[t_min, T - gamma]' for a style tag and printed 'strictly decreasing in , e.g. 0.6': every
    bracketed part of every option's help and every docstring must reach the rendered help."""
    import re

    checked = 0
    for path, cmd in commands():
        texts = [p.help for p in cmd.params if getattr(p, "help", None)] + [cmd.help or ""]
        wanted = [m.replace("\\[", "[") for t in texts for m in re.findall(r"\\?\[[^\[\]]*\]", t)]
        if not wanted:
            continue
        _code, out, _ = run(monkeypatch, capsys, *path, "--help", env={"COLUMNS": "1000"})
        shown = " ".join(out.replace("│", " ").split())
        for part in wanted:
            assert " ".join(part.split()) in shown, f"fsg {' '.join(path)} --help lost {part!r}"
            checked += 1
    assert checked >= 5


# ------------------------------------------------------------------------------------------------ one meaning per flag
def test_flags_mean_one_thing_everywhere():
    import inspect

    from fsg.app.api import BATCH_SIZE as API_BATCH_SIZE
    from fsg.app.api import Model

    seen = set()
    for path, cmd in commands():
        opts = options(cmd)
        if "--batch-size" in opts:
            assert opts["--batch-size"].default == BATCH_SIZE, f"fsg {' '.join(path)} --batch-size"
            seen.add("batch")
        if "-n" in opts:
            assert "--num" in opts["-n"].opts, f"fsg {' '.join(path)}: -n is --num (the number of outputs)"
            seen.add("n")
        if "--out" in opts:
            assert "-o" in opts["--out"].opts, f"fsg {' '.join(path)}: --out is -o"
        assert "--n-points" not in opts
    assert seen == {"batch", "n"}
    assert API_BATCH_SIZE == BATCH_SIZE == inspect.signature(Model.sample).parameters["batch_size"].default
    by_path = dict(commands())
    for path in RESULT_COMMANDS:
        assert "--json" in options(by_path[path]), f"fsg {' '.join(path)} has no --json"


# ------------------------------------------------------------------------------------------------ --json
def test_json_to_stdout_moves_the_text_to_stderr_and_json_path_writes_a_file(monkeypatch, capsys, tmp_path):
    from fsg.resources import BUNDLED_MODELS

    code, out, err = run(monkeypatch, capsys, "models", "--json", "-")
    assert code == 0 and [m["name"] for m in json.loads(out)["models"]] == list(BUNDLED_MODELS)
    assert "cd_digits" in err
    code, out, err = run(monkeypatch, capsys, "models", "--json", tmp_path / "m.json")
    assert code == 0 and "cd_digits" in out and f"wrote {tmp_path / 'm.json'}" in out
    assert json.loads((tmp_path / "m.json").read_text())["models"][0]["name"] == "cd_digits"
    code, _, err = run(monkeypatch, capsys, "sample", "-n", 2, "--out", tmp_path / "s.npz", "--json", tmp_path / "r.txt")
    assert code == EXIT_USER_ERROR and "--json: expected FILE.json" in err and not (tmp_path / "s.npz").exists()


# ------------------------------------------------------------------------------------------------ shipped things by name
def test_models_and_recipes_are_listed_with_their_descriptions(monkeypatch, capsys, tmp_path):
    import yaml

    monkeypatch.chdir(tmp_path)
    code, out, _ = run(monkeypatch, capsys, "models")
    assert code == 0 and all(name in out for name in ("cd_digits", "edm_digits", "edm_toy"))
    code, out, _ = run(monkeypatch, capsys, "recipe", "list", "--json", "-")
    listed = {r["name"]: r["description"] for r in json.loads(out)["recipes"]}
    files = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert len(listed) == len(files)
    edm_toy = yaml.safe_load((ROOT / "recipes" / "tiny" / "edm_toy.yaml").read_text())["description"]
    assert listed["tiny/edm_toy"] == edm_toy


@pytest.mark.parametrize("args,suggestion", [
    (["recipe", "show", "edm_toy"], "did you mean tiny/edm_toy?"),
    (["train-diffusion", "--recipe", "recipes/tiny/edm_tyo.yaml"], "tiny/edm_toy"),
    (["sample", "--model", "cd_digit", "--grid", "g.png"], "did you mean cd_digits"),
])
def test_a_mistyped_name_gets_the_closest_names(monkeypatch, capsys, tmp_path, args, suggestion):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(monkeypatch, capsys, *args)
    assert code == EXIT_USER_ERROR and suggestion in err and len(err.strip().splitlines()) == 1, err


def test_recipe_show_takes_a_shipped_name_from_any_folder(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(monkeypatch, capsys, "recipe", "show", "tiny/edm_toy")
    assert code == 0 and "toy:moons" in out


def test_bundled_inputs_by_their_readme_paths_from_any_folder(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _out, err = run(monkeypatch, capsys, "edit", "inpaint", "--model", "cd_digits", "--input",
                         "assets/editing/inputs/digits", "--mask", "assets/editing/inputs/mask.png", "--steps", "1",
                         "--out", "inp", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "inp" / "comparison.png").is_file() and len(list((tmp_path / "inp").glob("*.png"))) == 9


# ------------------------------------------------------------------------------------------------ EDM's seeds, ADM's npz
def test_seed_lists_parse_as_edm_writes_them():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("0,5,10-12") == [0, 5, 10, 11, 12]
    assert parse_seeds("7") == [7] and parse_seeds(None) is None
    for bad in ("a-b", "5-2", "-1", "1,1", "0-3,2"):
        with pytest.raises(UserError, match="--seeds"):
            parse_seeds(bad)


def test_npz_is_adms_layout_and_a_sample_depends_only_on_its_seed(monkeypatch, capsys, tmp_path, models):
    code, _, err = run(monkeypatch, capsys, "sample", "--model", models["classes"], "-n", 6, "--batch-size", 4,
                       "--out", tmp_path / "all.npz", "--device", "cpu")
    assert code == 0, err
    with np.load(tmp_path / "all.npz") as npz:
        assert sorted(npz.files) == ["arr_0", "arr_1"]            # guided-diffusion's np.savez(out, arr, label_arr)
        full, labels = npz["arr_0"], npz["arr_1"]
    assert full.dtype == np.uint8 and full.shape == (6, 8, 8, 1)   # NHWC
    assert labels.dtype == np.int64 and labels.shape == (6,) and set(labels) <= {0, 1, 2}
    code, _, err = run(monkeypatch, capsys, "sample", "--model", models["classes"], "--seeds", "2,4-5",
                       "--batch-size", 2, "--out", tmp_path / "some.npz", "--device", "cpu")
    assert code == 0, err
    with np.load(tmp_path / "some.npz") as npz:
        assert np.array_equal(npz["arr_0"], full[[2, 4, 5]]) and np.array_equal(npz["arr_1"], labels[[2, 4, 5]])
    code, _, _ = run(monkeypatch, capsys, "sample", "--model", models["plain"], "-n", 3, "--out", tmp_path / "u.npz",
                     "--device", "cpu")
    with np.load(tmp_path / "u.npz") as npz:
        assert code == 0 and npz.files == ["arr_0"]                 # unconditional: arr_0 alone


def test_old_labels_files_are_still_read(tmp_path):
    from fsg.app.sample import read_samples

    x = np.zeros((2, 4, 4, 3), np.uint8)
    np.savez(tmp_path / "old.npz", arr_0=x, labels=np.array([1, 2]))
    np.savez(tmp_path / "adm.npz", x, np.array([3, 4]))
    assert read_samples(tmp_path / "old.npz")[1].tolist() == [1, 2]
    assert read_samples(tmp_path / "adm.npz")[1].tolist() == [3, 4]


def test_png_folders_are_named_by_seed_with_edms_subdirs(monkeypatch, capsys, tmp_path, models):
    from PIL import Image

    code, _, err = run(monkeypatch, capsys, "sample", "--model", models["plain"], "--seeds", "998-1001", "--subdirs",
                       "--out", tmp_path / "png", "--device", "cpu")
    assert code == 0, err
    names = sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png"))
    assert names == ["000000/000998.png", "000000/000999.png", "001000/001000.png", "001000/001001.png"]
    code, _, _ = run(monkeypatch, capsys, "sample", "--model", models["plain"], "-n", 1000 + 2, "--batch-size", 512,
                     "--out", tmp_path / "all.npz", "--device", "cpu", "--no-progress")
    with np.load(tmp_path / "all.npz") as npz:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "png" / "001000" / "001001.png"))[..., None],
                              npz["arr_0"][1001])


@pytest.mark.slow
def test_torchrun_shards_the_seeds_and_writes_the_files_of_one_process(tmp_path, models):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["sample", "--model", str(models["classes"]), "--seeds", "3-12", "--batch-size", "2", "--device", "cpu",
            "--no-progress"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "fsg", *args, "--out", str(tmp_path / "two.npz"), "--grid", str(tmp_path / "two.png")],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "2 processes" in two.stdout
    one = subprocess.run([sys.executable, "-m", "fsg", *args, "--out", str(tmp_path / "one.npz")], capture_output=True,
                         text=True, env=env, cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    assert (tmp_path / "two.png").is_file()


# ------------------------------------------------------------------------------------------------ fsg sample's checks
@pytest.mark.parametrize("extra,needle", [
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--sigmas", "nan"], "--sigmas: expected finite numbers"),
    (["--sigmas", "80,abc"], "--sigmas: expected comma-separated numbers"),
    (["--timesteps", "0,x"], "--timesteps: expected comma-separated integers"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--class-label", "1"], "is unconditional"),
    (["-n", "0"], "-n must be at least 1"),
    (["-n", "4", "--seeds", "0-3"], "give -n or --seeds, not both"),
    (["--seeds", "5-2"], "--seeds"),
    (["--subdirs"], "--subdirs"),
])
def test_sample_refuses_bad_values_in_one_line(monkeypatch, capsys, tmp_path, models, extra, needle):
    code, _out, err = run(monkeypatch, capsys, "sample", "--model", models["plain"], "--out", tmp_path / "s.npz",
                         *extra, "--device", "cpu")
    assert code == EXIT_USER_ERROR and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s.npz").exists()


def test_a_class_outside_the_models_classes_is_refused(monkeypatch, capsys, tmp_path, models):
    code, _, err = run(monkeypatch, capsys, "sample", "--model", models["classes"], "--class-label", "3", "--out",
                       tmp_path / "s.npz", "--device", "cpu")
    assert code == EXIT_USER_ERROR and "classes 0 to 2" in err


@pytest.mark.parametrize("flag,value,needle", [
    ("--out", "s.txt", "--out: expected FILE.npz or DIR/"),
    ("--grid", "g.jpg", "--grid: expected FILE.png"),
    ("--out", "afile/s.npz", "afile is a file"),
])
def test_output_paths_are_checked_before_sampling_starts(monkeypatch, capsys, tmp_path, models, flag, value, needle):
    (tmp_path / "afile").write_text("mine")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(monkeypatch, capsys, "sample", "--model", models["plain"], flag, value, "--device", "cpu")
    assert code == EXIT_USER_ERROR and needle in err and "sample 0/" not in err, err
    assert (tmp_path / "afile").read_text() == "mine"


def test_stroke_t_start_above_the_largest_noise_level_is_refused(monkeypatch, capsys, tmp_path):
    code, _, err = run(monkeypatch, capsys, "edit", "stroke", "--model", "cd_digits", "--input", "assets/editing/inputs/strokes",
                       "--t-start", "1000", "--out", tmp_path / "st", "--device", "cpu")
    assert code == EXIT_USER_ERROR and "--t-start must lie in" in err and len(err.strip().splitlines()) == 1


def test_interpolate_takes_n_and_checks_its_out(monkeypatch, capsys, tmp_path):
    code, _, err = run(monkeypatch, capsys, "interpolate", "-n", 3, "--out", tmp_path / "i.jpg", "--device", "cpu")
    assert code == EXIT_USER_ERROR and "--out: expected FILE.png" in err
    code, out, err = run(monkeypatch, capsys, "interpolate", "--num", 3, "--out", tmp_path / "i.png", "--json", "-",
                         "--device", "cpu")
    assert code == 0, err
    assert json.loads(out)["n"] == 3 and "3 points" in err


# ------------------------------------------------------------------------------------------------ progress
def test_sample_shows_progress_with_an_eta_off_a_terminal(monkeypatch, capsys, tmp_path, models):
    code, out, err = run(monkeypatch, capsys, "sample", "--model", models["plain"], "-n", 5, "--batch-size", 2,
                         "--out", tmp_path / "s.npz", "--device", "cpu")
    assert code == 0 and "sample 5/5 (100%)" in err and "ETA" in err and "nfe 1" in err
    code, out, err = run(monkeypatch, capsys, "sample", "--model", models["plain"], "-n", 5, "--out",
                         tmp_path / "t.npz", "--no-progress", "--json", "-", "--device", "cpu")
    assert code == 0 and "ETA" not in err and json.loads(out)["nfe"] == 1 and "5 samples" in err


# ------------------------------------------------------------------------------------------------ toy metrics
def _moons(n, seed):
    from fsg.data import sample_toy

    return sample_toy("moons", n, torch.Generator().manual_seed(seed))


def test_eval_toy_is_zero_on_the_reference_and_half_a_shift_length_off_it(monkeypatch, capsys, tmp_path):
    """Identities of the sliced W2 to the fresh reference points (seed 123): the points themselves are at 0; shifted
    by c, every 1-D projection moves by theta.c, so SW2^2 = E[(theta.c)^2] = |c|^2 / 2 for random unit theta in 2-D
    (128 directions: within 20%)."""
    from fsg.eval.quality import TOY_REF_SEED

    ref = _moons(5000, TOY_REF_SEED).numpy()
    shift = np.array([0.6, -0.8], np.float32)                                # |c| = 1
    np.savez(tmp_path / "same.npz", ref)
    np.savez(tmp_path / "shifted.npz", ref + shift)
    code, out, err = run(monkeypatch, capsys, "eval-toy", "--samples", tmp_path / "same.npz", "--ref", "toy:moons",
                         "--json", "-")
    assert code == 0, err
    assert json.loads(out)["sw"] < 1e-9 and "sliced W2" in err
    code, out, err = run(monkeypatch, capsys, "eval-toy", "--samples", tmp_path / "shifted.npz", "--ref", "moons",
                         "--json", "-")
    assert code == 0 and abs(json.loads(out)["sw"] - 1 / math.sqrt(2)) < 0.2 / math.sqrt(2)


def test_eval_toy_samples_a_model_and_refuses_what_it_cannot_score(monkeypatch, capsys, tmp_path):
    code, out, err = run(monkeypatch, capsys, "eval-toy", "--model", "edm_toy", "--steps", 2, "-n", 200, "--json", "-",
                         "--device", "cpu", "--no-progress")
    result = json.loads(out)
    assert code == 0 and result["nfe"] == 3 and result["ref"] == "toy:moons" and math.isfinite(result["sw"])
    code, _, err = run(monkeypatch, capsys, "eval-toy", "--samples", tmp_path / "none.npz", "--ref", "toy:moons")
    assert code == EXIT_USER_ERROR and "--samples" in err
    code, _, err = run(monkeypatch, capsys, "eval-fid", "--ref", "toy:moons", "--samples", tmp_path / "s.npz")
    assert code == EXIT_USER_ERROR and "fsg eval-toy" in err
    np.savez(tmp_path / "img.npz", np.zeros((3, 4, 4, 1), np.uint8))
    code, _, err = run(monkeypatch, capsys, "eval-toy", "--samples", tmp_path / "img.npz", "--ref", "toy:moons")
    assert code == EXIT_USER_ERROR and "2-D points" in err


def test_the_registry_lists_the_new_commands():
    assert {"models", "eval-toy"} <= set(COMMANDS)
