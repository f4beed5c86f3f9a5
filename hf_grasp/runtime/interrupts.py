"""Signals as exceptions, and an interrupt that is never lost.

Within :func:`signals_as_interrupts` (the CLI's whole run), Ctrl-C raises
``KeyboardInterrupt`` as usual and SIGTERM/SIGHUP raise :class:`Terminated`, so
that ``finally`` blocks and context managers clean up the same way for all three.
Each one is also remembered: a library's bare ``except:`` that happens to be
running when the signal lands swallows the exception (seen in CI: a Ctrl-C during
fine-tuning, then the merge finished and exited 0), and :func:`raise_if_interrupted`,
called by the long loops and before an output is put in place, raises it again.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

#: signals received within the block and not yet handled by the one who set it up
_pending: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP as an exception: ``finally`` blocks, context managers and ``atexit`` then clean up
    as they do for Ctrl-C (a KeyboardInterrupt, so ``except Exception`` on the way does not swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


@contextlib.contextmanager
def signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise and are remembered; their handlers are restored after.

    A signal ignored on purpose (``nohup``, ``trap '' TERM``) or handled by
    someone else stays so. After the first SIGTERM/SIGHUP, further ones are
    ignored so that they cannot cut the cleanup short (SIGKILL still ends the
    process); a second Ctrl-C raises again, as Python's own handler does. Only
    the main thread can set handlers: elsewhere (called from a worker thread)
    nothing changes.
    """
    ours = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    if hasattr(signal, "SIGHUP"):
        ours[signal.SIGHUP] = signal.SIG_DFL
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.getsignal(s) for s, usual in ours.items() if signal.getsignal(s) is usual}

    def handler(signum, frame):
        if signum != signal.SIGINT:
            for s in previous:
                if s != signal.SIGINT:
                    signal.signal(s, signal.SIG_IGN)
        _pending.append(signum)
        raise _interrupt(signum)

    for s in previous:
        signal.signal(s, handler)
    _pending.clear()
    try:
        yield
    finally:
        _pending.clear()
        for s, old in previous.items():
            signal.signal(s, old)


def raise_if_interrupted() -> None:
    """Raise again the interrupt a signal caused, if one was received within :func:`signals_as_interrupts`.

    Call it where a run may go on after a swallowed interrupt: in the long loops
    and before putting an output in place. Cheap (a list lookup). Outside the
    block (the Python API, where Python's own Ctrl-C handler is in place) nothing
    is recorded and this does nothing.
    """
    if _pending:
        raise _interrupt(_pending[-1])
