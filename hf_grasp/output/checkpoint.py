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
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from ..engine.records import Step
from ..runtime.errors import GraspError, NonFiniteSourceError, ShapeMismatchError, SourceError, first_line
from ..plan.plan import MergePlan
from ..runtime.progress import log
from .report import read_json, write_json

STATE_NAME = "state.json"
FORMAT = 2  # 2: typed step records (Step.to_dict)


def work_area(output: str | os.PathLike) -> Path:
    """The resume work area of ``output``: the hidden sibling ``.NAME.resume``."""
    out = Path(os.path.abspath(Path(output).expanduser()))
    return out.parent / f".{out.name}.resume"


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
    refused with a line naming every difference.
    """

    def __init__(self, directory: str | os.PathLike, config: MergePlan, *, resume: bool = False,
                 shown: str | None = None):
        self.directory, self.config = Path(directory), config
        self.shown = shown or str(self.directory)
        self.state = self._read() if resume else None
        if not resume and self.state_path.exists():
            done = self._read()["steps_done"]
            raise GraspError(f"{self.shown}: an interrupted merge left its state after {done} step(s) here; pass "
                             "--resume to continue it, or --overwrite to start over")

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_NAME

    def _read(self) -> dict | None:
        if not self.state_path.exists():
            return None
        try:
            state = read_json(self.state_path)
            saved = MergePlan.from_dict(state["config"], where=str(self.state_path))
            steps, records, weights = int(state["steps_done"]), state["records"], state["weights"]
            if not re.fullmatch(r"merged-step\d+\.safetensors", weights):  # a name in the area, nothing else
                raise ValueError(f"weights {weights!r} is not a state file of this area")
            if not (isinstance(records, list) and len(records) == steps):
                raise ValueError(f"records do not describe {steps} finished steps")
            records = [_step(i, r) for i, r in enumerate(records, start=1)]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise GraspError(f"{self.shown}: its resume state {self.state_path} is unreadable ({e}); pass "
                             "--overwrite to start over") from None
        differences = self.config.differences(saved, theirs="in the interrupted run")
        if differences:
            raise GraspError(f"--resume: not the merge that was interrupted: {'; '.join(differences)}; rerun it "
                             "with its settings, or pass --overwrite without --resume to start over")
        return {"steps_done": steps, "records": records, "weights": weights}

    def restore(self, model) -> list[Step]:
        """Load the saved merged state into ``model`` (in place); the records of the steps done ([] if none)."""
        if not self.state:
            return []
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        path = self.directory / self.state["weights"]
        try:
            load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:  # a truncated file, a shape mismatch
            raise GraspError(f"{self.shown}: its saved merged state {path.name} cannot be loaded ({e}); pass "
                             "--overwrite to start over") from None
        return list(self.state["records"])

    def save(self, model, records: list[Step]) -> None:
        """Write the state after ``len(records)`` steps: the weights file first, then ``state.json`` (the
        commit point, replaced atomically), then remove the previous weights file."""
        from safetensors import SafetensorError
        from safetensors.torch import save_model

        from ..runtime.workspace import staged

        steps = len(records)
        weights = f"merged-step{steps}.safetensors"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with staged(self.directory / weights, file=True) as tmp:  # removed if the write fails
                save_model(model, str(tmp))
            write_json({"format": FORMAT, "steps_done": steps, "weights": weights, "config": self.config.to_dict(),
                        "records": [r.to_dict() for r in records]}, self.state_path)
        except (OSError, SafetensorError) as e:  # a full disk, a quota: safetensors raises its own type
            raise GraspError(f"{self.shown}: writing the merge's state after step {steps} failed ({first_line(e)}); "
                             "free space beside --output or choose another --output") from None
        for old in self.directory.glob("merged-step*.safetensors"):
            if old.name != weights:
                old.unlink()
        self.state = {"steps_done": steps, "records": records, "weights": weights}

    def discard(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


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
    """
    area = Path(area)
    existed = area.exists()
    try:
        yield area
    except BaseException as e:
        if area.exists():
            if existed or worth_keeping(e):
                log.warning("the merge's state after its last finished step is kept in %s: rerun the same command "
                            "with --resume to go on from there", area)
            else:
                shutil.rmtree(area, ignore_errors=True)
        raise
