"""Multi-Source: the GRASP paper's parameter-averaging baseline.

The K sources' parameters and buffers are averaged uniformly, then the
average is fine-tuned on the target for the same total number of epochs GRASP
spends (``ctx.total_epochs``; the paper used 3). ``multi-source`` streams the
average (one source resident in the probe); ``multi-source-naive`` holds all K
sources at once and exists only so the memory benchmark can show the
difference.
"""

from __future__ import annotations

import gc
import time

import torch
from torch import Tensor

from ..runtime.progress import progress
from ..engine.context import MergeContext
from ..engine.records import StepKind
from .state import fold_mean, unique_state

def finish_training_method(ctx: MergeContext, start: float, what: str, *, soft_labels: Tensor | None = None,
                           **details) -> None:
    """Record the merge as is (step ``average``, with ``details``), fine-tune for ``ctx.total_epochs``, record again.

    No ``fine-tune`` step is recorded when the budget is 0 epochs. ``soft_labels``: targets per training example
    trained on instead of the labels (:meth:`~hf_grasp.engine.context.MergeContext.fine_tune`).
    """
    ctx.record(kind=StepKind.AVERAGE, validation=ctx.step_metrics("validation"),
               test=ctx.step_metrics("test"), seconds=time.time() - start, details=details)
    epochs = ctx.total_epochs
    if epochs == 0:
        return
    start = time.time()
    history = ctx.fine_tune(epochs, desc=f"fine-tune {what}", soft_labels=soft_labels)
    ctx.record(kind=StepKind.FINE_TUNE, history=history, validation=ctx.validation_after(history),
               test=ctx.step_metrics("test"), seconds=time.time() - start)


# --- the methods ----------------------------------------------------------------


def multi_source(ctx: MergeContext) -> None:
    """Uniform average of the sources' parameters and buffers, then ``ctx.total_epochs`` of fine-tuning.

    Streaming: ``merged = S1``, then each further source ``Sk`` sits in the
    probe while ``merged += (Sk - merged) / k``. Memory: the two models only
    (``ctx.merged``, ``ctx.probe``) — no extra model-sized buffer. Float
    buffers (BatchNorm running statistics) are averaged like parameters;
    integer buffers (``num_batches_tracked``) are the first source's. A head a
    source does not provide (``--skip-mismatched-heads``) is averaged over the
    sources that do.
    """
    start = time.time()
    merged = unique_state(ctx.merged)
    counts = dict.fromkeys(merged, 0)
    for k, source in enumerate(progress(ctx.sources, desc="Multi-Source: average", unit="source")):
        skipped = set(ctx.skips.get(source.name, ()))
        if k == 0:
            ctx.load(ctx.merged, source)  # merged = S1
            counts.update({n: 1 for n in counts if n not in skipped})
            continue
        ctx.load(ctx.probe, source)
        fold_mean(merged, unique_state(ctx.probe), counts, skipped)
    finish_training_method(ctx, start, "average")


def multi_source_naive(ctx: MergeContext) -> None:
    """The same average as ``multi-source``, computed by holding all K sources as K full models.

    Exists only for the memory benchmark: it builds one model per source
    (``ctx.family.build`` + ``ctx.load``), K model-sized sets of tensors besides
    ``ctx.merged`` and ``ctx.probe``, stacks each tensor across them and takes
    the mean, frees them, then fine-tunes exactly like ``multi-source``.
    """
    start = time.time()
    skips = [set(ctx.skips.get(s.name, ())) for s in ctx.sources]
    with torch.random.fork_rng(devices=[]):  # building K models must not shift the seeded RNG stream
        models = []
        for source in progress(ctx.sources, desc="Multi-Source (naive): load all", unit="source"):
            model = ctx.family.build(ctx.model_dir, trust_remote_code=ctx.options.trust_remote_code).float()
            ctx.load(model, source)
            models.append(model)
    states = [m.state_dict() for m in models]
    have: list[Tensor] = []
    with torch.no_grad():
        for name, t in unique_state(ctx.merged).items():
            have = [s[name] for s, skip in zip(states, skips) if name not in skip]
            if not have:
                continue
            t.copy_(torch.stack(have).mean(0) if t.is_floating_point() else have[0])
    del models, states, have
    gc.collect()
    finish_training_method(ctx, start, "average")


__all__ = ["finish_training_method", "multi_source", "multi_source_naive"]
