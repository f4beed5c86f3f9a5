"""A signal is never lost: an interrupt a library swallows is raised again by the run's own loops."""

from __future__ import annotations

import os
import signal

import pytest

from conftest import merge_fails

from hf_grasp.runtime.interrupts import Terminated, raise_if_interrupted, signals_as_interrupts


@pytest.fixture(autouse=True)
def usual_dispositions():
    """Each test starts from Python's usual handlers. Another test in the same pytest worker may have left a
    handler of its own on SIGINT (a full run failed so), and signals_as_interrupts leaves a handler it did
    not expect alone, by design."""
    names = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]
    saved = {s: signal.getsignal(getattr(signal, s)) for s in names}
    for s in names:
        signal.signal(getattr(signal, s), signal.default_int_handler if s == "SIGINT" else signal.SIG_DFL)
    yield
    for s, handler in saved.items():
        signal.signal(getattr(signal, s), handler)


def _swallowed(signum: int) -> None:
    """Send ``signum`` to this process inside a bare ``except:``, as a library's code would swallow it."""
    try:
        os.kill(os.getpid(), signum)
        for _ in range(10_000):  # the handler runs at the next bytecode; make sure it has
            pass
        raise AssertionError(f"{signal.Signals(signum).name} was not turned into an exception")
    except AssertionError:
        raise
    except:  # noqa: E722 - the point: what a bare except does to an interrupt
        pass


def test_a_swallowed_ctrl_c_is_raised_again_and_forgotten_after_the_block():
    before = signal.getsignal(signal.SIGINT)
    with signals_as_interrupts():
        raise_if_interrupted()  # nothing received yet
        _swallowed(signal.SIGINT)
        with pytest.raises(KeyboardInterrupt) as caught:
            raise_if_interrupted()
        assert not isinstance(caught.value, Terminated)
    assert signal.getsignal(signal.SIGINT) is before
    raise_if_interrupted()  # outside the block: nothing pending


def test_a_swallowed_sigterm_is_raised_again_as_terminated_and_a_second_one_is_ignored():
    with signals_as_interrupts():
        _swallowed(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # the cleanup cannot be cut short
        with pytest.raises(Terminated) as caught:
            raise_if_interrupted()
        assert caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_ignored_on_purpose_stays_ignored():
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with signals_as_interrupts():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            raise_if_interrupted()
    finally:
        signal.signal(signal.SIGHUP, old)


def test_a_merge_whose_ctrl_c_a_library_swallowed_still_stops_and_leaves_nothing(tmp_path, checkpoints,
                                                                                  monkeypatch):
    # the case CI met: Ctrl-C during fine-tuning swallowed, then the merge finished, wrote its output, exited 0
    import torch.nn.functional as F

    real, calls = F.cross_entropy, []

    def cross_entropy_that_swallows_a_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            _swallowed(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", cross_entropy_that_swallows_a_ctrl_c)
    line = merge_fails(tmp_path, checkpoints("resnet", 2), "--initial-epochs", "1", code=130)
    assert line == "error: interrupted by Ctrl-C (SIGINT); the run's temporary files were removed"
    assert len(calls) == 2  # stopped at the next batch, not after the remaining work
