"""Where a merge's wall time goes: seconds per phase, for the report and ``benchmarks/perf.py``.

Phases never nest: each second of a merge is counted under at most one name
(``data``, ``load``, ``alignment``, ``transfer``, ``train``, ``validation``,
``best_state``, ``test``, ``eval_sources``, ``checkpoint``).

:class:`RunClock` is the whole run's: from the process's start for the command
line (imports, data and saving included), which the summary states beside the
merge engine's share.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator


class PhaseTimer:
    """Accumulates wall seconds per phase name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Count the block's wall time under ``name``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def phase(timer: PhaseTimer | None, name: str):
    """``timer.phase(name)``, or a no-op block without a timer."""
    return timer.phase(name) if timer is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class RunClock:
    """When a run started, and what that instant is, for the summary's wall time (``since`` completes a phrase:
    "N s since <since>")."""

    started: float  # time.time()
    since: str

    @classmethod
    def now(cls, since: str) -> "RunClock":
        return cls(time.time(), since)

    @classmethod
    def process(cls) -> "RunClock":
        """From this process's start: what ``time hf-grasp ...`` measures (the interpreter and imports included)."""
        return cls(time.time() - process_age(), "the process started")

    def seconds(self) -> float:
        return time.time() - self.started


def process_age() -> float:
    """Seconds since this process started.

    On Linux psutil's ``create_time()`` is the boot time, which the kernel gives in whole seconds, plus the
    start in clock ticks, so it can be up to 1 s early; the start's offset from boot (``create_time() -
    boot_time()``, exact to a tick) against the clock since boot is exact.
    """
    import psutil

    me = psutil.Process()
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME) - (me.create_time() - psutil.boot_time())
    return time.time() - me.create_time()
