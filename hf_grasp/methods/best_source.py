"""``best-source``: what a practitioner tries first. Pick the source that scores best on target validation and
fine-tune it.

1. **Judge.** Each source streams into the merged model and is judged alone,
   exactly as greedy soup ranks its ingredients (:func:`~hf_grasp.methods.selection.rank_sources`:
   BatchNorm re-estimated on target train in a fixed order, then accuracy on
   target validation; ties go to the lower loss, then to the earlier source).
2. **Keep** the best one: streamed in again, so the merged model holds its
   parameters bit for bit (its BatchNorm statistics the re-estimated ones it
   was judged with).
3. **Fine-tune** it for the budget every training method gets (``--keep-start``
   honoured).

Memory: the merged model only (the probe is never filled): flat in K.
"""

from __future__ import annotations

import time

from ..engine.context import MergeContext
from .multi_source import finish_training_method
from .selection import judge, rank_sources


def best_source(ctx: MergeContext) -> None:
    """Keep the source with the best target-validation accuracy (BatchNorm re-estimated), then fine-tune it."""
    ranked = rank_sources(ctx, "best source: judge each source")
    t0 = time.time()
    kept, tried = keep_best(ctx, ranked)
    finish_training_method(ctx, t0, "best source", kept=kept, tried=tried)


def keep_best(ctx: MergeContext, ranked: list) -> tuple[list[str], list[dict]]:
    """The first of ``ranked`` (:func:`~hf_grasp.methods.selection.rank_sources`' order) into ``ctx.merged``, with
    the BatchNorm statistics it was judged with; returns its name (in a list) and each source tried."""
    best = ranked[0][2]
    if best is not ctx.sources[-1]:  # the last one judged is still in place, statistics and all
        ctx.load(ctx.merged, best)
        judge(ctx)  # the statistics it was judged with again: judging is deterministic
    return [best.name], [{"source": s.name, "val_accuracy": m["accuracy"], "kept": s is best} for m, _, s in ranked]


__all__ = ["best_source", "keep_best"]
