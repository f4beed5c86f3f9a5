"""The merged model's license: the Hub's license ids, each source's license, and the one the merge takes.

A card's ``license:`` must be one of the ids the Hub lists (:data:`HUB_LICENSES`);
a license the list lacks is ``other``, named by ``license_name`` and linked by
``license_link``. The merge takes the license given (``--license``), else the
one every source's own model card states; when they do not all state the same
usable one it takes none, and says why in one warning line.

Torch-free and light: :mod:`hf_grasp.plan.options` validates ``--license`` with it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

#: where the Hub documents its license ids
LICENSES_URL = "https://huggingface.co/docs/hub/repositories-licenses"

#: The license ids the Hub accepts in a card's ``license:`` field, in the Hub's order: the table of
#: docs/hub/repositories-licenses.md in huggingface/hub-docs (commit 242f4a1, 2026-08-22), which the Hub derives
#: its list from. Its validator quotes the same list when it refuses a card
#: ('"license" must be one of [apache-2.0, mit, ...]').
HUB_LICENSES: tuple[str, ...] = (
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0",
    "odc-by", "odbl", "openmdw-1.0", "openmdw-1.1", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa",
    "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2",
    "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "grok2-community", "gemma", "unknown", "other",
)

#: what to pass for a license the Hub's list lacks
OTHER_HINT = "other with --license-name NAME --license-link URL"


def hub_license_id(text: str) -> str:
    """``text`` as a Hub license id (case and surrounding spaces aside); ValueError naming the closest ids."""
    value = text.strip().lower()
    if value in HUB_LICENSES:
        return value
    close = difflib.get_close_matches(value, HUB_LICENSES, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    raise ValueError(f"not a license id of the Hub{hint}; its ids are listed at {LICENSES_URL}, and a license "
                     f"not on the list is {OTHER_HINT}")


@dataclass(frozen=True)
class License:
    """A license as a card's metadata states it: ``license``, and for ``other`` ``license_name`` and
    ``license_link``."""

    id: str
    name: str | None = None
    link: str | None = None

    @property
    def problem(self) -> str | None:
        """Why a card cannot carry this license as it is (None: it can)."""
        if self.id not in HUB_LICENSES:
            return "not a Hub license id"
        if self.id == "other" and not (self.name and self.link):
            return "other without license_name and license_link"
        return None

    def __str__(self) -> str:
        shown = f"other ({self.name}, {self.link})" if self.id == "other" and not self.problem else self.id
        return f"{shown!r} ({self.problem})" if self.problem else shown


@dataclass(frozen=True)
class LicenseDecision:
    """The license the merged model's card states, where it came from, and the warning when it has none."""

    license: License | None
    origin: str | None = None   # "given" (--license) | "sources" (every source's card states it) | None
    warning: str | None = None


def card_license(folder: str | os.PathLike) -> License | None:
    """The license a checkpoint folder's model card (``README.md``) states; None without a card, without a
    ``license:`` or with metadata that cannot be read (the card is the source's, not something to fail on)."""
    import yaml
    from huggingface_hub import ModelCardData, metadata_load

    path = Path(folder) / "README.md"
    if not path.is_file():
        return None
    try:
        # metadata_load rather than ModelCard.load: the same parsing, without a logged warning for a card
        # that has no metadata block
        data = ModelCardData(**(metadata_load(path) or {}), ignore_metadata_errors=True)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, yaml.YAMLError):
        return None
    if not data.license or not isinstance(data.license, str):
        return None
    try:
        license_id = hub_license_id(data.license)
    except ValueError:  # kept as written: the merge's decision says it is not a Hub id
        license_id = data.license.strip()
    name, link = (_text(data.license_name), _text(data.license_link)) if license_id == "other" else (None, None)
    return License(license_id, name, link)


def _text(value: object) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def decide_license(given: License | None, sources: dict[str, License | None]) -> LicenseDecision:
    """The merged model's license: ``given`` (``--license``), else the one every input's card states
    (``sources``: reference -> its card's license), else none and a one-line warning naming each input's."""
    if given is not None:
        return LicenseDecision(given, "given")
    found = set(sources.values())
    if len(found) == 1:
        (common,) = found
        if common is not None and common.problem is None:
            return LicenseDecision(common, "sources")
    listing = ", ".join(f"{ref}: {lic if lic is not None else 'none'}" for ref, lic in sources.items())
    why = ("its sources' model cards do not all state the same usable one" if found - {None}
           else "none of its sources' model cards states one")
    return LicenseDecision(None, warning=(
        f"the merged model's card states no license: {why} ({listing}); pass --license with the merged model's "
        f"license (a Hub license id, or {OTHER_HINT})"))
