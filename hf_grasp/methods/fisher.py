"""Fisher merging (Matena & Raffel, 2022, "Merging Models with Fisher-Weighted Averaging").

Each parameter entry is the average of the sources' entries weighted by each
source's diagonal Fisher information, estimated on target-train images::

    merged = Σ_k c_k (F_k + ε) θ_k / Σ_k c_k (F_k + ε)

following FusionBench's ``fisher_merging`` (itself MergeLM's): ε = 1e-6
(``minimal_fisher_weight``) and ``normalize_fisher_weight`` on, i.e.
``c_k = 1 / (||F_k|| + ε)`` with the norm over the whole model, so a source
whose gradients are globally larger does not dominate.

The Fisher is FusionBench's: the expectation over the model's own predictive
distribution (not the empirical Fisher with the labels), computed per batch
as the squared gradient of ``Σ_n Σ_y sqrt(p(y|x_n)) log p(y|x_n)`` and
divided by the number of examples (:func:`hf_grasp.engine.merge_math.fisher_objective`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor, nn

from ..runtime.progress import progress
from ..engine import merge_math
from ..inputs.data import make_loader
from ..engine.context import MergeContext
from ..engine.records import StepKind
from ..engine.training import on_device
from .state import fold_mean, parameter_names, unique_state

MINIMAL_FISHER_WEIGHT = 1e-6


def fisher_loader(ctx: MergeContext) -> torch.utils.data.DataLoader:
    """The same seeded ``--fisher-examples`` target-train rows for every source, eval preprocessing."""
    train = ctx.data.splits["train"]
    n = min(ctx.params.fisher_examples, len(train))
    rows = np.random.default_rng(ctx.options.seed).permutation(len(train))[:n]
    return make_loader(train, ctx.eval_transform, batch_size=ctx.options.batch_size, shuffle=False,
                       preprocessed=ctx.data.preprocessed.get("train"), rows=sorted(rows.tolist()))


def diagonal_fisher(ctx: MergeContext, model: nn.Module, loader) -> dict[str, Tensor]:
    """FusionBench's diagonal Fisher of ``model`` over ``loader``: Σ_batches grad² / n_examples.

    Eval mode (deterministic, BatchNorm on the model's own statistics), like
    ``ctx.gradients``.
    """
    model.eval()
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    seen = 0
    for batch in loader:
        model.zero_grad(set_to_none=True)
        batch = on_device(batch, ctx.accelerator.device)
        merge_math.fisher_objective(ctx.family.logits(model, batch)).backward()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if p.grad is not None:
                    fisher[n].add_(p.grad.square())
        seen += len(batch["labels"])
    model.zero_grad(set_to_none=True)
    for f in fisher.values():
        f.div_(max(seen, 1))
    return fisher


def fisher(ctx: MergeContext) -> None:
    """Diagonal-Fisher-weighted average of the sources' parameters; no training.

    Streaming, one source in the probe at a time. Memory besides ``ctx.merged``
    and ``ctx.probe``: two model-sized sets of parameter tensors — the current
    source's Fisher ``F_k`` and the running ``Σ c_k (F_k + ε)`` — plus the
    probe's gradients while the Fisher is estimated. The running numerator
    ``Σ c_k (F_k + ε) θ_k`` accumulates in ``ctx.merged``'s own parameters,
    divided by the denominator at the end. Buffers (BatchNorm running
    statistics) are the uniform running average of the sources' (integer ones:
    the first source's), as in ``multi-source``.
    """
    start = time.time()
    loader = fisher_loader(ctx)
    params = dict(ctx.merged.named_parameters())
    probe_params = dict(ctx.probe.named_parameters())
    merged = unique_state(ctx.merged)
    skips = {s.name: set(ctx.skips.get(s.name, ())) for s in ctx.sources}
    # parameters some source provides: their numerator starts at 0 in ctx.merged
    names = [n for n in merged if n in params and any(n not in skips[s.name] for s in ctx.sources)]
    buffer_counts = dict.fromkeys((n for n in merged if n not in parameter_names(ctx.merged)), 0)
    with torch.no_grad():
        for n in names:
            params[n].zero_()
    denominator = {n: torch.zeros_like(params[n]) for n in names}
    for source in progress(ctx.sources, desc="Fisher merging", unit="source"):
        ctx.load(ctx.probe, source)
        skipped = skips[source.name]
        fisher_k = diagonal_fisher(ctx, ctx.probe, loader)
        used = [n for n in names if n not in skipped]
        norm = math.sqrt(sum(float(fisher_k[n].double().square().sum()) for n in used))
        c = merge_math.fisher_coefficient(norm, MINIMAL_FISHER_WEIGHT)
        with torch.no_grad():
            for n in used:
                merge_math.fisher_accumulate_(params[n], denominator[n], probe_params[n], fisher_k[n], c,
                                              MINIMAL_FISHER_WEIGHT)
        fold_mean(merged, unique_state(ctx.probe), buffer_counts, skipped)
        del fisher_k
    with torch.no_grad():
        for n in names:
            params[n].div_(denominator[n])
    del denominator
    ctx.record(kind=StepKind.MERGE, validation=ctx.step_metrics("validation"),
               test=ctx.step_metrics("test"), seconds=time.time() - start)


__all__ = ["diagonal_fisher", "fisher", "fisher_loader"]
