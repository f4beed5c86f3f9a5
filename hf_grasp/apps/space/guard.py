"""What the Space accepts from a visitor, and how it words a refusal: in the page's own words.

A public page must not read its server's disk on a visitor's behalf: sources,
the base and the target dataset are Hub ids (or the built-in benchmarks)
unless the page was started with local paths allowed (``hf-grasp space
--allow-local-paths``). :func:`page_words` turns the library's error lines,
written for the command line (``--lr``, ``option lr=...``), into the page's
(the input's label), so a visitor is never told of a flag the page does not
have.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...runtime.errors import GraspError

#: the form's inputs as the page labels them, by the option (or command-line flag, dashes as underscores) each
#: sets; ui.py labels its inputs from here, so an error line and the page cannot name a field differently.
#: A method's own parameters are labelled with their names.
LABELS = {
    "benchmark": "benchmark", "text_column": "text column", "source_kind": "sources", "sources": "sources",
    "builtin_sources": "built-in sources",
    "repo_ids": "source repo ids", "target_kind": "target", "target": "target", "domain": "target domain",
    "target_domain": "target domain", "dataset": "dataset", "image_column": "image column",
    "label_column": "label column", "method": "method", "initial_epochs": "initial epochs",
    "finetune_epochs": "epochs after each source",
    "compare": "compare (GRASP, recommended, best source, ensemble)", "base": "base",
    "keep_start": "keep the start", "lr": "learning rate", "seed": "seed",
}

# a Hub repo id (org/name, optional @revision) and a Hub dataset id (name or org/name): what the page takes
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")
_DATASET_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# a flag of the command line (not "org/a--b", whose dashes follow a name), and an option named by resolve()
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
_OPTION = re.compile(r"\boption (\w+)(?:=(.*?))? \(from the form\)")


def label(name: str) -> str | None:
    """The page's label for option or parameter ``name`` (None: the page has no such input)."""
    from ...methods import METHODS

    if name in LABELS:
        return LABELS[name]
    return name if any(name in info.params.model_fields for info in METHODS.values()) else None


def refused(field: str, value, why: str) -> GraspError:
    """A refusal naming the input as the page labels it: ``"learning rate" ('abc'): why``."""
    shown = f" ({value!r})" if value is not None else ""
    return GraspError(f'"{LABELS.get(field, field)}"{shown}: {why}')


def is_local_path(text: str) -> bool:
    """Whether ``text`` names something on this machine's disk: absolute, relative, ``~``, ``file:``,
    ``local-dir:``, or anything that exists here as it is written (a repo id shadowed by a directory:
    the library would read the directory)."""
    if text.startswith(("/", ".", "~", "\\", "file:", "local-dir:")) or "\\" in text or ".." in text:
        return True
    try:
        return Path(text).expanduser().exists()
    except (OSError, ValueError):  # a name too long for a path, a NUL: not on this disk
        return False


def check_model_ref(text: str, field: str, *, allow_local: bool) -> str:
    """A source or base as the page takes it: a Hub repo id (``org/name[@revision]``, ``hf-hub:`` allowed);
    a local path only when ``allow_local``. Returns ``text``; raises a refusal naming ``field``."""
    if allow_local:
        return text
    bare = text[len("hf-hub:"):] if text.startswith("hf-hub:") else None
    if (bare is None and is_local_path(text)) or (bare is not None and ".." in bare):
        raise refused(field, text, "a path on the server; this page takes Hub repo ids only (org/name)")
    if not _REPO_ID.fullmatch(bare if bare is not None else text):
        raise refused(field, text, "not a Hub repo id (org/name or org/name@revision)")
    return text


def check_dataset(text: str, field: str, *, allow_local: bool, builtins: list[str]) -> str:
    """A target dataset as the page takes it: a built-in benchmark, or a Hub dataset id (``name`` or
    ``org/name``); a local path only when ``allow_local``. Returns ``text``; raises a refusal naming ``field``."""
    if allow_local or text in builtins:
        return text
    if is_local_path(text):
        raise refused(field, text, "a path on the server; this page takes Hub dataset ids (name or org/name) and "
                                   f"the built-in benchmarks ({', '.join(builtins)}) only")
    if not _DATASET_ID.fullmatch(text):
        raise refused(field, text, f"not a Hub dataset id (name or org/name) nor a built-in benchmark "
                                   f"({', '.join(builtins)})")
    return text


def page_words(message: str) -> str:
    """A library error line in the page's words: ``option lr='x' (from the form)`` -> ``"learning rate" ('x')``
    and ``--lr`` -> ``"learning rate"``; a flag the page has no input for is said to be the command line's."""
    def option(m: re.Match) -> str:
        shown = f'"{label(m[1]) or m[1]}"'
        return f"{shown} ({m[2]})" if m[2] is not None else shown

    def flag(m: re.Match) -> str:
        named = label(m[1].replace("-", "_"))
        return f'"{named}"' if named else f"{m[1]} (a command-line option, not on this page)"

    return _FLAG.sub(flag, _OPTION.sub(option, message))
