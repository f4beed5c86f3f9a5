"""Experiment recipes: one YAML file per experiment of the paper (and the offline benchmark).

A recipe names the dataset, the models and the paper's hyperparameters. Its
``options:`` mapping uses exactly the option names of :mod:`hf_grasp.plan.options`
(shared options such as ``target_domain`` or ``lr``, and method parameters such
as ``tau``), so it is one more options layer: engine defaults < recipe < what
the user sets; a method parameter the running method does not take is ignored.
Every other top-level key (``dataset``, ``domains``, ``models``, ``image_size``,
``normalisation``, ``prepare``, ...) is documentation kept in :attr:`Recipe.meta`.

The built-in recipes live in ``recipes/`` at the repository root; an editable
install (what the README and CI use) finds them there. A wheel ships them as data
files (``share/hf-grasp/recipes``), which land wherever that install puts data
(``<prefix>``, the user base of a ``--user`` install, or the wheel's ``.data``
folder when an exported Space carries the wheel unpacked): the installed
distribution's own file list says where.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..runtime.errors import DataError, GraspError, first_line, flag
from ..plan.options import Layer, Registry, check_layer

BUILTIN_RECIPES = {
    "yearbook": "yearbook.yaml",
    "clear10": "clear10.yaml",
    "clear100": "clear100.yaml",
    "digits-eras": "digits-eras.yaml",
    "tweet-eras": "tweet-eras.yaml",
}

#: the repository's recipes/ (an editable install, a source checkout)
SOURCE_RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def recipe_dirs() -> list[Path]:
    """Where the built-in recipes may be: the repository's recipes/, then where the installed distribution's
    file list (its RECORD) put them."""
    dirs = [SOURCE_RECIPES]
    try:
        dist = importlib.metadata.distribution("hf-grasp")
    except importlib.metadata.PackageNotFoundError:
        return dirs
    for file in dist.files or ():
        if file.name in BUILTIN_RECIPES.values() and "recipes" in file.parts:
            located = Path(dist.locate_file(file)).parent
            if located not in dirs:
                dirs.append(located)
    return dirs

@dataclass
class Recipe:
    """A loaded recipe: ``options`` is an options layer, ``meta`` everything else in the file."""

    name: str
    path: Path
    dataset: str
    options: dict[str, Any]
    models: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prepare(self) -> str | None:
        """The ``hf-grasp prepare ...`` command that makes :attr:`dataset`, if it has to be made."""
        return self.meta.get("prepare")


def recipe_path(name_or_path: str) -> Path:
    """The YAML file of a built-in recipe name, or ``name_or_path`` itself."""
    if name_or_path in BUILTIN_RECIPES:
        dirs = recipe_dirs()
        for directory in dirs:
            candidate = directory / BUILTIN_RECIPES[name_or_path]
            if candidate.is_file():
                return candidate
        raise GraspError(f"built-in recipe {name_or_path!r}: {BUILTIN_RECIPES[name_or_path]} not found in "
                         f"{' or '.join(map(str, dirs))} (reinstall hf-grasp: its wheel ships the recipes)")
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise GraspError(f"recipe {name_or_path!r} is neither a built-in ({', '.join(BUILTIN_RECIPES)}) "
                         "nor a YAML file")
    return path


def load_recipe(name_or_path: str, *, methods: Registry) -> Recipe:
    """Load a built-in recipe by name (``yearbook``, ``clear10``, ``clear100``, ``digits-eras``, ``tweet-eras``) or a YAML file.

    ``methods``: the method registry (``hf_grasp.methods.METHODS``) its options are checked against.

    Raises :class:`GraspError` naming the file for invalid YAML, a missing
    ``dataset``, an ``options`` key that is no option, or an option value of the
    wrong type or outside its range.
    """
    path = recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except RecursionError:  # the YAML composer nests by recursion: thousands of brackets exhaust the stack
        raise GraspError(f"recipe {path} is not valid YAML: nested too deeply") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GraspError(f"recipe {path} cannot be read: {first_line(e)}") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1})" if where is not None else ""
        # problem is the one-line reason; a ReaderError (a control character, say) has none, only a
        # multi-line str: keep its first line
        reason = getattr(e, "problem", None) or first_line(e)
        raise GraspError(f"recipe {path} is not valid YAML{at}: {reason}") from None
    if not isinstance(data, dict):
        raise GraspError(f"recipe {path} must be a YAML mapping at the top level")
    data = dict(data)
    dataset = data.pop("dataset", None)
    if not isinstance(dataset, str) or not dataset:
        raise GraspError(f"recipe {path} has no 'dataset' (a Hub dataset id, local path or built-in name)")
    options = data.pop("options", None) or {}
    if not isinstance(options, dict):
        raise GraspError(f"recipe {path}: 'options' must be a mapping of option names to values")
    options = check_layer(Layer(options, f"recipe {path}"), methods)
    models = data.pop("models", None) or []
    if isinstance(models, str) or not isinstance(models, list):
        models = [models]
    if not all(isinstance(m, str) and m for m in models):
        raise GraspError(f"recipe {path}: 'models' must list model references (text)")
    name = name_or_path if name_or_path in BUILTIN_RECIPES else path.stem
    return Recipe(name=name, path=path, dataset=dataset, options=options, models=list(models), meta=data)


def resolve_target(target: str | None, recipe: str | None, *, methods: Registry) -> tuple[str, dict[str, Any]]:
    """The dataset to load and the recipe's options layer for ``--target`` / ``--recipe``.

    - ``target`` a built-in recipe name (``yearbook``, ...): that recipe's dataset and options
      (``recipe``, when also given, supplies the options instead).
    - ``target`` anything else: returned unchanged, with ``recipe``'s options or ``{}``.
    - ``target`` None: ``recipe``'s dataset and options.

    Pass the dataset to :func:`hf_grasp.inputs.data.load_target` and put the options layer
    under the user's options (``hf_grasp.plan.options.resolve``).
    A recipe dataset that is a Hub id neither in the local datasets cache
    (offline) nor on the Hub raises :class:`DataError` naming the dataset and the
    ``hf-grasp prepare`` command that makes it.
    """
    named = target if target in BUILTIN_RECIPES else None
    chosen = recipe or named
    if chosen is None:
        if target is None:
            raise GraspError(f"no target: pass {flag('target', None)} (a dataset) or {flag('recipe', None)} (an "
                             f"experiment recipe)")
        return target, {}
    rec = load_recipe(chosen, methods=methods)
    if target is not None and named is None:
        return target, dict(rec.options)  # the user's own copy of the data, the recipe's settings
    source = rec if named in (None, chosen) else load_recipe(named, methods=methods)
    _require_available(source)
    return source.dataset, dict(rec.options)


def _require_available(rec: Recipe) -> None:
    """Fail early, with the command that makes it, when a recipe's Hub dataset cannot be loaded."""
    import datasets

    from .data import builtin_dataset

    dataset = rec.dataset
    if builtin_dataset(dataset) is not None or Path(dataset).expanduser().exists():
        return
    make = f"make it with: {rec.prepare} (then --target DIR --recipe {rec.name})" if rec.prepare else ""
    try:
        # datasets' own resolution: offline it answers from the local cache only.
        datasets.load_dataset_builder(dataset)
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
        if datasets.config.HF_HUB_OFFLINE:
            raise DataError(f"dataset {dataset} is not available offline; {make or 'it is not in the local cache'}"
                            ) from None
        reason = first_line(e)
        raise DataError(f"dataset {dataset} could not be loaded ({reason}); {make or 'check the dataset id'}"
                        ) from None
