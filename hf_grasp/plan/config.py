"""What a saved merge carries to be made again: ``grasp_config.json``.

A merge folder (or Hub repo) holds, beside the model and ``grasp_report.json``,
the merge's configuration: the method and every parameter, every shared option
(seed included), the target, and each input pinned (a Hub source as
``org/name@<commit>``, a local one as the user gave it: the file is published
with the model, so it names no path of this machine that the user did not write). From it
``GraspMerger.from_pretrained("org/merged")`` (``hf-grasp merge --from``)
rebuilds a merger that makes the same model, ``--init org/merged`` continues
the merge with more sources, and ``--resume`` checks that it continues the same
run. Torch-free: the CLI reads it before anything heavy is imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..runtime.errors import GraspError, SourceError, first_line

CONFIG_NAME = "grasp_config.json"
REPORT_NAME = "grasp_report.json"
SCHEMA_VERSION = 1

#: options of an earlier merge that a continuation does not inherit: they describe how that merge started
NOT_INHERITED = ("init", "order", "base", "initial_epochs")
#: options added after merges were already saved, with the value those merges ran with (not today's default)
ADDED_OPTIONS = {"schedule_per": "step"}


@dataclass
class MergeConfig:
    """The configuration of one merge, enough to run it again (``GraspMerger.from_pretrained(**arguments)``)."""

    method: str
    sources: list[str]            # pinned, in the order given (``options["order"]`` applies to them)
    target: str | None            # a recipe name, a dataset id, or a local path as given
    recipe: str | None
    options: dict[str, Any]       # every shared option as run; ``init`` and ``base`` pinned
    params: dict[str, Any]        # the method's own parameters
    version: str = ""
    schema: int = SCHEMA_VERSION
    continues: str | None = field(default=None)  # pinned reference of the earlier merge this one continued

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``GraspMerger.from_pretrained`` that rebuild this merge."""
        return {"sources": list(self.sources), "target": self.target, "recipe": self.recipe,
                "method": self.method, **self.options, **self.params}

    def inherited(self) -> dict[str, Any]:
        """The options and parameters a continuation of this merge starts from (its user's flags win)."""
        return {k: v for k, v in {**self.options, **self.params}.items() if k not in NOT_INHERITED}

    def differences(self, other: "MergeConfig", mine: str = "now", theirs: str = "before") -> list[str]:
        """What differs from ``other``, one phrase per difference (``option lr is 0.01 now, 0.001 before``);
        [] when both describe the same merge."""
        pairs = [(name, getattr(self, name), getattr(other, name))
                 for name in ("method", "target", "recipe", "sources")]
        for group in ("options", "params"):
            a, b = getattr(self, group), getattr(other, group)
            pairs += [(f"option {key}", a.get(key), b.get(key)) for key in sorted(set(a) | set(b))]
        return [f"{name} is {_show(x)} {mine}, {_show(y)} {theirs}" for name, x, y in pairs if x != y]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "merge config") -> "MergeConfig":
        """The configuration ``to_dict`` wrote; :class:`GraspError` naming ``where`` and the field if malformed."""
        known = set(cls.__dataclass_fields__)
        try:
            config = cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as e:
            raise GraspError(f"{where}: not an hf-grasp merge configuration ({e})") from None
        shapes = {"method": str, "sources": list, "options": dict, "params": dict}
        for name, kind in shapes.items():
            if not isinstance(getattr(config, name), kind):
                raise GraspError(f"{where}: field {name!r} must be a {kind.__name__}, not "
                                 f"{type(getattr(config, name)).__name__}")
        if not all(isinstance(s, str) for s in config.sources):
            raise GraspError(f"{where}: field 'sources' must list references (text)")
        # a merge saved before an option existed ran as that option's old behaviour, which rebuilding must keep
        config.options = {**ADDED_OPTIONS, **config.options}
        return config

    def save(self, path: str | os.PathLike) -> Path:
        from ..output.report import write_json

        return write_json(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MergeConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise GraspError(f"{path}: cannot read the merge configuration ({first_line(e)})") from None
        if not isinstance(data, dict):
            raise GraspError(f"{path}: not an hf-grasp merge configuration (not a JSON object)")
        return cls.from_dict(data, where=str(path))


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def pinned_reference(ref_text: str, repo_id: str | None, commit: str | None) -> str:
    """A reference that names exactly these files: ``org/name@<commit>`` (keeping ``hf-hub:``); a local folder
    as the user named it (never its absolute path, which would publish this machine's directories)."""
    if repo_id and commit:
        prefix = "hf-hub:" if ref_text.strip().startswith("hf-hub:") else ""
        return f"{prefix}{repo_id}@{commit}"
    return ref_text


def find_merge_config(reference: str | os.PathLike, *, token: str | bool | None = None,
                      required: bool = False) -> tuple[MergeConfig, str] | None:
    """The configuration a merge folder or Hub repo carries, with the folder it was read from.

    ``reference``: a local folder, ``org/name`` or ``org/name@revision``. Only
    ``grasp_config.json`` is fetched (through the HF cache). None when the
    reference holds no such file, or :class:`SourceError` naming it when
    ``required``; a reference that cannot be reached at all is an error either way.
    """
    from ..inputs.sources import SourceRef

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
                              "sources, pass them as a list: --sources A B ...)")
        return None
    return MergeConfig.load(found), str(Path(found).parent)


def _hub_file(ref, token) -> Path | None:
    """``grasp_config.json`` of a Hub repo, through the HF cache (the sources' own snapshot path and errors);
    None when the repo has none (a plain model)."""
    from ..inputs.sources import _snapshot

    path = _snapshot(ref, [CONFIG_NAME, "config.json"], token) / CONFIG_NAME
    return path if path.is_file() else None
