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

from ..plan.licenses import License, LicenseDecision

if TYPE_CHECKING:
    from ..engine.context import MergeContext
    from ..methods.registry import MethodInfo
    from ..runtime.timing import RunClock

Metrics = dict[str, Any]  # {"accuracy": float, "loss": float, "n": int}
SCHEMA_VERSION = 5  # 4: phases; 5: wall time, no local paths


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
class StepRecord:
    """One step of the method (``init``, ``source 2``, ``merge``, ``fine-tune``, ...) and the accuracy after it."""

    step: str
    ref: str | None
    val_accuracy: float | None
    test_accuracy: float | None
    seconds: float | None = None


@dataclass
class TargetRecord:
    name: str
    domain: Any = None
    num_labels: int | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    label_names: list[str] | None = None  # the class names by index (ClassLabel), which the merged model carries


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
    extras: list[dict] = field(default_factory=list)  # method-specific step data (PEARL's composition, ...)
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

    def test_accuracy(self) -> float | None:
        return (self.final.get("test") or {}).get("accuracy")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, with the derived ``fraction_transferred`` of each source written out.

        Nothing of this machine: the sources' local paths (:attr:`SourceRecord.path`) are left out, since a
        report is published with the model; the references and commits name the inputs.
        """
        out = dataclasses.asdict(self)
        for rec, src in zip(out["sources"], self.sources):
            rec["fraction_transferred"] = src.fraction_transferred
        for rec in [*out["sources"], out["base"], out["continued_from"]]:
            if rec is not None:
                rec.pop("path", None)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MergeReport":
        """The report :meth:`to_dict` wrote (derived keys are recomputed, not read)."""
        def source(d):
            return SourceRecord(**{k: v for k, v in d.items() if k != "fraction_transferred"}) if d else None

        d = dict(data)
        return cls(**{**d, "method": MethodRecord(**d["method"]), "target": TargetRecord(**d["target"]),
                      "sources": [source(s) for s in d["sources"]], "steps": [StepRecord(**s) for s in d["steps"]],
                      "memory": MemoryRecord(**d["memory"]), "base": source(d.get("base")),
                      "continued_from": source(d.get("continued_from")), "license": _license(d.get("license"))})

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``grasp_report.json`` (atomically)."""
        return write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MergeReport":
        return cls.from_dict(read_json(path))


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
        rec = next((r for r in records if r["source"] == src.name), {})
        sources.append(SourceRecord(
            **src.describe(), role="init" if rec.get("step") == "init" else "source",
            scores=_renamed(rec.get("scores"), saved), transferred=_renamed(rec.get("transferred"), saved),
            skipped=[saved(name) for name in rec.get("skipped", [])],
            metrics_alone=rec.get("source_alone"),
            metrics_after={"validation": rec["validation"], "test": rec["test"]} if rec else None,
            history=rec.get("history"), seconds=rec.get("seconds")))
    steps = list(earlier.steps) if earlier else []
    steps += [StepRecord(rec["step"], rec["source"], (rec["validation"] or {}).get("accuracy"),
                         (rec["test"] or {}).get("accuracy"), rec.get("seconds")) for rec in records]
    last = records[-1]
    param_bytes = sum(p.numel() * p.element_size() for p in ctx.merged.parameters())
    result_models = len(getattr(ctx.artifact, "members", None) or [None])
    known = {"step", "source", "scores", "transferred", "skipped", "source_alone", "validation", "test", "history",
             "seconds", "note", "time"}
    extras = [{"step": r["step"], **{k: v for k, v in r.items() if k not in known}} for r in records
              if set(r) - known]
    data = ctx.data
    return MergeReport(
        method=method_record(method, ctx.params),
        options=ctx.options.to_dict(),
        target=TargetRecord(data.name, data.domain, data.num_labels, {k: len(v) for k, v in data.splits.items()},
                            list(data.notes), data.label_names),
        family=ctx.family.name,
        architecture=type(ctx.merged).__name__,
        sources=sources,
        steps=steps,
        final={"validation": last["validation"], "test": last["test"]},
        epochs_trained=(earlier.epochs_trained if earlier else 0) + sum(len(r.get("history") or []) for r in records),
        seconds=seconds,
        memory=MemoryRecord(peak_rss_bytes(), param_bytes, result_models * param_bytes),
        base=SourceRecord(**ctx.base_source.describe(), role="base") if ctx.base_source else None,
        continued_from=SourceRecord(**ctx.init_source.describe(), role="init") if earlier else None,
        notes=(list(earlier.notes) if earlier else []) + [rec["note"] for rec in records if rec.get("note")],
        extras=(list(earlier.extras) if earlier else []) + extras,
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


def write_json(data: dict, path: str | os.PathLike) -> Path:
    """Write ``data`` as indented JSON (atomically) and return the path.

    NaN/inf become ``null`` (strict JSON); numpy/torch scalars and paths are
    converted to plain values.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_json(path: str | os.PathLike) -> dict:
    """Read JSON written by :func:`write_json`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return _jsonable(obj.tolist())
    raise TypeError(f"report value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


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
