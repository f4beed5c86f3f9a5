"""Resuming a sequential merge: the work area beside ``--output``.

After each step of a sequential method (GRASP and its ablations) the run
writes what it needs to go on: the merged model's state (safetensors), the
steps' records and how many steps are done, with the merge's configuration.
A rerun with ``--resume`` checks that it is the same merge, restores that state
and goes on from the next step. No RNG state is kept because none is carried
between steps: each step reseeds from ``(seed, step)``
(:meth:`~hf_grasp.engine.context.MergeContext.begin_step`), so a resumed
merge ends with the same bits as one that was never stopped.

The area is ``.NAME.resume`` beside the output ``NAME``; the CLI removes it once
the output is in place.

A state is trusted only as far as it is checked: no symbolic link is followed
(the area, ``state.json``, the weights file it names), the steps it records must
be the first steps of this run (kind, number and source), each local source must
still hold the bytes it held (its weight files' sha256, pinned in the state; a
Hub source is pinned by the commit in the configuration) and the weights must be
finite. Anything else is a :class:`ResumeStateError` naming the state file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..engine.records import Step, StepKind
from ..runtime.errors import GraspError, NonFiniteSourceError, ShapeMismatchError, SourceError, first_line, flag
from ..plan.plan import MergePlan
from ..runtime.progress import log
from .report import write_json

STATE_NAME = "state.json"
FORMAT = 3  # 2: typed step records (Step.to_dict); 3: local sources pinned by sha256 ("pins")
def _start_over() -> str:
    """The advice to start over, spelled for the caller (flags from the CLI, arguments from Python)."""
    return f"pass {flag('overwrite')} without {flag('resume')} to start over (this discards the state)"


class ResumeStateError(GraspError):
    """A resume state that cannot be trusted or does not fit this run: refused, never resumed over.

    The state is left as it was, with no advice to ``--resume`` (the same state would be refused again)."""


def _weights_name(steps: int) -> str:
    return f"merged-step{steps}.safetensors"


def work_area(output: str | os.PathLike) -> Path:
    """The resume work area of ``output``: the hidden sibling ``.NAME.resume`` (NAME shortened when it must be to
    fit the file system's limits)."""
    from ..runtime.workspace import sibling

    return sibling(Path(os.path.abspath(Path(output).expanduser())), ".resume")


def worth_keeping(error: BaseException) -> bool:
    """Whether a run stopped by ``error`` should keep its work area for ``--resume``.

    Kept after an interruption (Ctrl-C, SIGTERM) and after a source that could
    not be fetched (the network, the cache: fixable, then resumable). Dropped
    after a failure the same state would meet again: a NaN, a bad tensor, bad data.
    """
    if isinstance(error, KeyboardInterrupt):
        return True
    return isinstance(error, SourceError) and not isinstance(error, (ShapeMismatchError, NonFiniteSourceError))


class Checkpoint:
    """The work area of one merge: refuses another merge's state, saves after each step, restores on resume.

    ``resume=False`` and a state already there is refused (an interrupted run
    would otherwise be silently lost); ``resume=True`` and no state starts from
    the beginning. A state whose configuration differs from ``config`` is
    refused with a line naming every difference; a state that is malformed,
    reached through a symbolic link, or does not fit this run's steps and
    sources is refused as well (:class:`ResumeStateError`, see :meth:`restore`).
    """

    def __init__(self, directory: str | os.PathLike, config: MergePlan, *, resume: bool = False,
                 shown: str | None = None):
        self.directory, self.config = Path(directory), config
        self.shown = shown or str(self.directory)
        self._check_area()
        self.state = self._read() if resume else None
        if not resume and os.path.lexists(self.state_path):
            done = self._parse()["steps_done"]
            raise ResumeStateError(f"{self.shown}: an interrupted merge left its state after {done} step(s) here; "
                                   f"pass {flag('resume')} to continue it, or {flag('overwrite')} to start over")

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_NAME

    def _check_area(self) -> None:
        """Refuse an area that is a symbolic link or not a directory: its state would be read from (and written
        to, old weights deleted from) wherever the link points."""
        try:
            st = os.lstat(self.directory)
        except FileNotFoundError:
            return
        except OSError as e:
            raise ResumeStateError(f"{self.shown}: the resume area cannot be read ({e.strerror or e}); remove it, "
                                   f"or choose another {flag('output', None)}") from None
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(self.directory)
            raise ResumeStateError(f"{self.shown}: the resume area is a symbolic link (to {target}), which is never "
                                   f"followed; remove the link, or choose another {flag('output', None)}")
        if not stat.S_ISDIR(st.st_mode):
            raise ResumeStateError(f"{self.shown}: the resume area is not a directory; remove it, or choose another "
                                   f"{flag('output', None)}")

    def _unreadable(self, why: str) -> ResumeStateError:
        if len(why) > 160:  # a check quoting a damaged value may quote pages of it
            why = why[:157] + "..."
        return ResumeStateError(f"{self.shown}: its resume state {self.state_path} is unreadable ({why}); "
                                f"{_start_over()}")

    def _parse(self) -> dict:
        """The state file's content, every field checked (ResumeStateError naming the file and the field)."""
        try:
            fd, _ = _open_plain(self.state_path, limit=_STATE_LIMIT)
            with os.fdopen(fd, "rb") as f:
                state = json.loads(f.read().decode("utf-8"))
            if not isinstance(state, dict):
                raise ValueError(f"not a JSON object but {type(state).__name__}")
            if _depth(state) > _MAX_DEPTH:  # no state nests so deep; copying or reporting it would overflow the stack
                raise ValueError(f"nested more than {_MAX_DEPTH} levels deep")
            weights, steps = state["weights"], state["steps_done"]
            if not _plain_name(weights):  # a name in the area, nothing else
                raise ValueError(f"weights {_brief(weights)} is not a state file of this area")
            if not (_is_int(steps) and steps >= 0):
                raise ValueError(f"field 'steps_done' must be a count of steps, not {_brief(steps)}")
            if weights != _weights_name(steps):
                raise ValueError(f"weights {_brief(weights)} is not the state file of step {steps} "
                                 f"({_weights_name(steps)})")
            if state.get("format") != FORMAT:
                raise ValueError(f"format {_brief(state.get('format'))} is not {FORMAT}: written by another version "
                                 "of hf-grasp")
            digest, pins, config, records = state["weights_sha256"], state["pins"], state["config"], state["records"]
            if not _is_sha256(digest):
                raise ValueError(f"field 'weights_sha256' must be a sha256 (64 hex digits), not {_brief(digest)}")
            if not (isinstance(pins, dict) and all(isinstance(files, dict) and all(map(_is_sha256, files.values()))
                                                   for files in pins.values())):
                raise ValueError("field 'pins' must map each local source to its weight files' sha256")
            if not isinstance(config, dict):
                raise ValueError(f"field 'config' must be an object, not {type(config).__name__}")
            saved = MergePlan.from_dict(config, where="field 'config'")
            if not (isinstance(records, list) and len(records) == steps):
                raise ValueError(f"records do not describe {steps} finished steps")
            records = [_step(i, r) for i, r in enumerate(records, start=1)]
        except GraspError as e:  # the configuration's own check, which names its field
            raise self._unreadable(first_line(e)) from None
        except KeyError as e:
            raise self._unreadable(f"field {e.args[0]!r} is missing") from None
        except (OSError, ValueError, TypeError, AttributeError, RecursionError, OverflowError) as e:
            raise self._unreadable(first_line(e) if str(e) else type(e).__name__) from None
        return {"steps_done": steps, "records": records, "weights": weights, "weights_sha256": digest,
                "pins": pins, "config": saved}

    def _read(self) -> dict | None:
        if not os.path.lexists(self.state_path):
            return None
        state = self._parse()
        differences = self.config.differences(state.pop("config"), theirs="in the interrupted run")
        if differences:
            raise ResumeStateError(f"{flag('resume')}: not the merge that was interrupted: {'; '.join(differences)}; "
                                   f"rerun it with its settings, or pass {flag('overwrite')} without {flag('resume')} "
                                   "to start over")
        return state

    def restore(self, model, *, expected: Iterable[tuple[StepKind, int | None, str]] | None = None,
                inputs: Iterable[Any] | None = None) -> list[Step]:
        """Load the saved merged state into ``model`` (in place); the records of the steps done ([] if none).

        ``expected``: this run's steps as ``(kind, number, source name)``; the
        state must record a prefix of them, no more steps and no other.
        ``inputs``: this run's resolved sources (init and base included); each
        local one must still hold the weight files (by sha256) the state pinned.
        The weights file must be a plain file of the area holding the bytes the
        state recorded, and finite. Anything else is a :class:`ResumeStateError`.
        """
        if not self.state:
            return []
        records = list(self.state["records"])
        if expected is not None:
            self._check_steps(records, list(expected))
        if inputs is not None:
            self._check_pins(_pins(inputs))
        self._load(model)
        return records

    def _check_steps(self, records: list[Step], expected: list[tuple[StepKind, int | None, str]]) -> None:
        where = f"{flag('resume')}: resume state {self.state_path}"
        if len(records) > len(expected):
            sources = sum(1 for kind, _, _ in expected if kind is StepKind.SOURCE)
            raise ResumeStateError(f"{where} records {len(records)} finished step(s), but this merge has only "
                                   f"{len(expected)} ({sources} source step(s)); it is not this merge's state: "
                                   f"{_start_over()}")
        for i, (record, (kind, number, source)) in enumerate(zip(records, expected), start=1):
            if (record.kind, record.number, record.source) != (kind, number, source):
                raise ResumeStateError(f"{where}: record {i} is {record.label} ({record.source!r}) but step {i} of "
                                       f"this merge is {kind.label(number)} ({source!r}); it is not this merge's "
                                       f"state: {_start_over()}")

    def _check_pins(self, now: dict[str, dict[str, str]]) -> None:
        then = self.state["pins"]
        for name in sorted(set(now) | set(then)):
            if name not in then or name not in now:
                raise ResumeStateError(f"{flag('resume')}: local source {name!r} is "
                                       f"{'not ' if name in now else ''}read by the interrupted run but "
                                       f"{'is' if name in now else 'not'} by this one "
                                       f"(resume state {self.state_path}); {_start_over()}")
            for file in sorted(set(now[name]) | set(then[name])):
                a, b = now[name].get(file), then[name].get(file)
                if a != b:
                    what = (f"its {file} is new" if b is None else f"its {file} is gone" if a is None else
                            f"its {file} has sha256 {a[:12]}... now, {b[:12]}... then")
                    raise ResumeStateError(f"{flag('resume')}: local source {name!r} changed since the interrupted run "
                                           f"({what}); restore its files, or {_start_over()}")

    def _load(self, model) -> None:
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        path = self.directory / self.state["weights"]

        def corrupt(why: str) -> ResumeStateError:
            return ResumeStateError(f"{self.shown}: its resume state is corrupt: {path.name} {why}; {_start_over()}")

        try:
            fd, st = _open_plain(path)
            with os.fdopen(fd, "rb") as f:
                digest = _sha256(f)
            if digest != self.state["weights_sha256"]:
                raise corrupt(f"does not hold the bytes {STATE_NAME} recorded (its sha256 is {digest[:12]}...)")
            load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))
            # the file loaded is the file hashed: not replaced between the two (a link put in its place)
            again = os.lstat(path)
            if (again.st_dev, again.st_ino, again.st_mtime_ns) != (st.st_dev, st.st_ino, st.st_mtime_ns):
                raise corrupt("was replaced while it was read")
        except ValueError as e:  # _open_plain: a link, not a plain file ("NAME is a symbolic link, ...")
            raise corrupt(first_line(e).removeprefix(f"{path.name} ")) from None
        except (OSError, RuntimeError, SafetensorError) as e:  # a truncated file, a shape mismatch
            raise ResumeStateError(f"{self.shown}: its saved merged state {path.name} cannot be loaded "
                                   f"({first_line(e)}); {_start_over()}") from None
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise corrupt(f"holds NaN or inf in tensor {name!r} (no step saves such weights)")

    def save(self, model, records: list[Step], *, inputs: Iterable[Any] | None = None) -> None:
        """Write the state after ``len(records)`` steps: the weights file first, then ``state.json`` (the
        commit point, replaced atomically), then remove the previous weights file. ``inputs``: this run's
        resolved sources, whose local ones are pinned by their weight files' sha256 (see :meth:`restore`)."""
        from safetensors import SafetensorError
        from safetensors.torch import save_model

        from ..runtime.workspace import staged

        steps = len(records)
        weights = _weights_name(steps)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._check_area()  # made by another hand since this run started: never written through a link
            with staged(self.directory / weights, file=True) as tmp:  # removed if the write fails
                save_model(model, str(tmp))
                with open(tmp, "rb") as f:
                    digest = _sha256(f)
            pins = _pins(inputs) if inputs is not None else {}
            write_json({"format": FORMAT, "steps_done": steps, "weights": weights, "weights_sha256": digest,
                        "pins": pins, "config": self.config.to_dict(), "records": [r.to_dict() for r in records]},
                       self.state_path)
        except (OSError, SafetensorError) as e:  # a full disk, a quota: safetensors raises its own type
            raise GraspError(f"{self.shown}: writing the merge's state after step {steps} failed ({first_line(e)}); "
                             f"free space beside {flag('output', None)} or choose another "
                             f"{flag('output', None)}") from None
        for old in self.directory.glob("merged-step*.safetensors"):
            if old.name != weights:
                old.unlink()  # a link is removed, never what it points to
        self.state = {"steps_done": steps, "records": records, "weights": weights, "weights_sha256": digest,
                      "pins": pins}

    def discard(self) -> None:
        if not os.path.islink(self.directory):  # rmtree refuses a link anyway; say so in the code too
            shutil.rmtree(self.directory, ignore_errors=True)


_STATE_LIMIT = 1 << 28  # bytes: a state.json of 1000 steps of a large model's scores is a few MB
_MAX_DEPTH = 32         # JSON nesting: a record's details are a few levels deep


def _open_plain(path: Path, limit: int | None = None) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without following a symbolic link; a ValueError unless it is a plain file
    with one link (a hard link could be a source's weights). Returns the descriptor and its stat."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        if os.path.islink(path):  # ELOOP from O_NOFOLLOW
            raise ValueError(f"{path.name} is a symbolic link, which is never followed") from None
        raise
    st = os.fstat(fd)
    why = ("is not a plain file" if not stat.S_ISREG(st.st_mode) else
           "has other hard links" if st.st_nlink > 1 else
           f"is larger than {limit} bytes" if limit is not None and st.st_size > limit else None)
    if why:
        os.close(fd)
        raise ValueError(f"{path.name} {why}")
    return fd, st


def _sha256(f) -> str:
    import hashlib

    return hashlib.file_digest(f, "sha256").hexdigest()


def _pins(inputs: Iterable[Any]) -> dict[str, dict[str, str]]:
    """Local source name -> {weight file: sha256} (hashed at resolution). A Hub source (one with a commit) is
    pinned by the configuration instead; a deferred one is hashed only as it is read."""
    return {s.name: dict(s.hashes) for s in inputs if s is not None and s.commit is None and not s.deferred}


def _plain_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
            and os.path.basename(name) == name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _brief(value: Any) -> str:
    """``repr(value)`` cut to one short phrase (a field of a damaged file may be anything)."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _depth(value: Any) -> int:
    """How deep ``value`` nests lists and objects, measured without recursion."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > _MAX_DEPTH:
                break
            todo.extend((x, level + 1) for x in (item.values() if isinstance(item, dict) else item))
    return deepest


def _step(i: int, data) -> Step:
    """Record ``i`` of a resume state, checked (what the report of the resumed merge is built from)."""
    try:
        return Step.from_dict(data)
    except ValueError as e:
        raise ValueError(f"record {i}: {e}") from None


@contextlib.contextmanager
def kept_for_resume(area: str | os.PathLike) -> Iterator[Path]:
    """Around a merge that checkpoints into ``area``: on failure, keep what ``--resume`` can use, drop the rest.

    After an interruption or a source that could not be fetched (see
    :func:`worth_keeping`), or when the state was there before this run, the
    state stays and one line says how to go on; after any other failure the
    state this run wrote is removed (a rerun would meet the same failure). On
    success the area is left for the caller to remove once the result is saved.
    A refused state (:class:`ResumeStateError`) is left as it was without that
    line: its own error says how to go on, and ``--resume`` would be refused again.
    """
    area = Path(area)
    existed = os.path.lexists(area)
    try:
        yield area
    except BaseException as e:
        if os.path.lexists(area) and not isinstance(e, ResumeStateError):
            if worth_keeping(e):
                log.warning("the merge's state after its last finished step is kept in %s: rerun the same command "
                            f"with {flag('resume')} to go on from there", area)
            elif existed:  # the steps it holds are still worth having; whether --resume goes on depends on e
                log.warning("the merge's state from before this run is left in %s", area)
            else:
                shutil.rmtree(area, ignore_errors=True)
        raise
