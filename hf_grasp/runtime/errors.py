"""User-facing errors.

Anything the user can fix (a bad reference, a missing column, a shape that does
not match) is raised as :class:`GraspError` with one line that names the culprit.
The CLI prints that line and exits non-zero; the Python API lets it propagate.
"""


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
                   "corrupt: re-download or re-export it, or leave it out of --sources")


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message (its type's name when it has none): what a one-line error quotes
    of a library's own, often multi-line, message."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
