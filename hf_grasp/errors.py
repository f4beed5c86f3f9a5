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


class DataError(GraspError):
    """A target dataset, split or column that cannot be used."""
