"""Give freed heap memory back to the operating system between phases.

glibc keeps freed chunks of the C heap for reuse, so after a fine-tuning round
(gradients, AdamW moments) or an alignment step (two gradient sets) the process
keeps their pages and the next phase stacks on top of them. ``malloc_trim(0)``
returns the free pages; elsewhere (macOS, musl, Windows) this is a no-op.

Buffers that live through a whole phase (AdamW's moments, the probe's weights)
are allocated packed, one block per dtype (:func:`packed_empty`): a block of a
model's size is above glibc's 32 MiB mmap ceiling, so it is mapped on its own
and unmapped when freed, and the heap holds only the short-lived activations
and gradients. Tensor by tensor they sat in the heap among those, and the heap's
holes kept ~0.4P more resident at the peak (benchmarks/results/perf-memory/).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import itertools
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:  # torch is imported where tensors are made: the package imports without it
    import torch


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


def packed_empty(like: Iterable[torch.Tensor], *, zero: bool = False,
                 device: torch.device | None = None) -> list[torch.Tensor]:
    """Uninitialised (or zero) tensors shaped like ``like``, views into one block per (device, dtype).

    ``device`` places them there instead of on each tensor's own device (``like``
    may then be meta tensors that only carry shapes and dtypes). A tensor of
    ``like`` that is not contiguous gets its own tensor of the same strides, so
    elementwise kernels that pair it with its counterpart (a parameter with its
    AdamW moment) see one memory layout. The views are disjoint: each has its
    own ``data_ptr``; the block is freed when the last of them is.
    """
    import torch

    like = list(like)
    out: list[torch.Tensor | None] = [None] * len(like)
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(like):
        if t.is_contiguous():
            groups.setdefault((device or t.device, t.dtype), []).append(i)
        else:
            out[i] = (torch.zeros_like if zero else torch.empty_like)(t, device=device or t.device)
    for (where, dtype), index in groups.items():
        sizes = [like[i].numel() for i in index]
        block = (torch.zeros if zero else torch.empty)(sum(sizes), dtype=dtype, device=where)
        offsets = itertools.accumulate([0] + sizes)
        for i, start, n in zip(index, offsets, sizes):
            out[i] = block[start:start + n].view(like[i].shape)
    return out  # type: ignore[return-value]


def release_freed_memory(*, collect: bool = True) -> None:
    """Collect garbage (unless ``collect`` is False: a full collection can take longer than the work it
    precedes), then hand free heap pages back to the OS (glibc only)."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
