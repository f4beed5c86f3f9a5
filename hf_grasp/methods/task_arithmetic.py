"""Task arithmetic and TIES-merging: data-free merges of task vectors relative to ``--base``.

Both run tensor by tensor across the sources: for each parameter name, the
base's tensor and the K sources' tensors of that one name are read
memory-mapped from their safetensors files (:func:`hf_grasp.inputs.sources.iter_across`),
merged with peft's ``merge_utils`` and written into ``ctx.merged``. So at any
moment K+1 slices of a single tensor are resident — never K models — and no
model-sized buffer besides ``ctx.merged`` (the probe is idle). TIES needs all
K values of an entry at once to elect its sign, which is why the stream is per
tensor rather than per source.

Buffers (BatchNorm running statistics) are the base's: task vectors are taken
over parameters only. ``--recalibrate-bn`` re-estimates the statistics on
target images after the merge.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import Tensor

from ..runtime.progress import progress
from ..engine import merge_math
from ..inputs.sources import iter_across
from ..engine.context import MergeContext
from ..engine.records import StepKind
from .state import parameter_names, unique_state


def merge_task_vectors(ctx: MergeContext, merge_one: Callable[[Tensor, list[Tensor]], Tensor], desc: str) -> None:
    """``ctx.merged <- base``, then every parameter ``<- merge_one(base tensor, source tensors)``.

    A source that does not provide a tensor (a head skipped by pre-flight)
    contributes a zero task vector. A tensor the base does not provide (its
    head has another label count) has no task vectors: it becomes the uniform
    mean of the sources that provide it.
    """
    base = ctx.base_source
    ctx.load(ctx.merged, base)  # buffers stay the base's
    merged = unique_state(ctx.merged)
    params = parameter_names(ctx.merged)
    names = [n for n in merged if n in params]
    everyone = [base, *ctx.sources]
    skips = [ctx.skips.get(s.name, ()) for s in everyone]
    with torch.no_grad():
        rows = iter_across(everyone, names, skips, device=ctx.accelerator.device, naming=ctx.naming)
        for name, (b, *tensors) in progress(rows, total=len(names), desc=desc, unit="tensor"):
            have = [t for t in tensors if t is not None]
            if not have:
                continue
            if b is None:
                value = torch.stack(have).mean(0)
            else:
                value = merge_one(b, [t if t is not None else b for t in tensors])
            merged[name].copy_(value)


def _record(ctx: MergeContext, start: float) -> None:
    ctx.record(kind=StepKind.MERGE, validation=ctx.step_metrics("validation"),
               test=ctx.step_metrics("test"), seconds=time.time() - start)


def task_arithmetic(ctx: MergeContext) -> None:
    """``merged = base + λ Σ_k (S_k - base)`` per parameter, λ = ``ctx.params.scaling``; no training.

    Memory: ``ctx.merged`` and ``ctx.probe`` (idle) plus the K+1 slices of one
    tensor being merged — no extra model-sized buffer.
    """
    start = time.time()
    scaling = ctx.params.scaling
    merge_task_vectors(ctx, lambda b, ts: merge_math.task_arithmetic(b, ts, scaling),
                       desc=f"task arithmetic (λ={scaling:g})")
    _record(ctx, start)


def ties(ctx: MergeContext) -> None:
    """TIES-merging: trim each task vector to its top ``--density``, elect signs, disjoint mean, × λ.

    peft's ``ties(task_tensors, weights=λ, density, majority_sign_method="total")``
    per parameter, λ = ``ctx.params.scaling``; no training. Differences from the
    paper: the trim keeps the top fraction of each tensor (peft), not of the
    whole flattened task vector. Memory: ``ctx.merged`` and ``ctx.probe``
    (idle) plus the K+1 slices of one tensor — no extra model-sized buffer.
    """
    start = time.time()
    scaling, density = ctx.params.scaling, ctx.params.density
    merge_task_vectors(ctx, lambda b, ts: merge_math.ties(b, ts, scaling=scaling, density=density),
                       desc=f"TIES (λ={scaling:g}, density={density:g})")
    _record(ctx, start)


__all__ = ["merge_task_vectors", "task_arithmetic", "ties"]
