"""Multi-Source: the GRASP paper's parameter-averaging baseline.

The K sources' parameters and buffers are averaged uniformly, then the
average is fine-tuned on the target for the same total number of epochs GRASP
spends (``ctx.total_epochs``; the paper used 3). ``multi-source`` streams the
average (one source resident in the probe); ``multi-source-naive`` holds all K
sources at once and exists only so the memory benchmark can show the
difference.

Also home to the small streaming helpers the other baselines share.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..merge_math import running_mean_
from .base import MergeContext, register_method
from .grasp import PAPER

# --- shared helpers for the baselines ------------------------------------------


def unique_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict without aliases: a tied tensor appears once (in-place updates apply once)."""
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def parameter_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def fold_mean(target: dict[str, Tensor], source: dict[str, Tensor], counts: dict[str, int],
              skipped: Iterable[str] = ()) -> None:
    """Fold one source into a per-tensor running mean held in ``target``'s tensors, in place.

    ``counts`` names the tensors to average and how many sources each has seen.
    Float tensors: ``mean += (new - mean) / k``. Integer tensors (BatchNorm's
    ``num_batches_tracked``) are not averaged: the first source's is kept.
    Tensors in ``skipped`` (a head pre-flight left out) do not count.
    """
    skipped = set(skipped)
    with torch.no_grad():
        for name in counts:
            if name in skipped:
                continue
            t = target[name]
            if not t.is_floating_point():
                if counts[name] == 0:
                    t.copy_(source[name])
                    counts[name] = 1
                continue
            counts[name] += 1
            running_mean_(t, source[name], counts[name])


def finish_training_method(ctx: MergeContext, start: float, what: str) -> None:
    """Record the merge as is (step ``average``), fine-tune for ``ctx.total_epochs``, record again.

    No ``fine-tune`` step is recorded when the budget is 0 epochs.
    """
    ctx.record(step="average", source=None, validation=ctx.evaluate(split="validation"),
               test=ctx.evaluate(split="test"), seconds=time.time() - start)
    epochs = ctx.total_epochs
    if epochs == 0:
        return
    start = time.time()
    history = ctx.fine_tune(epochs, desc=f"fine-tune {what}")
    ctx.record(step="fine-tune", source=None, history=history, validation=ctx.evaluate(split="validation"),
               test=ctx.evaluate(split="test"), seconds=time.time() - start)


# --- the methods ----------------------------------------------------------------


@register_method("multi-source", pretty_name="Multi-Source (uniform parameter average, then fine-tuning)", paper=PAPER)
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
    for k, source in enumerate(tqdm(ctx.sources, desc="Multi-Source: average", unit="source")):
        skipped = set(ctx.skips.get(source.name, ()))
        if k == 0:
            ctx.load(ctx.merged, source)  # merged = S1
            counts.update({n: 1 for n in counts if n not in skipped})
            continue
        ctx.load(ctx.probe, source)
        fold_mean(merged, unique_state(ctx.probe), counts, skipped)
    finish_training_method(ctx, start, "average")


@register_method("multi-source-naive",
                 pretty_name="Multi-Source, naive (all K sources resident; memory comparison only)", paper=PAPER)
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
        for source in tqdm(ctx.sources, desc="Multi-Source (naive): load all", unit="source"):
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


__all__ = ["fold_mean", "multi_source", "multi_source_naive", "parameter_names", "unique_state"]
