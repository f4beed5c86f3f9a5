"""Where a merge's wall time goes: seconds per phase, for the report and ``benchmarks/perf.py``.

Phases never nest: each second of a merge is counted under at most one name
(``data``, ``load``, ``alignment``, ``transfer``, ``train``, ``validation``,
``best_state``, ``test``, ``eval_sources``, ``checkpoint``).
"""

from __future__ import annotations

import contextlib
import time
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
