"""User-facing errors.

Anything the user can fix (a bad reference, a missing column, a shape that does
not match) is raised as :class:`GraspError` with one line that names the culprit.
The CLI prints that line and exits non-zero; the Python API lets it propagate.
Advice in a message names options as the caller spells them (:func:`flag`):
``--overwrite`` on the command line, ``overwrite=True`` from Python.
"""

import contextlib
import os
from contextvars import ContextVar
from typing import Iterator

#: who is calling the library: "python" (the API; the default) or "cli" (only hf-grasp's entry point sets it,
#: for its own run: library code never changes process-wide state)
_caller: ContextVar[str] = ContextVar("hf_grasp_caller", default="python")


@contextlib.contextmanager
def called_from_cli() -> Iterator[None]:
    """Within the block, :func:`flag` spells options as the command line does: for ``hf-grasp``'s entry point."""
    token = _caller.set("cli")
    try:
        yield
    finally:
        _caller.reset(token)


def flag(name: str, value: object = True) -> str:
    """Option ``name`` set to ``value`` as the caller would write it, for an error's advice.

    From the command line: ``--overwrite`` (``value`` True), ``--order 0,1``; from
    Python: ``overwrite=True``, ``order='0,1'``. ``value=None`` names the option
    itself: ``--sources`` / ``sources``.
    """
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if _caller.get() == "cli":
        spelled = "--" + name.replace("_", "-")
        return spelled if value is True or value is None else f"{spelled} {value}"
    return name if value is None else f"{name}={value!r}"


class GraspError(Exception):
    """A problem with the user's input, described in one line naming the culprit."""


class SourceError(GraspError):
    """A source reference that cannot be resolved, read or used."""


class ShapeMismatchError(SourceError):
    """A source tensor whose name, shape or dtype does not fit the target architecture."""


class UnsupportedArchitectureError(SourceError):
    """An architecture hf-grasp cannot merge (its library can load it): named, with why, before any weights are read."""


class DataError(GraspError):
    """A target dataset, split or column that cannot be used."""


class NumericalError(GraspError):
    """A NaN or inf where a number must be finite: a loss, a gradient, the merged model's weights."""

    @staticmethod
    def count(tensor) -> str:
        """How many of ``tensor``'s entries are NaN and inf, as the messages put it.

        Only called once something was found non-finite, so its cost never
        matters on the normal path.
        """
        nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
        return f"{nan} NaN and {inf} inf of its {tensor.numel()} entries"


class NonFiniteSourceError(SourceError):
    """A source tensor holding NaN or inf entries: the checkpoint itself is corrupt."""

    @classmethod
    def of(cls, source: str, name: str, tensor) -> "NonFiniteSourceError":
        """The error for source ``source``'s tensor ``name`` (the tensor as read)."""
        return cls(f"source {source!r}: tensor {name!r} has {NumericalError.count(tensor)}; the checkpoint is "
                   f"corrupt: re-download or re-export it, or leave it out of {flag('sources', None)}")


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none): what a one-line error quotes
    of a library's own, often multi-line, message."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
