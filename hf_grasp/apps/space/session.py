"""One visitor's merge, without any UI: run it in a worker thread, report progress, keep what it made.

:func:`run_merge` is a generator. It starts the merge (``GraspMerger`` — the
library's only merging code) in a worker thread and yields :class:`Tick`
progress updates built from the run's own ``hf-grasp:`` log lines (the lines
the CLI prints), then one :class:`RunOutcome`. A :class:`GraspError` raised by
the run is re-raised in the caller's thread, so the page can show the same
``error: ...`` line the CLI prints.

After the visitor's merge, the same worker runs the comparison
(:func:`hf_grasp.apps.bench.compare.compare`): GRASP, the recommended method,
the best single source and the ensemble, whichever the visitor's method is not,
on the same sources, target, seed and splits, each a phase of the progress
bar. A visitor who cancels (or leaves) closes the generator: the worker stops at
its next log line or between two runs, and the run directory is removed.

Everything a run writes lives in its own directory (the merged model folder,
its zip, the comparison's reports and chart), so two visitors' runs never share a file.
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from ...runtime.errors import GraspError
from ...runtime.progress import log
from .results import page_heatmap

if TYPE_CHECKING:
    from PIL import Image

    from ...merger import MergeResult
    from ...output.report import MergeReport
    from ..bench.compare import Comparison

#: name of the merged model folder inside a run directory (also the folder inside the zip)
MERGED = "merged"
#: the report of the comparison's run of a role (grasp, recommended, best-source, ensemble), beside the merged folder
COMPARISON_REPORT = "comparison-{role}.json"
#: the comparison's chart, beside the merged folder
CHART = "comparison.png"
#: how many of the target's test examples (images or texts) the page offers to classify
N_EXAMPLES = 12

#: run directories whose merge is under way in this process: never swept, whatever their age
_running: set[Path] = set()
_running_lock = threading.Lock()


@dataclass(frozen=True)
class RunSpec:
    """What a visitor asked for: sources, target, method, shared options and the method's own parameters
    (``GraspMerger.from_pretrained``'s arguments), how the page names each source, and the extras around the
    merge."""

    sources: tuple[str, ...]
    target: str
    method: str = "grasp"
    options: dict[str, Any] = field(default_factory=dict)  # shared options (MergeOptions'), by name
    params: dict[str, Any] = field(default_factory=dict)  # the method's own parameters, by name
    labels: dict[str, str] = field(default_factory=dict)  # reference -> display name
    compare: bool = True  # also run GRASP, the recommended method, the best source and the ensemble
    builtin_home: Path | None = None  # make the built-in sources there first (once)
    builtin_benchmark: str = "digits-eras"  # whose built-in sources (digits-eras, tweet-eras)

    def label(self, ref: str) -> str:
        return self.labels.get(ref, ref)

    def relabel(self, line: str) -> str:
        """A log line with each labelled reference (a long local path) replaced by its display name."""
        for ref in sorted(self.labels, key=len, reverse=True):  # longest first: no path is cut by a shorter one
            line = line.replace(ref, self.labels[ref])
        return line


@dataclass
class Tick:
    """A progress update: how far (0..1), what is happening, one row per source, the log so far."""

    fraction: float
    desc: str
    rows: list[list[str]]
    lines: list[str]


@dataclass
class RunOutcome:
    """What a finished run made: the result object, its saved folder and zip, the comparison beside it."""

    spec: RunSpec
    result: MergeResult
    folder: Path
    zip_path: Path
    ensemble: MergeReport | None  # the ensemble's report (the comparison's row; the run itself for "ensemble")
    examples: list[tuple[Image.Image | str, int]]  # (image or text, label) from the target's test split
    label_names: list[str]
    seconds: float
    heatmap: Path | None = None  # the alignment heatmap with the page's source names (None: nothing scored)
    predictor: Any = None  # the reloaded ensemble, for classifying (made on first use)
    modality: str = "image"  # the target's: "image" or "text"
    comparison: Comparison | None = None  # GRASP, the recommended method, the best source, the ensemble
    chart: Path | None = None  # the comparison's chart (validation and test accuracy of every row)

    @property
    def report(self) -> MergeReport:
        return self.result.report

    @property
    def scored(self) -> tuple[MergeReport, bool]:
        """The report whose per-tensor transfer the page shows, and whether it is this run's: this run's when
        its method scores tensors (GRASP's family), else the GRASP run of the comparison when there is one."""
        if any(s.scores for s in self.report.sources) or self.comparison is None:
            return self.report, True
        from ..bench.compare import GRASP

        grasp = self.comparison.row(GRASP)
        return (grasp.report, False) if grasp is not None and grasp.report is not None else (self.report, True)


class Cancelled(BaseException):
    """Raised in a run's worker once its visitor cancelled or left: a BaseException, so that no ``except
    Exception`` on the way (the library's, or another's) takes it for an error of the run and goes on."""


class _Tap(logging.Handler):
    """Hands the ``hf_grasp`` log records of one thread to a queue: another visitor's run, in another thread,
    never shows up in this one's progress. Once ``cancelled`` is set, the worker's next log line (every epoch
    and every source logs one) raises :class:`Cancelled` there, which stops its run."""

    def __init__(self, events: queue.Queue, thread_id: int, cancelled: threading.Event | None = None):
        super().__init__(logging.INFO)
        self.events, self.thread_id, self.cancelled = events, thread_id, cancelled

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread_id:
            if self.cancelled is not None and self.cancelled.is_set():
                raise Cancelled("the visitor cancelled the run")
            self.events.put(("line", record.getMessage()))


class SourceBoard:
    """Per-source progress read from the run's log lines: waiting, fine-tuning (epoch e/E), done (the line's
    summary). A line belongs to the source whose reference it names (the longest, so ``org/m1`` does not
    claim ``org/m10``'s lines)."""

    _EPOCH = re.compile(r" epoch (\d+)/(\d+)")

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.refs = sorted(spec.sources, key=len, reverse=True)
        self.state = {ref: ("waiting", "") for ref in spec.sources}
        self.lines: list[str] = []

    def feed(self, line: str) -> None:
        self.lines.append(self.spec.relabel(line))
        ref = next((r for r in self.refs if r in line), None)
        if ref is None:
            return
        epoch = self._EPOCH.search(line)
        if epoch:
            self.state[ref] = ("fine-tuning", f"epoch {epoch[1]}/{epoch[2]}")
        else:
            self.state[ref] = ("done", line.split("): ", 1)[-1])

    @property
    def done(self) -> int:
        return sum(1 for status, _ in self.state.values() if status == "done")

    def rows(self) -> list[list[str]]:
        return [[self.spec.label(ref), *self.state[ref]] for ref in self.spec.sources]


def run_merge(spec: RunSpec, run_dir: Path) -> Iterator[Tick | RunOutcome]:
    """Run ``spec`` into ``run_dir`` (emptied first); yield :class:`Tick` s, then the :class:`RunOutcome`.

    Raises what the run raised (a :class:`GraspError` for bad input).
    """
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with _running_lock:
        _running.add(run_dir)
    events: queue.Queue = queue.Queue()
    cancelled = threading.Event()
    worker = threading.Thread(target=_work, args=(spec, run_dir, events, cancelled), name="hf-grasp-space-merge",
                              daemon=True)
    board = SourceBoard(spec)
    phase, at, start, delivered = "starting", 0.0, time.time(), False
    worker.start()
    try:
        while True:
            kind, value = events.get()
            if kind == "done":
                value.seconds, delivered = time.time() - start, True
                yield value
                return
            if kind == "error":
                raise value
            if kind == "phase":
                phase, at = value
                board.lines.append(f"— {phase}")
            elif phase == MERGING:
                board.feed(value)
            else:
                board.lines.append(spec.relabel(value))
            yield Tick(_fraction(phase, at, board.done, len(spec.sources)), _describe(phase, board), board.rows(),
                       list(board.lines))
    finally:
        if not delivered:
            # a failed run, or a visitor who cancelled or left mid-run (the generator is closed): the worker stops
            # at its next log line or run, and nobody will use its files
            cancelled.set()
            threading.Thread(target=_discard, args=(worker, run_dir), daemon=True).start()
        else:
            _finished(run_dir)


def _finished(run_dir: Path) -> None:
    with _running_lock:
        _running.discard(run_dir)


def _discard(worker: threading.Thread, run_dir: Path) -> None:
    worker.join()
    shutil.rmtree(run_dir, ignore_errors=True)
    _finished(run_dir)


def sweep_runs(runs: Path, max_age: float) -> list[Path]:
    """Remove the directories in ``runs`` last changed ``max_age`` seconds ago or earlier (0: all), but none
    holding a merge under way (its worker still writes there); returns those removed."""
    removed = []
    try:
        entries = [e for e in Path(runs).iterdir() if e.is_dir()]
    except OSError:  # not made yet, or gone
        return removed
    now = time.time()
    for entry in entries:
        with _running_lock:
            if any(r == entry or r.is_relative_to(entry) for r in _running):
                continue
        try:
            if max_age > 0 and now - entry.stat().st_mtime < max_age:
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


# the phases of a run, as the progress bar names them (each comparison run is one more: "comparing 2/3: ...")
MAKING, LOADING, MERGING = ("making the built-in sources (once; under a minute)",
                            "loading the target and checking the sources", "merging")
COMPARING, SAVING = "comparing on the same sources, seed and splits", "saving"
# where in 0..1 each phase starts (merging moves on with every source done; the comparison with every run)
_PHASES = {MAKING: 0.02, LOADING: 0.1, MERGING: 0.15, COMPARING: 0.55, SAVING: 0.95}


def _fraction(phase: str, at: float, done: int, total: int) -> float:
    if phase == MERGING:
        return _PHASES[MERGING] + (_PHASES[COMPARING] - _PHASES[MERGING]) * done / max(total, 1)
    return at


def _describe(phase: str, board: SourceBoard) -> str:
    if phase != MERGING:
        return phase
    return f"merging: {board.done}/{len(board.spec.sources)} sources done"


def _work(spec: RunSpec, run_dir: Path, events: queue.Queue, cancelled: threading.Event | None = None) -> None:
    """The worker thread: everything slow, with its log lines tapped into ``events``; stops once ``cancelled``."""
    cancelled = cancelled or threading.Event()
    tap = _Tap(events, threading.get_ident(), cancelled)
    log.addHandler(tap)

    def phase(name: str, at: float | None = None) -> None:
        if cancelled.is_set():  # between two steps of the run: nothing more is started
            raise Cancelled("the visitor cancelled the run")
        events.put(("phase", (name, _PHASES.get(name, 0.0) if at is None else at)))

    try:
        events.put(("done", _run(spec, run_dir, phase)))
    except BaseException as e:  # noqa: BLE001 - handed to the page's thread, which re-raises it
        events.put(("error", e))
    finally:
        log.removeHandler(tap)


def _run(spec: RunSpec, run_dir: Path, phase) -> RunOutcome:
    from ...merger import GraspMerger

    if spec.builtin_home is not None:
        from .builtin import ensure_sources, is_made

        if not is_made(spec.builtin_home, spec.builtin_benchmark):
            phase(MAKING)
        ensure_sources(spec.builtin_home, spec.builtin_benchmark)
    phase(LOADING)
    merger = GraspMerger.from_pretrained(list(spec.sources), target=spec.target, method=spec.method, **spec.options,
                                         **spec.params)
    phase(MERGING)
    result = merger.merge()

    comparison = None
    if spec.compare:
        from ..bench import compare

        def before_run(i: int, n: int, name: str) -> None:
            span = _PHASES[SAVING] - _PHASES[COMPARING]
            phase(f"{COMPARING} ({i}/{n}): {name}", _PHASES[COMPARING] + span * (i - 1) / n)

        comparison = compare.compare(spec.sources, target=spec.target, main=result.report, options=spec.options,
                                     label=spec.label, main_note="the model below", before_run=before_run)
        for role, report in comparison.reports.items():
            if report is not result.report:
                report.save(run_dir / COMPARISON_REPORT.format(role=role))
    phase(SAVING)
    folder = run_dir / MERGED
    result.save_pretrained(folder)
    zip_path = Path(shutil.make_archive(str(run_dir / f"hf-grasp-{spec.method}-merged"), "zip", root_dir=run_dir,
                                        base_dir=MERGED))
    data = merger.data
    names = data.label_names or [str(i) for i in range(data.num_labels)]
    ensemble = comparison.reports.get("ensemble") if comparison is not None else None
    if ensemble is None and spec.method == "ensemble":
        ensemble = result.report
    outcome = RunOutcome(spec=spec, result=result, folder=folder, zip_path=zip_path, ensemble=ensemble,
                         examples=_examples(data.splits["test"], data.modality), label_names=names, seconds=0.0,
                         modality=data.modality, comparison=comparison)
    outcome.heatmap = page_heatmap(outcome, run_dir / "alignment-page.png")
    if comparison is not None:
        from ..bench.compare import plot

        outcome.chart = plot(comparison, run_dir / CHART)
    return outcome


def _examples(test, modality: str = "image", n: int = N_EXAMPLES) -> list[tuple[Image.Image | str, int]]:
    """Up to ``n`` test images (or texts), round-robin over the classes (so every class shows up), with their
    labels."""
    labels = list(test["label"])
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    picked: list[int] = []
    while len(picked) < min(n, len(labels)):
        for rows in by_class.values():
            if rows and len(picked) < n:
                picked.append(rows.pop(0))
    column = "text" if modality == "text" else "image"
    return [(test[i][column], labels[i]) for i in picked]


def classify(outcome: RunOutcome, item: Image.Image | str, top: int = 5) -> dict[str, float]:
    """The merged model's top ``top`` classes for ``item`` (an image, or a text for a text classifier), as
    ``{class name: probability}``.

    A one-model result runs in memory (the same weights the zip holds), a text
    through the tokenizer saved with it, cut at the merge's maximum length; the
    ensemble is reloaded from its saved folder (it references its members).
    """
    import torch

    result = outcome.result
    text = outcome.modality == "text"
    if text != isinstance(item, str):
        raise GraspError(f"this merged model classifies {'texts' if text else 'images'}: "
                         f"{'type a text' if text else 'pick or upload an image'}")
    with torch.no_grad():
        if result.artifact is not None:
            if outcome.predictor is None:
                from ...methods.ensemble_model import EnsembleClassifier

                outcome.predictor = EnsembleClassifier.from_pretrained(outcome.folder)
            inputs = outcome.predictor.preprocess([item])
            out = outcome.predictor(**inputs) if text else outcome.predictor(inputs)
            probs = out.probabilities[0]
        else:
            if text:
                encoder = result.family.transform(outcome.folder, max_length=result.report.options["max_length"])
                inputs = encoder.pad(encoder.encode([item], None))
            else:
                inputs = {"pixel_values": result.family.image_transform(result.model_dir)([item])}
            probs = torch.softmax(result.family.logits(result.model, inputs), dim=-1)[0]
    best = torch.topk(probs, k=min(top, probs.numel()))
    names = outcome.label_names
    return {names[i] if i < len(names) else str(i): float(p) for p, i in zip(best.values, best.indices.tolist())}


def push(outcome: RunOutcome, repo_id: str, token: str, *, private: bool = False) -> str:
    """Push the merged model to the Hub model repo ``repo_id`` with ``token`` (this call only); returns the URL.

    The token must be typed: on a Space, falling back to ``HF_TOKEN`` would
    push with the Space owner's token on a visitor's behalf.
    """
    repo_id, token = (repo_id or "").strip(), (token or "").strip()
    if not repo_id:
        raise GraspError("push: type the Hub model repo id to push to (org/name)")
    if not token:
        raise GraspError("push: type a Hub token with write access (this page never uses a stored token)")
    return outcome.result.push_to_hub(repo_id, private=private or None, token=token)


__all__ = ["Cancelled", "RunSpec", "Tick", "RunOutcome", "SourceBoard", "run_merge", "sweep_runs", "classify",
           "push"]
