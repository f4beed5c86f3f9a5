"""Give freed heap memory back to the operating system between phases.

glibc keeps freed chunks of the C heap for reuse, so after a fine-tuning round
(gradients, AdamW moments) or an alignment step (two gradient sets) the process
keeps their pages and the next phase stacks on top of them. ``malloc_trim(0)``
returns the free pages; elsewhere (macOS, musl, Windows) this is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


_depth = [0]  # frozen_heap blocks open in this process


@contextlib.contextmanager
def frozen_heap():
    """Within the block, full collections skip every object that existed when it began.

    torch, transformers and datasets leave ~500k gc-tracked objects behind at
    import; every full ``gc.collect()`` walks them (~0.3 s here), and a merge or
    a training run collects between phases. On leaving, the objects go back to
    the oldest generation (garbage among them is collected later as usual).
    When the caller froze objects already it does nothing: freezing more there
    would keep an earlier block's cyclic garbage for good. Nested blocks (a
    fine-tuning round inside a merge) are recognised without asking the
    interpreter: ``gc.get_freeze_count()`` walks every frozen object (~50 ms here).
    """
    if _depth[0] > 0 or gc.get_freeze_count() > 0:
        _depth[0] += 1  # inside our own block, or the caller's freeze: nothing to do
        try:
            yield
        finally:
            _depth[0] -= 1
        return
    gc.freeze()
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        gc.unfreeze()


def release_freed_memory(*, collect: bool = True) -> None:
    """Collect garbage (unless ``collect`` is False: a full collection can take longer than the work it
    precedes), then hand free heap pages back to the OS (glibc only)."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
