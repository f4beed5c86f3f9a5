"""The structured report of a merge: typed, built in one place, saved as JSON.

:func:`build_report` turns what a merge method recorded into a
:class:`MergeReport`; the model card (:mod:`hf_grasp.output.card`), the terminal
summary (:mod:`hf_grasp.output.summary`), the heatmap (:mod:`hf_grasp.output.heatmap`) and
the bench all read that object, and ``grasp_report.json`` is its
:meth:`MergeReport.to_dict`. Metrics stay plain dicts of numbers
(``{"accuracy", "loss", "n"}``) as the metric computes them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..engine.records import Numbered, StepKind
from ..runtime.workspace import write_json  # noqa: F401 (the report's writer, importable from here)
from ..plan.licenses import License, LicenseDecision

if TYPE_CHECKING:
    from ..engine.context import MergeContext
    from ..methods.registry import MethodInfo
    from ..runtime.timing import RunClock

Metrics = dict[str, Any]  # {"accuracy": float, "loss": float, "n": int}
# 4: phases; 5: wall time, no local paths; 6: typed steps (kind, number, phases, details: no top-level extras),
# a ±inf method parameter written as "inf"/"-inf"
SCHEMA_VERSION = 7  # 7: the target's modality and example text


@dataclass
class SourceRecord:
    """One input checkpoint: where it came from and what the merge did with it.

    ``path`` is where its files were read on this machine (a cache snapshot, a
    folder): kept in memory for the checks of the run that made the report
    (the output must not overlap a source), never written out; reports saved
    before that carry it and still load.
    """

    ref: str                                       # as the user gave it
    path: str | None = field(default=None, compare=False)  # this machine's copy: in memory only
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None                      # None for a local directory
    files: dict[str, str] = field(default_factory=dict)  # weight file -> sha256
    role: str = "source"                           # "init" | "source" | "base"
    scores: dict[str, float | None] | None = None  # tensor -> mean alignment score (GRASP)
    transferred: dict[str, float] | None = None    # tensor -> fraction of its entries transferred (GRASP)
    skipped: list[str] = field(default_factory=list)  # head tensors not read from it
    metrics_alone: Metrics | None = None           # the source alone on the target test split
    metrics_after: dict[str, Metrics] | None = None  # {"validation", "test"} after its step
    history: list[dict] | None = None              # fine-tuning epochs of its step
    seconds: float | None = None
    license: License | None = None                 # as its own model card states it (None: states none)
    # its labels against the target's, by name (hf_grasp.inputs.labels): "as the target", "permuted" (its head rows
    # reordered into the target's order), "positional" (no names to match), "left out" (its head not read)
    label_order: str | None = None

    def __post_init__(self):
        self.license = _license(self.license)

    @property
    def fraction_transferred(self) -> float | None:
        """Mean fraction of the tensors transferred from this source (None when nothing was scored)."""
        return sum(self.transferred.values()) / len(self.transferred) if self.transferred else None

    @property
    def is_hub(self) -> bool:
        return self.commit is not None and self.repo_id is not None


@dataclass
class StepRecord(Numbered):
    """One step of the method (``init``, ``source 2``, ``merge``, ``fine-tune``, ...) and the accuracy after it.

    ``kind`` and ``number`` say what the step was (:class:`~hf_grasp.engine.records.StepKind`; the number is the
    source's position for a per-source kind); :attr:`label` is its text. ``phases``: wall seconds per phase spent
    in it; ``details``: what only its method records (PEARL's composition, sequential TA's λ, ...).
    """

    kind: StepKind
    number: int | None
    ref: str | None
    val_accuracy: float | None
    test_accuracy: float | None
    seconds: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.kind = StepKind(self.kind)  # as read back from JSON


@dataclass
class TargetRecord:
    name: str
    domain: Any = None
    num_labels: int | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    label_names: list[str] | None = None  # the class names by index (ClassLabel), which the merged model carries
    modality: str = "image"  # what the models classify: "image" or "text" (schema 7)
    example: str | None = None  # a text target's first test text: the card's widget example (schema 7)


@dataclass
class MethodRecord:
    """The method that ran, as the card cites it, with the parameters it ran with."""

    name: str
    pretty_name: str
    label: str
    description: str = ""
    paper: str | None = None
    is_grasp: bool = False
    parameter_space: bool = True
    params: dict[str, Any] = field(default_factory=dict)

    def number(self, name: str) -> float | None:
        """Parameter ``name`` as a float (None when absent or not a number), whether it is held as a number or as
        the ``"inf"``/``"-inf"`` text ``grasp_report.json`` writes for an infinite value (no-align's τ)."""
        value = self.params.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return float(value) if value in _INFINITE else None


_INFINITE = ("inf", "-inf")


@dataclass
class MemoryRecord:
    peak_rss_bytes: int
    param_bytes: int
    result_param_bytes: int  # what the saved result holds at inference (an ensemble serves K models)


@dataclass
class MergeReport:
    """Everything a merge decided and measured."""

    method: MethodRecord
    options: dict[str, Any]                   # the shared options (MergeOptions), as run
    target: TargetRecord
    family: str
    architecture: str
    sources: list[SourceRecord]               # every input, in merge order
    steps: list[StepRecord]
    final: dict[str, Metrics]                 # {"validation": ..., "test": ...} of the result
    epochs_trained: int
    seconds: float
    memory: MemoryRecord
    base: SourceRecord | None = None
    continued_from: SourceRecord | None = None  # the earlier merge this one continued (its sources, steps lead)
    notes: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds per phase (hf_grasp.runtime.timing)
    # the whole run's wall time since ``wall_since``, to the end of the merge and, once saved, to its files written
    # (``seconds`` is the merge engine's part of it)
    wall_seconds: float | None = None
    wall_since: str | None = None             # "the process started" (CLI) | "from_pretrained was called" (API)
    license: License | None = None            # the merged model's, as its card states it (None: none)
    license_origin: str | None = None         # "given" (--license) | "sources" (every input's card states it)
    version: str = ""
    schema: int = SCHEMA_VERSION

    @property
    def baselines(self) -> dict[str, Metrics]:
        """Each source alone on the target test split, by reference (when the sources were evaluated)."""
        return {s.ref: s.metrics_alone for s in self.sources if s.metrics_alone}

    @property
    def extras(self) -> list[dict]:
        """The method-specific data of each step that has some (PEARL's composition, ...), as ``{"step": label,
        **details}``: derived from the steps' ``details``, which is what the JSON holds since schema 6."""
        return [{"step": s.label, **s.details} for s in self.steps if s.details]

    def test_accuracy(self) -> float | None:
        return (self.final.get("test") or {}).get("accuracy")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, with the derived ``fraction_transferred`` of each source written out.

        Nothing of this machine: the sources' local paths (:attr:`SourceRecord.path`) are left out, since a
        report is published with the model; the references and commits name the inputs.
        """
        out = dataclasses.asdict(self)
        # "step" (the label) first, for the JSON readers that only know it
        out["steps"] = [{"step": s.label, **rec, "kind": s.kind.value} for rec, s in zip(out["steps"], self.steps)]
        # strict JSON has no infinity, and null would lose no-align's τ = -inf: written as text, read back by float()
        out["method"]["params"] = {k: str(v) if isinstance(v, float) and math.isinf(v) else v
                                   for k, v in out["method"]["params"].items()}
        for rec, src in zip(out["sources"], self.sources):
            rec["fraction_transferred"] = src.fraction_transferred
        for rec in [*out["sources"], out["base"], out["continued_from"]]:
            if rec is not None:
                rec.pop("path", None)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "merge report") -> "MergeReport":
        """The report :meth:`to_dict` wrote (derived keys are recomputed, not read); :class:`GraspError` naming
        ``where`` when it is not one: a schema newer than this version's, a field missing, unknown or of the
        wrong type."""
        from ..runtime.errors import GraspError, first_line

        if not isinstance(data, dict):
            raise GraspError(f"{where}: not an hf-grasp merge report (not a JSON object)")
        schema = data.get("schema", 0)
        if type(schema) is not int or schema < 0:  # bool is no schema number
            raise GraspError(f"{where}: field 'schema' must be a whole number (this hf-grasp writes "
                             f"{SCHEMA_VERSION}), not {schema!r}")
        if schema > SCHEMA_VERSION:
            raise GraspError(f"{where}: schema {schema} is newer than this hf-grasp's ({SCHEMA_VERSION}): a newer "
                             "hf-grasp wrote it; upgrade hf-grasp to read it")
        try:
            report = cls._from_dict(data)
            _check_types(report, "")
            # a metric is a dict of numbers that the card and the summary format as such
            metrics = {f"final[{k!r}]": m for k, m in report.final.items()}
            for i, src in enumerate(report.sources):
                metrics[f"sources[{i}].metrics_alone"] = src.metrics_alone
                metrics |= {f"sources[{i}].metrics_after[{k!r}]": m for k, m in (src.metrics_after or {}).items()}
            for name, metric in metrics.items():
                for key, number in (metric or {}).items():
                    if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float))):
                        raise TypeError(f"field {name}[{key!r}] must be a number, not {type(number).__name__}")
        except RecursionError:
            raise GraspError(f"{where}: not an hf-grasp merge report (nested too deeply)") from None
        except (TypeError, ValueError, KeyError, AttributeError) as e:
            raise GraspError(f"{where}: not an hf-grasp merge report ({first_line(e)})") from None
        return report

    @classmethod
    def _from_dict(cls, data: dict[str, Any]) -> "MergeReport":
        def source(d):
            return SourceRecord(**{k: v for k, v in d.items() if k != "fraction_transferred"}) if d else None

        d = dict(data)
        method = dict(d["method"])
        method["params"] = {k: float(v) if v in _INFINITE else v for k, v in method.get("params", {}).items()}
        steps = (_steps_before_schema_6(d) if d.get("schema", 0) < 6
                 else [{k: v for k, v in s.items() if k != "step"} for s in d["steps"]])
        d.pop("extras", None)
        return cls(**{**d, "method": MethodRecord(**method), "target": TargetRecord(**d["target"]),
                      "sources": [source(s) for s in d["sources"]], "steps": [StepRecord(**s) for s in steps],
                      "memory": MemoryRecord(**d["memory"]), "base": source(d.get("base")),
                      "continued_from": source(d.get("continued_from")), "license": _license(d.get("license"))})

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``grasp_report.json`` (atomically)."""
        return write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MergeReport":
        """The report ``grasp_report.json`` at ``path`` holds; :class:`GraspError` naming the file when it cannot
        be read or is not one (:meth:`from_dict`)."""
        from ..runtime.errors import GraspError, first_line

        try:
            data = read_json(path)
        except RecursionError:  # json nests by recursion: thousands of brackets exhaust the stack
            raise GraspError(f"{path}: not an hf-grasp merge report (nested too deeply)") from None
        except (OSError, ValueError) as e:
            raise GraspError(f"{path}: cannot read the merge report ({first_line(e)})") from None
        return cls.from_dict(data, where=str(path))


def _check_types(value: Any, where: str, hint: Any = None) -> None:
    """Raise TypeError naming the field (``where``) when ``value`` (a report record read back, recursively) is
    not of its declared type ``hint`` (JSON's kinds: a float field takes an int; bool is no number; an entry of a
    list or mapping may be null: a metric not measured)."""
    import enum
    import typing
    import types

    if dataclasses.is_dataclass(value) and hint is None or (hint is not None and dataclasses.is_dataclass(hint)):
        if not isinstance(value, hint or type(value)):
            raise TypeError(f"field {where or 'report'} must be an object, not {type(value).__name__}")
        hints = typing.get_type_hints(type(value))
        for f in dataclasses.fields(value):
            _check_types(getattr(value, f.name), f"{where}.{f.name}" if where else f.name, hints[f.name])
        return
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in args:
            try:
                return _check_types(value, where, arm)
            except TypeError as e:
                errors.append(e)
        raise errors[0]
    kind = origin or hint
    ok = {float: (int, float), int: (int,)}.get(kind, (kind,))
    if kind is type(None):
        ok = (type(None),)
    if not isinstance(value, ok) or (isinstance(value, bool) and kind in (int, float)) \
            or (isinstance(kind, type) and issubclass(kind, enum.Enum) and not isinstance(value, kind)):
        raise TypeError(f"field {where} must be {getattr(kind, '__name__', kind)}, not {type(value).__name__}")
    if origin is list:
        for i, item in enumerate(value):
            _check_types(item, f"{where}[{i}]", args[0] | None)
    elif origin is dict:
        for k, item in value.items():
            _check_types(k, f"{where} key", args[0])
            _check_types(item, f"{where}[{k!r}]", args[1] | None)


def _steps_before_schema_6(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps of a report written before schema 6, as :class:`StepRecord` fields: the kind and number parsed
    from the text label ("source 3", "compose + merge"), the top-level ``extras`` moved into their step's
    ``details``. Exists only to load those reports; nothing since writes either."""
    labels = {kind.label(): kind for kind in StepKind}
    details = {e["step"]: {k: v for k, v in e.items() if k != "step"} for e in data.get("extras") or []}
    steps = []
    for rec in data["steps"]:
        label = rec["step"]
        head, _, tail = label.rpartition(" ")
        if label in labels:
            kind, number = labels[label], None
        elif head in labels and labels[head].per_source and tail.isdigit():
            kind, number = labels[head], int(tail)
        else:
            raise ValueError(f"step {label!r} of a schema-{data.get('schema')} report is not a step hf-grasp writes")
        steps.append({**{k: v for k, v in rec.items() if k != "step"}, "kind": kind, "number": number,
                      "details": details.get(label, {})})
    return steps


def _license(value: License | dict | None) -> License | None:
    """A license record, from the object or from the JSON object ``to_dict`` made of it."""
    return License(**value) if isinstance(value, dict) else value


# --------------------------------------------------------------------------- building


def method_record(info: "MethodInfo", params: Any) -> MethodRecord:
    return MethodRecord(name=info.name, pretty_name=info.pretty_name, label=info.label,
                        description=info.description, paper=info.paper, is_grasp=info.is_grasp,
                        parameter_space=info.parameter_space, params=params.to_dict())


def build_report(ctx: "MergeContext", method: "MethodInfo", *, seconds: float,
                 license: LicenseDecision | None = None, clock: "RunClock | None" = None) -> MergeReport:
    """The report of a finished merge, from the context its method worked on and the records it left.

    A continuation (``ctx.earlier``) carries the earlier merge's sources, steps,
    epochs and notes first, then its own. ``license``: the license decided for the merged model when its
    inputs were resolved. ``seconds``: the merge engine's wall time; ``clock``: when the whole run started.
    """
    from hf_grasp import __version__

    records, earlier = ctx.records, ctx.earlier
    # the engine works on the model's names; the report names tensors as the sources' checkpoints do (the Hub's)
    saved = ctx.naming.checkpoint_name
    inputs = ([ctx.init_source] if ctx.init_source and earlier is None else []) + list(ctx.sources)
    sources = list(earlier.sources) if earlier else []
    # every input is listed, in merge order, whether or not the method recorded a step for it
    for src in inputs:
        rec = next((r for r in records if r.source == src.name), None)
        sources.append(SourceRecord(
            **src.describe(), role="init" if rec is not None and rec.kind is StepKind.INIT else "source",
            scores=_renamed(rec and rec.scores, saved), transferred=_renamed(rec and rec.transferred, saved),
            skipped=[saved(name) for name in rec.skipped] if rec is not None else [],
            metrics_alone=rec and rec.source_alone,
            metrics_after={"validation": rec.validation, "test": rec.test} if rec is not None else None,
            history=rec and rec.history, seconds=rec and rec.seconds))
    steps = list(earlier.steps) if earlier else []
    steps += [StepRecord(rec.kind, rec.number, rec.source, (rec.validation or {}).get("accuracy"),
                         (rec.test or {}).get("accuracy"), rec.seconds, dict(rec.phases), dict(rec.details))
              for rec in records]
    last = records[-1]
    param_bytes = sum(p.numel() * p.element_size() for p in ctx.merged.parameters())
    result_models = len(getattr(ctx.artifact, "members", None) or [None])
    data = ctx.data
    return MergeReport(
        method=method_record(method, ctx.params),
        options=ctx.options.to_dict(),
        target=TargetRecord(data.name, data.domain, data.num_labels, {k: len(v) for k, v in data.splits.items()},
                            list(data.notes), data.label_names, data.modality, _example(data)),
        family=ctx.family.name,
        architecture=type(ctx.merged).__name__,
        sources=sources,
        steps=steps,
        final={"validation": last.validation, "test": last.test},
        epochs_trained=(earlier.epochs_trained if earlier else 0) + sum(len(r.history or []) for r in records),
        seconds=seconds,
        memory=MemoryRecord(peak_rss_bytes(), param_bytes, result_models * param_bytes),
        base=SourceRecord(**ctx.base_source.describe(), role="base") if ctx.base_source else None,
        continued_from=SourceRecord(**ctx.init_source.describe(), role="init") if earlier else None,
        notes=(list(earlier.notes) if earlier else []) + [rec.note for rec in records if rec.note],
        phases={name: round(s, 3) for name, s in ctx.timer.seconds.items()},
        wall_seconds=round(clock.seconds(), 3) if clock else None,
        wall_since=clock.since if clock else None,
        license=license.license if license else None,
        license_origin=license.origin if license else None,
        version=__version__,
    )


def _renamed(per_tensor: dict[str, Any] | None, name: Callable[[str], str]) -> dict[str, Any] | None:
    """``per_tensor`` (model tensor names -> values) keyed by ``name(model name)`` instead, in the same order."""
    return {name(k): v for k, v in per_tensor.items()} if per_tensor is not None else None


# --------------------------------------------------------------------------- JSON


def read_json(path: str | os.PathLike) -> dict:
    """Read JSON written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- memory


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes.

    On Linux the kernel's high-water mark (``VmHWM``): ``getrusage``'s
    ``ru_maxrss`` survives ``exec``, so a child process started by a large
    parent would report the parent's size.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):  # Windows has no resource module
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))


def _example(data: Any) -> str | None:
    """A text target's first test text (the card's widget example); None for images."""
    return str(data.splits["test"][0]["text"]) if data.modality == "text" and len(data.splits["test"]) else None
