"""A merge saved by hf-grasp as an input: its plan (``grasp_config.json``), read from a folder or the Hub.

``--from org/merged`` makes it again, ``--init org/merged`` continues it. Only
that one file is fetched (through the HF cache, as the sources are).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..plan.config import CONFIG_NAME
from ..plan.plan import MergePlan
from ..runtime.errors import SourceError, flag
from .references import SourceRef


def find_merge_config(reference: str | os.PathLike, *, token: str | bool | None = None,
                      required: bool = False) -> tuple[MergePlan, str] | None:
    """The plan a merge folder or Hub repo carries, with the folder it was read from.

    ``reference``: a local folder, ``org/name`` or ``org/name@revision``. Only
    ``grasp_config.json`` is fetched (through the HF cache). None when the
    reference holds no such file, or :class:`SourceError` naming it when
    ``required``; a reference that cannot be reached at all is an error either way.
    """
    ref = SourceRef.parse(os.fspath(reference))
    if ref.local_path is not None:
        if not ref.local_path.is_dir():
            raise SourceError(f"merge {ref.text!r}: directory {ref.local_path} does not exist")
        path = ref.local_path / CONFIG_NAME
        found = path if path.is_file() else None
    else:
        found = _hub_file(ref, token)
    if found is None:
        if required:
            raise SourceError(f"{ref.text!r} holds no {CONFIG_NAME}: it is not a merge saved by hf-grasp (to merge "
                              f"sources, pass them as a list: {flag('sources', None)} A B ...)")
        return None
    return MergePlan.load(found), str(Path(found).parent)


def _hub_file(ref, token: str | bool | None) -> Path | None:
    """``grasp_config.json`` of a Hub repo, through the HF cache (the sources' own snapshot path and errors);
    None when the repo has none (a plain model)."""
    from .sources import _snapshot

    path = _snapshot(ref, [CONFIG_NAME, "config.json"], token) / CONFIG_NAME
    return path if path.is_file() else None
