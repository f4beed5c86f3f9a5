"""What a run tells the person watching it: progress bars on a terminal, plain lines elsewhere.

One policy for the whole package. Long loops go through :func:`progress`;
milestones (an epoch done, a source merged) are :data:`log` lines. A bar is drawn
only when stderr is a terminal or a Jupyter kernel (or ``configure(progress=True)``),
``TQDM_DISABLE`` is not set and this is the first process on its machine
(``LOCAL_RANK`` 0 under ``accelerate launch``/``torchrun``); piped to a file, a run
writes one readable line per milestone instead of ``\\r`` frames.
``configure(quiet=True)`` keeps warnings only.

:data:`log` writes ``hf-grasp: <message>`` lines to stderr from import on (INFO
and up; WARNING and up when quiet) through its own handler, like ``transformers``
does for its loggers: the root logger is left alone and the lines do not
propagate to it. While bars are off, the bars of ``huggingface_hub``,
``transformers`` and ``datasets`` are off too.

Importing this module stays cheap: tqdm is imported when a bar is drawn, and
``transformers``/``datasets`` are switched only when already imported
(``datasets`` imported later reads ``HF_DATASETS_DISABLE_PROGRESS_BARS``, set here
unless the environment already sets it; ``transformers`` reads the state of
``huggingface_hub``).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, TypeVar

T = TypeVar("T")

log = logging.getLogger("hf_grasp")

_settings: dict[str, bool | None] = {"progress": None, "quiet": False}
_TRUE = {"1", "true", "yes", "on"}
#: environment variables this module set itself (and may therefore unset)
_env_set: set[str] = set()


def configure(*, progress: bool | None = None, quiet: bool = False) -> None:
    """Set the policy: ``progress`` True/False forces bars on/off (None: only on a terminal); ``quiet`` keeps warnings only.

    Also (re)installs the stderr handler of :data:`log` (once) at the matching
    level and switches the libraries' own bars with ours.
    """
    _settings["progress"], _settings["quiet"] = progress, quiet
    setup_logging()
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    _sync_library_bars(bars_enabled())


def bars_enabled() -> bool:
    """Whether progress bars are drawn now."""
    if _settings["quiet"] or os.environ.get("TQDM_DISABLE", "").lower() in _TRUE:
        return False
    if os.environ.get("LOCAL_RANK", "0") != "0":  # one bar per machine, not one per process
        return False
    if _settings["progress"] is not None:
        return bool(_settings["progress"])
    return sys.stderr.isatty() or _in_notebook()


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it",
             leave: bool = True) -> Iterable[T]:
    """``iterable`` with a tqdm bar when :func:`bars_enabled`, else unchanged."""
    if not bars_enabled():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave)


def setup_logging() -> logging.Handler:
    """Give :data:`log` its ``hf-grasp: <message>`` stderr handler; idempotent, returns the handler.

    The level is set to INFO only when nobody set one; :func:`configure` sets it.
    """
    for handler in log.handlers:
        if isinstance(handler, _StderrHandler):
            return handler
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    log.addHandler(handler)
    log.propagate = False  # the root logger's handlers (if any) would print every line again
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
    return handler


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (also when it is replaced later); above live bars, via ``tqdm.write``."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # StreamHandler.__init__ would bind today's sys.stderr

    @property
    def stream(self):
        return sys.stderr

    def emit(self, record: logging.LogRecord) -> None:
        tqdm = sys.modules.get("tqdm")
        if tqdm is None or not bars_enabled():
            super().emit(record)
            return
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)  # clears and redraws the bars around the line
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"hf-grasp: {level}{super().format(record)}"


def _in_notebook() -> bool:
    """Whether this is a Jupyter kernel (tqdm.auto draws widgets there, not ``\\r`` frames)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _sync_library_bars(enabled: bool) -> None:
    """Switch the bars of huggingface_hub, transformers and datasets on or off; environment settings win."""
    from huggingface_hub import constants as hub_constants
    from huggingface_hub import utils as hub_utils  # cheap; transformers copies its state when imported

    if hub_constants.HF_HUB_DISABLE_PROGRESS_BARS is None:
        (hub_utils.enable_progress_bars if enabled else hub_utils.disable_progress_bars)()
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        (transformers_logging.enable_progress_bar if enabled else transformers_logging.disable_progress_bar)()
    var = "HF_DATASETS_DISABLE_PROGRESS_BARS"
    if "datasets" not in sys.modules:  # it reads the variable when imported
        if not enabled and var not in os.environ:
            os.environ[var] = "1"
            _env_set.add(var)
        elif enabled and var in _env_set:
            del os.environ[var]
            _env_set.discard(var)
    elif getattr(sys.modules["datasets"].config, var) is None:
        import datasets

        (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()


setup_logging()
_sync_library_bars(bars_enabled())
