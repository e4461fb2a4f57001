"""Where fsg finds the files it ships beside the code: the bundled models and features of `assets/` and the
recipes of `recipes/`. A source checkout (`pip install -e .`) reads them in place, at the repository's top
level; a wheel carries copies under `fsg/_bundle/` (setup.py's build step)."""

from __future__ import annotations

from pathlib import Path

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
