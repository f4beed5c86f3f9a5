"""The merge plan: what a merge will do, decided before anything heavy runs; ``grasp_config.json`` is its file.

:meth:`MergePlan.build` resolves the option layers (a recipe's, an earlier
merge's, a saved merge's, the caller's) for one method, given its registry entry
(a :class:`~hf_grasp.methods.registry.MethodInfo` passed in: this stage never
imports the methods), and refuses there, in one place, every combination of
options and the method's abilities that cannot run (``init=first`` with one
source, ``--evict-sources`` with a method that reads every source at once, a
method on task vectors without ``--base``). The rules that need facts of the run
take them as arguments: :meth:`~MergePlan.check_launch` (the process count),
:meth:`~MergePlan.check_resume`, :meth:`~MergePlan.can_continue` (the method of
the merge ``--init`` names); :attr:`~MergePlan.keeps_checkpoint` and
:attr:`~MergePlan.recalibrates_bn` answer the engine's questions.

Saved beside the model (``grasp_config.json``, :meth:`~MergePlan.save`), the plan
carries the method and every parameter, every shared option (seed included), the
target, and each input pinned (a Hub source as ``org/name@<commit>``, a local one
as the user gave it: the file is published with the model, so it names no path of
this machine that the user did not write). From it
``GraspMerger.from_pretrained("org/merged")`` (``hf-grasp merge --from``)
rebuilds a merger that makes the same model, ``--init org/merged`` continues the
merge with more sources, and ``--resume`` checks that it continues the same run.
Torch-free: the CLI reads it before anything heavy is imported.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..runtime.errors import GraspError, first_line, flag
from .options import Layer, MergeOptions, MethodParams, Registry, _leaf_types, flag_name, resolve

if TYPE_CHECKING:
    from ..methods.registry import MethodInfo

SCHEMA_VERSION = 1

#: options of an earlier merge that a continuation does not inherit: they describe how that merge started
NOT_INHERITED = ("init", "order", "base", "initial_epochs")
#: options added after merges were already saved, with the value those merges ran with (not today's default)
ADDED_OPTIONS = {"schedule_per": "step"}
#: the fields ``grasp_config.json`` holds
SAVED = ("method", "sources", "target", "recipe", "options", "params", "version", "schema", "continues")
#: JSON has no infinity: a non-finite number is saved as this text (τ = ±inf are meaningful)
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}
#: options that widen what runs (remote code) or what is read (pickle files): only the caller grants them, never
#: a file (a saved merge --from rebuilds, an earlier merge --init continues, a recipe one of them names)
PERMISSIONS = ("trust_remote_code", "allow_pickle")


@dataclass
class MergePlan:
    """One merge: the method and its abilities, the inputs, every option; enough to run it again
    (``GraspMerger.from_pretrained(**plan.arguments())``).

    A plan :meth:`build` made for a run also holds the method's registry entry
    (``info``) and the options and parameters as resolved (``merge_options``,
    ``method_params``); a plan read from a file (:meth:`load`) holds what the file
    says, ``options`` and ``params`` as saved.
    """

    method: str
    sources: list[str]            # pinned, in the order given (``options["order"]`` applies to them)
    target: str | None            # a recipe name, a dataset id, or a local path as given
    recipe: str | None
    options: dict[str, Any]       # every shared option as run; ``init`` and ``base`` pinned
    params: dict[str, Any]        # the method's own parameters
    version: str = ""
    schema: int = SCHEMA_VERSION
    continues: str | None = None  # pinned reference of the earlier merge this one continued
    # known to a built plan only, never saved
    info: MethodInfo | None = field(default=None, repr=False, compare=False)
    merge_options: MergeOptions | None = field(default=None, repr=False, compare=False)
    method_params: MethodParams | None = field(default=None, repr=False, compare=False)
    resumable: tuple[str, ...] = field(default=(), repr=False, compare=False)  # the registry's sequential methods

    # ----------------------------------------------------------------------- building, and the rules

    @classmethod
    def build(cls, info: MethodInfo, layers: Sequence[Layer], *, methods: Registry, sources: Sequence[str],
              target: str | None = None, recipe: str | None = None) -> "MergePlan":
        """The plan of method ``info`` on ``sources`` from option ``layers`` (later layers win), ``methods``
        the registry (another method's parameter is named as such); :class:`GraspError` for an invalid option
        or a combination the method cannot run."""
        from hf_grasp import __version__

        registry = {**methods, info.name: info}
        options, params = resolve(info.name, layers, methods=registry)
        plan = cls(info.name, list(sources), target, recipe, options.to_dict(), params.to_dict(),
                   version=__version__, info=info, merge_options=options, method_params=params,
                   resumable=tuple(sorted(name for name, m in registry.items() if m.sequential)))
        plan._check()
        return plan

    def _check(self) -> None:
        """The rules that need nothing but the options and the method's abilities."""
        info, o = self._built()
        if o.order not in ("given", "reverse", "random") and sorted(map(int, o.order.split(","))) != list(
                range(len(self.sources))):  # its form is checked where the option is declared
            raise GraspError(f"{flag('order', o.order)}: must be a permutation of 0..{len(self.sources) - 1}, "
                             f"one index per source")
        if o.init == "first" and len(self.sources) < 2:
            raise GraspError(f"{info.label} with init=first needs at least 2 sources")
        if o.evict_sources and info.reads_across_sources:
            raise GraspError(f"{flag('evict_sources')}: method {info.name!r} reads one tensor of every source at "
                             "a time, so all sources must be on disk together")
        if info.needs_base and not o.base:
            raise GraspError(f"method {info.name!r} works on task vectors: pass {flag('base', None)} with the "
                             "sources' shared starting point")

    def check_launch(self, num_processes: int) -> None:
        """Refuse a launch on ``num_processes`` processes that would not make the merge one process makes."""
        info, o = self._built()
        n = num_processes
        if n > 1 and not info.multi_process:
            raise GraspError(f"method {info.name!r} cannot run on {n} processes yet (its result would differ from "
                             "one process's); launch it as a single process")
        if o.batch_size % n:
            raise GraspError(f"{flag('batch_size', None)} {o.batch_size}: each batch is split between the {n} "
                             f"processes, so it must be a multiple of {n}")

    def check_resume(self) -> None:
        """Refuse ``--resume`` for a method that keeps no state after its steps."""
        info, _ = self._built()
        if not info.sequential:
            raise GraspError(f"{flag('resume')}: method {info.name!r} does not checkpoint its steps; only "
                             f"{', '.join(self.resumable)} can be resumed")

    @property
    def keeps_checkpoint(self) -> bool:
        """Whether the merge saves its state after every step (a sequential method), so ``--resume`` can go on."""
        return bool(self._built()[0].sequential)

    @property
    def recalibrates_bn(self) -> bool:
        """Whether BatchNorm statistics are re-estimated after the merge: ``--recalibrate-bn`` and a method whose
        result is one model of merged parameters."""
        info, o = self._built()
        return bool(o.recalibrate_bn and info.parameter_space)

    @staticmethod
    def can_continue(info: MethodInfo, earlier: MethodInfo | None = None) -> bool:
        """Whether method ``info`` continues an earlier merge of method ``earlier`` that ``--init`` names (both
        sequential: one step per new source); with ``earlier`` unknown yet, whether it may continue any (else
        ``--init`` is only the initial model, and no saved merge needs to be read)."""
        return bool(info.sequential and (earlier is None or earlier.sequential))

    def _built(self) -> tuple[MethodInfo, MergeOptions]:
        if self.info is None or self.merge_options is None:
            raise GraspError(f"the plan of method {self.method!r} was read from a file, not built for a run: "
                             "MergePlan.build makes one")
        return self.info, self.merge_options

    # ----------------------------------------------------------------------- what a saved merge gives

    def pinned(self, pins: Mapping[str, str], *, init: str | None = None, base: str | None = None,
               continues: str | None = None) -> "MergePlan":
        """This plan as saved: each source reference replaced by its pin in ``pins`` (those it lacks kept as
        given), ``init`` and ``base`` set to the pinned references when given, and what it ``continues``."""
        options = {**self.options, **{k: v for k, v in (("init", init), ("base", base)) if v is not None}}
        return dataclasses.replace(self, sources=[pins.get(r, r) for r in self.sources], options=options,
                                   continues=continues)

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``GraspMerger.from_pretrained`` that rebuild this merge."""
        return {"sources": list(self.sources), "target": self.target, "recipe": self.recipe,
                "method": self.method, **self.options, **self.params}

    def inherited(self) -> dict[str, Any]:
        """The options and parameters a continuation of this merge starts from (its user's flags win); never a
        permission (:data:`PERMISSIONS`: :func:`withheld` says which it held)."""
        return {k: v for k, v in {**self.options, **self.params}.items()
                if k not in NOT_INHERITED and k not in PERMISSIONS}

    def differences(self, other: "MergePlan", mine: str = "now", theirs: str = "before") -> list[str]:
        """What differs from ``other``, one phrase per difference (``option lr is 0.01 now, 0.001 before``);
        [] when both describe the same merge."""
        pairs = [(name, getattr(self, name), getattr(other, name))
                 for name in ("method", "target", "recipe", "sources")]
        for group in ("options", "params"):
            a, b = getattr(self, group), getattr(other, group)
            pairs += [(f"option {key}", a.get(key), b.get(key)) for key in sorted(set(a) | set(b))]
        # a tuple option (ta_grid) is a list once read back from JSON: the same value
        return [f"{name} is {_show(x)} {mine}, {_show(y)} {theirs}" for name, x, y in pairs
                if _plain(x) != _plain(y)]

    # ----------------------------------------------------------------------- grasp_config.json

    def to_dict(self) -> dict[str, Any]:
        """The JSON object ``grasp_config.json`` holds (a non-finite number as the text ``"inf"``, ``"-inf"``)."""
        data = {name: copy.deepcopy(getattr(self, name)) for name in SAVED}
        data["options"], data["params"] = _encoded(self.options), _encoded(self.params)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "merge config") -> "MergePlan":
        """The plan ``to_dict`` wrote; :class:`GraspError` naming ``where`` and the field if malformed."""
        try:
            plan = cls(**{k: v for k, v in data.items() if k in SAVED})
        except TypeError as e:
            raise GraspError(f"{where}: not an hf-grasp merge configuration ({e})") from None
        # bool is an int to Python, not a schema number
        if type(plan.schema) is not int or plan.schema < 1:
            raise GraspError(f"{where}: field 'schema' must be a whole number from 1 (this hf-grasp writes "
                             f"{SCHEMA_VERSION}), not {_show(plan.schema)}")
        if plan.schema > SCHEMA_VERSION:
            raise GraspError(f"{where}: schema {plan.schema} is newer than this hf-grasp's ({SCHEMA_VERSION}): a newer "
                             "hf-grasp wrote it; upgrade hf-grasp to read it")
        shapes = {"method": (str,), "sources": (list,), "options": (dict,), "params": (dict,), "version": (str,),
                  "target": (str, type(None)), "recipe": (str, type(None)), "continues": (str, type(None))}
        for name, kinds in shapes.items():
            if not isinstance(getattr(plan, name), kinds):
                raise GraspError(f"{where}: field {name!r} must be {' or '.join(_KIND_NAMES[k] for k in kinds)}, "
                                 f"not {type(getattr(plan, name)).__name__}")
        if not all(isinstance(s, str) for s in plan.sources):
            raise GraspError(f"{where}: field 'sources' must list references (text)")
        # a merge saved before an option existed ran as that option's old behaviour, which rebuilding must keep
        plan.options = _decoded({**ADDED_OPTIONS, **plan.options}, MergeOptions)
        plan.params = _decoded(plan.params)
        return plan

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``grasp_config.json`` to ``path`` (atomically); returns the path."""
        from ..runtime.workspace import write_json

        return write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MergePlan":
        """The plan ``grasp_config.json`` at ``path`` holds (:meth:`from_dict`); :class:`GraspError` naming the
        file when it cannot be read or is not one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except RecursionError:  # json nests by recursion: thousands of brackets exhaust the stack
            raise GraspError(f"{path}: not an hf-grasp merge configuration (nested too deeply)") from None
        except (OSError, ValueError) as e:
            raise GraspError(f"{path}: cannot read the merge configuration ({first_line(e)})") from None
        if not isinstance(data, dict):
            raise GraspError(f"{path}: not an hf-grasp merge configuration (not a JSON object)")
        return cls.from_dict(data, where=str(path))


def withheld(values: Mapping[str, Any], where: str, granted: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``values`` read from a file (``where``: a saved merge's ``grasp_config.json``, a recipe it names) without
    any of the :data:`PERMISSIONS`, and the one warning line naming the file and the flags to pass when it turned
    on one that the caller's own arguments ``granted`` do not set (None: nothing to say)."""
    asked = [name for name in PERMISSIONS if values.get(name) not in (None, False) and granted.get(name) is None]
    kept = {k: v for k, v in values.items() if k not in PERMISSIONS}
    if not asked:
        return kept, None
    return kept, (f"{where} sets {', '.join(f'{n}={values[n]!r}' for n in asked)}: ignored, only your own "
                  f"arguments grant that; pass {' '.join(flag_name(n) for n in asked)} (in Python: "
                  f"{', '.join(f'{n}=True' for n in asked)}) to allow it")


_KIND_NAMES = {str: "text", list: "a list", dict: "an object", type(None): "null"}


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it (a tuple as a list, recursively)."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def _encoded(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each non-finite float as its text (strict JSON has no infinity, and ``null`` would rerun
    the merge with the default)."""
    def one(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else "inf" if v > 0 else "-inf"
        return [one(x) for x in v] if isinstance(v, (list, tuple)) else v

    return {k: one(v) for k, v in values.items()}


def _decoded(values: dict[str, Any], model: type | None = None) -> dict[str, Any]:
    """``values`` with the texts :func:`_encoded` wrote back as floats; with ``model``, only for its options
    that take a number (a text option may well be ``"inf"``)."""
    def takes_float(name: str) -> bool:
        declared = model.model_fields.get(name) if model is not None else None
        return model is None or (declared is not None and float in _leaf_types(declared.annotation))

    return {k: _NON_FINITE[v] if isinstance(v, str) and v in _NON_FINITE and takes_float(k) else v
            for k, v in values.items()}


def pinned_reference(ref_text: str, repo_id: str | None, commit: str | None) -> str:
    """A reference that names exactly these files: ``org/name@<commit>`` (keeping ``hf-hub:``); a local folder
    as the user named it (never its absolute path, which would publish this machine's directories)."""
    if repo_id and commit:
        prefix = "hf-hub:" if ref_text.strip().startswith("hf-hub:") else ""
        return f"{prefix}{repo_id}@{commit}"
    return ref_text
