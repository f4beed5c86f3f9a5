"""Sequential task arithmetic: each source's task vector added with its own λ, chosen on target validation.

::

    merged <- base
    for each source S_k, streamed into the probe:
        τ_k <- S_k - base                       (in the probe, the base read back tensor by tensor)
        λ_k <- argmax over the grid of validation accuracy of merged + λ τ_k
               (BatchNorm re-estimated on target train for each candidate; ties: lower loss, then smaller λ)
        merged <- merged + λ_k τ_k
    fine-tune merged for the budget every training method gets

λ = 0 keeps the previous state, so a source that does not help on validation
is left out. Task vectors are taken over parameters only (as task arithmetic
does); the BatchNorm statistics are the re-estimated ones of the chosen
candidate. Memory: the merged model, the probe (holding τ_k) and a copy of the
merged parameters before the step: flat in K.
"""

from __future__ import annotations

import time

import torch

from ..runtime.progress import progress
from ..inputs.sources import iter_tensors
from ..engine.context import MergeContext
from ..engine.records import StepKind
from .multi_source import finish_training_method
from .selection import better, float_buffers, judge, restore_buffers
from .state import parameter_names, unique_state


def sequential_ta(ctx: MergeContext) -> None:
    """``merged <- base``, then per source ``merged += λ_k (S_k - base)`` with λ_k picked on validation."""
    base = ctx.base_source
    grid = ctx.params.ta_grid
    t0 = time.time()
    ctx.load(ctx.merged, base)
    merged = unique_state(ctx.merged)
    params = parameter_names(ctx.merged)
    names = [n for n in merged if n in params]
    ctx.record(kind=StepKind.INIT, source=base.name, validation=judge(ctx), test=ctx.step_metrics("test"),
               seconds=time.time() - t0)
    chosen = []
    for k, source in enumerate(progress(ctx.sources, desc="sequential task arithmetic: λ per source",
                                        unit="source"), start=1):
        t0 = time.time()
        ctx.load(ctx.probe, source)
        vector = task_vector(ctx, source, names)
        before = {n: merged[n].detach().clone() for n in names}
        best, best_lam, best_buffers, tried = None, 0.0, None, {}
        for lam in grid:
            with torch.no_grad():
                for n in names:
                    torch.add(before[n], vector[n], alpha=lam, out=merged[n])
            metrics = judge(ctx)
            tried[str(lam)] = metrics["accuracy"]
            if better(metrics, best):
                best, best_lam, best_buffers = metrics, lam, float_buffers(ctx.merged)
        with torch.no_grad():
            for n in names:
                torch.add(before[n], vector[n], alpha=best_lam, out=merged[n])
        restore_buffers(ctx.merged, best_buffers)
        del before, vector
        chosen.append(best_lam)
        ctx.record(kind=StepKind.SOURCE, number=k, source=source.name, details={"scaling": best_lam, "tried": tried},
                   validation=best, test=ctx.step_metrics("test"), seconds=time.time() - t0)
    finish_training_method(ctx, t0, "sequential task arithmetic", scaling=chosen)


def task_vector(ctx: MergeContext, source, names: list[str]) -> dict[str, torch.Tensor]:
    """``S_k - base`` per parameter, computed in the probe (which holds ``S_k``) with the base read back.

    Zero where either side does not provide the tensor (a head pre-flight skipped).
    """
    probe = unique_state(ctx.probe)
    base, skipped = ctx.base_source, set(ctx.skips.get(source.name, ()))
    seen = set()
    with torch.no_grad(), base.present():
        for name, tensor in iter_tensors(base, ctx.skips.get(base.name, ()), ctx.naming):
            if name in probe and name in names and name not in skipped:
                probe[name].sub_(tensor.to(probe[name].device, probe[name].dtype))
                seen.add(name)
        for name in names:
            if name not in seen:
                probe[name].zero_()
    return {n: probe[n] for n in names}


__all__ = ["sequential_ta", "task_vector"]
