"""What a merge method records after each of its steps: a typed :class:`Step`.

A method hands one :class:`Step` per step to
:meth:`~hf_grasp.engine.context.MergeContext.record`; the report
(:mod:`hf_grasp.output.report`) and the resume state
(:mod:`hf_grasp.output.checkpoint`) are built from these. What a step *is*
lives in its :class:`StepKind` and number, never in its text label, so a label
can be reworded without breaking a continuation (which counts kinds). Torch-free:
the values are plain numbers, strings, lists and dicts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

Metrics = dict[str, Any]  # {"accuracy": float, "loss": float, "n": int}, as the metric computes them


class StepKind(str, Enum):
    """What a step did. Per-source kinds (:attr:`per_source`) carry the source's position as their number."""

    INIT = "init"                      # the initial merged model (a source, the base, or a random init)
    SOURCE = "source"                  # one more source merged in (GRASP, sequential TA, the ensemble's members)
    INGREDIENT = "ingredient"          # a greedy soup's source judged alone
    ADAPTER = "adapter"                # a PEARL adapter built from one source
    MERGE = "merge"                    # a one-shot merge of every source
    AVERAGE = "average"                # the sources averaged (before a training method's fine-tuning)
    COMPOSE = "compose"                # PEARL: adapters composed, trained and merged
    FINE_TUNE = "fine-tune"            # a final fine-tuning round
    INTERPOLATE = "interpolate"        # between the start and the fine-tuned weights, α chosen on validation
    RECALIBRATE_BN = "recalibrate-bn"  # BatchNorm statistics re-estimated at the end

    @property
    def per_source(self) -> bool:
        """Whether a step of this kind is about one source, numbered by its position."""
        return self in _PER_SOURCE

    @property
    def counts_as_sequential_step(self) -> bool:
        """Whether a step of this kind is one of a sequential merge's numbered steps (0 for init, k for source
        k), which a continuation of that merge goes on counting from."""
        return self in (StepKind.INIT, StepKind.SOURCE)

    def label(self, number: int | None = None) -> str:
        """The text logs, tables and ``grasp_report.json`` show: ``"source 3"``, ``"init"``, ``"compose + merge"``."""
        text = _LABELS.get(self, self.value)
        return f"{text} {number}" if number is not None else text


_PER_SOURCE = frozenset({StepKind.SOURCE, StepKind.INGREDIENT, StepKind.ADAPTER})
_LABELS = {StepKind.COMPOSE: "compose + merge"}


class Numbered:
    """What every record of a step derives from its ``kind`` and ``number`` (a :class:`Step`, and the report's
    :class:`~hf_grasp.output.report.StepRecord`)."""

    kind: StepKind
    number: int | None

    @property
    def label(self) -> str:
        """``"source 3"``, ``"init"``, ``"compose + merge"``: how logs, tables and ``grasp_report.json`` name it."""
        return self.kind.label(self.number)

    @property
    def counts_as_sequential_step(self) -> bool:
        """Whether a continuation of this merge counts this step (see :attr:`StepKind.counts_as_sequential_step`)."""
        return self.kind.counts_as_sequential_step


@dataclass
class Step(Numbered):
    """One step of a merge method and what it measured.

    ``number``: the source's position for a per-source kind (``source 3`` is
    ``Step(StepKind.SOURCE, 3)``), None otherwise. ``source``: the reference of
    the source the step is about, as given. ``phases``: wall seconds per phase of
    the run's :class:`~hf_grasp.runtime.timing.PhaseTimer` spent since the
    previous step was recorded (filled in by ``record``). ``details``: what only
    this method records (PEARL's composition and lr, sequential TA's scaling and
    the λ it tried, learned interpolation's accuracies, ...), JSON-able values.
    """

    kind: StepKind
    number: int | None = None
    source: str | None = None
    validation: Metrics | None = None
    test: Metrics | None = None
    source_alone: Metrics | None = None            # the source alone on the target test split
    scores: dict[str, float | None] | None = None  # model tensor name -> alignment score
    transferred: dict[str, float] | None = None    # model tensor name -> fraction of its entries moved
    skipped: list[str] = field(default_factory=list)  # head tensors not read from the source
    history: list[dict] | None = None              # fine-tuning epochs of the step
    seconds: float | None = None
    phases: dict[str, float] = field(default_factory=dict)
    note: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        try:
            self.kind = StepKind(self.kind)
        except ValueError:
            raise ValueError(f"field 'kind' must be one of {', '.join(k.value for k in StepKind)}, "
                             f"not {self.kind!r}") from None
        if self.kind.per_source and not (_is_int(self.number) and self.number >= 0):
            raise ValueError(f"field 'number' of a {self.kind.value!r} step must be the source's position (an "
                             f"integer), not {self.number!r}")
        if not self.kind.per_source and self.number is not None:
            raise ValueError(f"field 'number' of a {self.kind.value!r} step must be null, not {self.number!r}")

    @property
    def transfer_counts(self) -> tuple[int, int] | None:
        """(tensors moved at all, tensors scored), or None when the step transferred nothing by score."""
        if not self.transferred:
            return None
        return sum(1 for v in self.transferred.values() if v), len(self.transferred)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; :meth:`from_dict` reads it back."""
        return {**dataclasses.asdict(self), "kind": self.kind.value}

    @classmethod
    def from_dict(cls, data: Any) -> "Step":
        """The step :meth:`to_dict` wrote, checked field by field: ValueError names the first bad field (the
        data is read back from disk, e.g. a resume state)."""
        if not isinstance(data, dict):
            raise ValueError(f"a step must be an object, not {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r}")
        if "kind" not in data:
            raise ValueError("field 'kind' is missing")
        for name, check, what in _CHECKS:
            if name in data and not check(data[name]):
                raise ValueError(f"field {name!r} must be {what}, not {data[name]!r}")
        return cls(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optional(check):
    return lambda v: v is None or check(v)


def _mapping_of(check):
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and check(x) for k, x in v.items())


_METRICS = _optional(_mapping_of(_optional(_is_number)))  # a JSON null stands for a NaN/inf value
_CHECKS = [
    ("kind", lambda v: isinstance(v, str), "a string"),
    ("number", _optional(_is_int), "an integer or null"),
    ("source", _optional(lambda v: isinstance(v, str)), "a string or null"),
    ("validation", _METRICS, "metrics (an object of numbers) or null"),
    ("test", _METRICS, "metrics (an object of numbers) or null"),
    ("source_alone", _METRICS, "metrics (an object of numbers) or null"),
    ("scores", _optional(_mapping_of(_optional(_is_number))), "an object of numbers or null"),
    ("transferred", _optional(_mapping_of(_is_number)), "an object of numbers or null"),
    ("skipped", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    ("history", _optional(lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v)),
     "a list of objects or null"),
    ("seconds", _optional(_is_number), "a number or null"),
    ("phases", _mapping_of(_is_number), "an object of numbers"),
    ("note", _optional(lambda v: isinstance(v, str)), "a string or null"),
    ("details", lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "an object"),
]


__all__ = ["Metrics", "Step", "StepKind"]
