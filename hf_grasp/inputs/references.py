"""A source reference as the user wrote it: a Hub repo id (with a revision) or a local directory. Torch-free, so
the command line can tell the two apart before anything heavy is imported."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..runtime.errors import SourceError


@dataclass(frozen=True)
class SourceRef:
    """A parsed reference: a Hub repo id with optional revision, or a local directory."""

    text: str
    repo_id: str | None = None
    revision: str | None = None
    local_path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> "SourceRef":
        """Parse ``org/name``, ``org/name@rev``, ``hf-hub:org/name[@rev]``, a directory or ``local-dir:PATH``."""
        raw = text.strip()
        if raw.startswith("local-dir:"):
            return cls(text, local_path=Path(raw[len("local-dir:"):]).expanduser())
        if raw.startswith("hf-hub:"):
            raw = raw[len("hf-hub:"):]
        elif Path(raw).expanduser().exists() or raw.startswith((".", "/", "~")):
            return cls(text, local_path=Path(raw).expanduser())
        repo, _, rev = raw.partition("@")
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise SourceError(
                f"source {text!r}: not a local directory and not a Hub repo id of the form org/name[@revision]"
            )
        return cls(text, repo_id=repo, revision=rev or None)
