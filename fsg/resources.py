"""Where fsg finds the files it ships beside the code: the bundled models and features of `assets/` and the
recipes of `recipes/`. A source checkout (`pip install -e .`) reads them in place, at the repository's top
level; a wheel carries copies under `fsg/_bundle/` (setup.py's build step)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Iterable

SOURCE_ROOT = Path(__file__).resolve().parent.parent      # the repository, in a source checkout
BUNDLE = Path(__file__).resolve().parent / "_bundle"       # the copies inside an installed wheel


def shipped(*parts: str) -> Path:
    """The shipped file or folder `parts` (e.g. "assets", "cd_digits"): the wheel's copy in an installed wheel,
    else the source checkout's; when neither exists, the source-checkout path (for the caller's error message).
    The wheel's copy comes first: beside an installed package, SOURCE_ROOT is site-packages, where another
    distribution's top-level `assets/` could sit."""
    for base in (BUNDLE, SOURCE_ROOT):
        path = base.joinpath(*parts)
        if path.exists():
            return path
    return SOURCE_ROOT.joinpath(*parts)


def find_recipe(path: str | Path) -> Path:
    """A recipe path as given if it exists; otherwise the shipped recipe of that name, so that
    `recipes/tiny/edm_toy.yaml`, `tiny/edm_toy.yaml` and `tiny/edm_toy` work from any folder."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    parts = given.parts[1:] if given.parts[:1] == ("recipes",) else given.parts
    if not parts:
        return given
    for name in (Path(*parts), Path(*parts).with_suffix(".yaml")):
        candidate = shipped("recipes", *name.parts)
        if candidate.is_file():
            return candidate
    return given


BUNDLED_MODELS = {      # name -> what it is (the folders of assets/ holding a model.safetensors)
    "cd_digits": "consistency model of 16x16 digits, distilled from edm_digits (1-4 steps)",
    "edm_digits": "EDM teacher of 16x16 digits (Heun, 35 NFE)",
    "edm_toy": "EDM teacher of the 2-D two-moons toy",
}


def bundled_model(name: str | Path) -> Path | None:
    """The model folder of a bundled model name (`cd_digits`, also `assets/cd_digits`) when no file or folder of
    that name exists here; None otherwise."""
    given = Path(name)
    if given.exists():
        return None
    parts = given.parts[1:] if given.parts[:1] == ("assets",) else given.parts
    if len(parts) == 1 and parts[0] in BUNDLED_MODELS:
        return shipped("assets", parts[0])
    return None


def find_shipped(path: str | Path) -> Path:
    """A path as given if it exists; else the shipped copy of `assets/...` or `recipes/...` (the README's commands,
    after a wheel install, in any folder); else the path as given (for the caller's error message)."""
    given = Path(path)
    if given.exists() or given.is_absolute() or given.parts[:1] not in (("assets",), ("recipes",)):
        return given
    candidate = shipped(*given.parts)
    return candidate if candidate.exists() else given


def shipped_recipes() -> dict[str, Path]:
    """Every shipped recipe by name (`tiny/edm_toy`, `edm_cifar10`), sorted by name."""
    root = shipped("recipes")
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def list_recipes() -> dict[str, str]:
    """The shipped recipes by name with their `description:` line (what `fsg recipe list` prints)."""
    import yaml

    out = {}
    for name, path in shipped_recipes().items():
        data = yaml.safe_load(path.read_text())
        out[name] = " ".join(str(data.get("description", "")).split()) if isinstance(data, dict) else ""
    return out


def closest_names(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The names of `choices` a mistyped `name` most likely meant: those ending in its last part first
    (`edm_toy` -> `tiny/edm_toy`), then difflib's closest matches (`tiny/edm_tyo` -> `tiny/edm_toy`)."""
    choices = list(choices)
    tail = name.rsplit("/", 1)[-1]
    same_tail = [c for c in choices if c.rsplit("/", 1)[-1] == tail and c != name]
    if same_tail:
        return same_tail[:n]
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.6)
    close_tail = [c for c in choices if difflib.SequenceMatcher(None, tail, c.rsplit("/", 1)[-1]).ratio() >= 0.8]
    return list(dict.fromkeys([*close, *close_tail]))[:n]


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean a or b?)' for the closest of `choices`, '' when none is close."""
    names = closest_names(name, choices)
    return f" (did you mean {' or '.join(names)}?)" if names else ""


def recipe_hint(path: str | Path) -> str:
    """The closest shipped recipe names to a recipe that was not found, as ' (did you mean ...?)'; the
    list of names when none is close."""
    parts = Path(path).with_suffix("").parts if Path(path).suffix == ".yaml" else Path(path).parts
    name = "/".join(parts[1:] if parts[:1] == ("recipes",) else parts)
    hint = did_you_mean(name, shipped_recipes())
    return hint or " (`fsg recipe list` names the shipped recipes)"


MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".pkl")


def model_hint(path: str | Path) -> str:
    """' (did you mean ...?)' for a model that was not found: the closest bundled model names and the closest
    models (folders holding model.safetensors, model files) beside the path; the bundled names when none is
    close."""
    given = Path(path)
    beside = {}
    if given.parent.is_dir():
        for entry in sorted(given.parent.iterdir()):
            if (entry.is_dir() and (entry / "model.safetensors").is_file()) or entry.suffix in MODEL_SUFFIXES:
                beside[entry.name] = str(given.parent / entry.name) if given.parent != Path(".") else entry.name
    names = closest_names(given.name, [*BUNDLED_MODELS, *beside])
    if names:
        return f" (did you mean {' or '.join(beside.get(n, n) for n in names)}?)"
    return f" (bundled models: {', '.join(BUNDLED_MODELS)}; `fsg models` describes them)"
