"""Greedy soup (Wortsman et al., ICML 2022, "Model soups"), streamed: one source resident at a time.

1. **Rank.** Each source streams into the merged model once and is judged
   alone on target validation (BatchNorm re-estimated on target train first,
   :func:`~hf_grasp.methods.selection.judge`); sources are ordered best first.
2. **Greedy.** The soup starts as the best source. Each further source, in that
   order, streams into the probe; the candidate is the uniform average of the
   kept sources and this one. It is judged the same way and the source is
   kept when validation accuracy does not drop (≥); otherwise the soup goes
   back to the average of the sources kept so far.
3. **Fine-tune** the soup for the budget every training method gets.

Parameters and floating-point buffers are averaged (the soup's BatchNorm
statistics are then the re-estimated ones); integer buffers are the best
source's. A head a source does not provide (``--skip-mismatched-heads``) is
averaged over the kept sources that do. Memory: the merged model, the probe and
the running sum of the kept sources (one model's worth): flat in K.
"""

from __future__ import annotations

import time

import torch

from ..runtime.progress import progress
from ..engine.context import MergeContext
from .multi_source import finish_training_method
from .selection import float_buffers, judge, rank_sources, restore_buffers
from .state import unique_state


def greedy_soup(ctx: MergeContext) -> None:
    """Rank the sources on validation, add each to a uniform soup only if validation accuracy does not drop."""
    ranked = rank_sources(ctx, "greedy soup: judge each source")
    t0 = time.time()
    kept, tried = cook(ctx, ranked)
    finish_training_method(ctx, t0, "greedy soup", kept=kept, tried=tried)


def cook(ctx: MergeContext, ranked: list, *, on: tuple[str, ...] = ("validation",)) -> tuple[list[str], list[dict]]:
    """The greedy soup of ``ranked`` (:func:`~hf_grasp.methods.selection.rank_sources`' order) into
    ``ctx.merged``, its BatchNorm statistics the re-estimated ones, each candidate judged on the splits ``on``;
    returns the names kept and each one tried."""
    first = ranked[0][2]
    ctx.load(ctx.merged, first)
    merged = {n: t for n, t in unique_state(ctx.merged).items() if t.is_floating_point()}
    first_skips = set(ctx.skips.get(first.name, ()))
    soup = {n: t.detach().clone() for n, t in merged.items()}  # the running sum of the kept sources
    counts = {n: 0 if n in first_skips else 1 for n in merged}
    current = judge(ctx, on=on)
    current_buffers = float_buffers(ctx.merged)
    kept, tried = [first.name], []
    for _, _, source in progress(ranked[1:], desc="greedy soup: add if validation holds", unit="source"):
        ctx.load(ctx.probe, source)
        probe = unique_state(ctx.probe)
        skipped = set(ctx.skips.get(source.name, ()))
        adds = {n for n in merged if n not in skipped}
        _set_mean(merged, soup, counts, probe, adds)
        candidate = judge(ctx, on=on)
        keep = candidate["accuracy"] >= current["accuracy"]
        tried.append({"source": source.name, "val_accuracy": candidate["accuracy"], "kept": keep})
        if keep:
            with torch.no_grad():
                for n in adds:
                    soup[n].add_(probe[n])
                    counts[n] += 1
            kept.append(source.name)
            current, current_buffers = candidate, float_buffers(ctx.merged)
        else:
            _set_mean(merged, soup, counts, probe, set())
            restore_buffers(ctx.merged, current_buffers)
    del soup
    return kept, tried


def _set_mean(merged: dict, soup: dict, counts: dict, probe: dict, adds: set) -> None:
    """``merged <- (soup + probe) / (count + 1)`` for the tensors in ``adds``, ``soup / count`` for the rest."""
    with torch.no_grad():
        for n, t in merged.items():
            if n in adds:
                torch.add(soup[n], probe[n], out=t).div_(counts[n] + 1)
            elif counts[n]:
                torch.div(soup[n], counts[n], out=t)


__all__ = ["cook", "greedy_soup"]
