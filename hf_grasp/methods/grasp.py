"""GRASP: Gradient-Aligned Sequential Parameter Transfer (Algorithm 1).

Reads like Algorithm 1 of the paper (https://arxiv.org/abs/2606.14900), with
the semantics of the code its authors released with it where the paper leaves
a choice open (one score per tensor by default; a cosine schedule stepped once
per epoch)::

    merged <- S1 (or an explicit / random init), fine-tuned for initial_epochs
    for each further source Sk:
        g_T <- summed gradients of merged on target-train batches
        g_k <- summed gradients of Sk on the same batches
        a   <- cosine(g_k, g_T) per unit (tensor | row | element)
        merged[unit] <- Sk[unit] where a > tau
        fine-tune merged for finetune_epochs (Stage 5)

Only two models ever exist: ``merged`` and the ``probe`` each source is
streamed into; while the merged model is fine-tuned, the probe's storage is
released and the best-validation state goes to a scratch safetensors file
(:meth:`~hf_grasp.engine.context.MergeContext.fine_tune`).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import nn

from ..runtime.progress import progress
from ..runtime.memory import release_freed_memory
from ..engine.alignment import alignment_scores, apply_transfer, row_partners, transfer_mask
from ..runtime.errors import NumericalError
from ..inputs.sources import ResolvedSource
from ..engine.context import MergeContext
from ..engine.records import StepKind

#: Stage 4 of one step: ``(ctx, scorer, source_model, record_extra) -> (scores, fraction moved)`` per tensor
Transfer = Callable[[MergeContext, "AlignmentScorer", nn.Module, dict], tuple[dict, dict]]


def grasp(ctx: MergeContext, transfer: Transfer | None = None) -> None:
    """Merge ``ctx.sources`` into ``ctx.merged`` by gradient-aligned transfer (``ctx.params``: GraspParams).

    Step 0 takes the initial model and fine-tunes it; step k >= 1 merges one
    more source. Every step starts reseeded and ends checkpointed (when the run
    keeps a checkpoint), so a run resumes after its last finished step; a
    continuation of an earlier merge (``ctx.earlier``) starts from that merge's
    weights at its next step number. ``transfer(ctx, scorer, source_model, extra)``
    replaces Stage 4 (the hard gate, :meth:`AlignmentScorer.transfer`) for a
    variant that uses the scores otherwise (learned interpolation); it returns
    the per-tensor scores and fractions moved, and may add entries to ``extra``,
    which go into the step's ``details``.
    """
    sources = list(ctx.sources)
    plan: list[tuple[int, ResolvedSource | None]] = []  # (step, what it brings in; None: a random init)
    if ctx.earlier is None:
        first = ctx.init_source or (None if ctx.options.init == "random" else sources.pop(0))
        plan.append((0, first))
    plan += list(enumerate(sources, start=max(ctx.first_step, 1)))
    done = ctx.resume()
    if done == 0 and ctx.earlier is not None:
        ctx.load(ctx.merged, ctx.init_source)  # the earlier merge's weights
    for step, source in progress(plan[done:], desc="GRASP: align + transfer", unit="step"):
        ctx.begin_step(step)
        if step == 0:
            _initial_step(ctx, source)
        else:
            _transfer_step(ctx, step, source, transfer or _gate)
        ctx.end_step()


def _initial_step(ctx: MergeContext, first: ResolvedSource | None) -> None:
    """Step 0: the initial merged model (a source, or the seeded random init), fine-tuned on the target."""
    o, start = ctx.options, time.time()
    if first is not None:
        ctx.load(ctx.merged, first)
    name = first.name if first is not None else "random"
    source_alone = ctx.evaluate_alone() if o.eval_sources and first is not None else None
    history = ctx.fine_tune(o.initial_epochs, desc=f"initial fine-tune ({name})")
    ctx.record(kind=StepKind.INIT, source=name, source_alone=source_alone, history=history,
               validation=ctx.validation_after(history), test=ctx.step_metrics("test"),
               seconds=time.time() - start)


def _gate(ctx: MergeContext, scorer: "AlignmentScorer", source: nn.Module, extra: dict) -> tuple[dict, dict]:
    """Stage 4 as in the paper: copy every unit whose score is above τ."""
    return scorer.transfer(source, buffers=ctx.params.buffers)


def _transfer_step(ctx: MergeContext, k: int, source: ResolvedSource, transfer: Transfer) -> None:
    """Step k: align the merged model with ``source`` on target-train gradients, transfer, fine-tune."""
    o, p, start = ctx.options, ctx.params, time.time()
    batches = ctx.alignment_batches(step=k, n_batches=p.align_batches)
    step = f"GRASP step {k} (source {source.name!r})"
    ctx.gradients(ctx.merged, batches, step=f"{step}, merged model",
                  advice="lower --lr, or check the sources merged so far")
    ctx.load(ctx.probe, source)
    skipped = set(ctx.skips.get(source.name, ()))
    if skipped:
        # a skipped head is judged with the merged model's head, never transferred
        _copy_tensors(ctx.probe, ctx.merged, skipped)
    source_alone = ctx.evaluate_alone(ctx.probe) if o.eval_sources and not skipped else None
    scorer = AlignmentScorer(ctx.merged, tau=p.tau, granularity=p.granularity, skip=skipped, step=step)
    # each source gradient is scored as the backward pass finishes it, then freed with the merged model's
    ctx.gradients(ctx.probe, batches, step=f"{step}, source model", consume=scorer.take,
                  advice="check the source: its weights overflow on the target images; re-export it or "
                         "leave it out of --sources")
    extra: dict = {}
    with ctx.timer.phase("transfer"):
        scores, transferred = transfer(ctx, scorer, ctx.probe, extra)
    ctx.merged.zero_grad(set_to_none=True)
    ctx.probe.zero_grad(set_to_none=True)
    release_freed_memory()  # both gradient sets, before fine-tuning allocates its own
    history = ctx.fine_tune(o.finetune_epochs, desc=f"fine-tune after {source.name}")
    ctx.record(kind=StepKind.SOURCE, number=k, source=source.name, scores=scores, transferred=transferred,
               skipped=sorted(skipped), source_alone=source_alone, history=history,
               validation=ctx.validation_after(history), test=ctx.step_metrics("test"),
               seconds=time.time() - start, details=extra)


class AlignmentScorer:
    """Stages 3-4 for one source, one tensor at a time.

    :meth:`take` scores a source parameter's gradient against the merged
    model's gradient of the same tensor (which must be in ``merged``'s
    ``.grad``), keeps only the transfer mask and the mean score, and frees the
    merged model's gradient of that tensor. Fed from the source's backward pass,
    alignment then holds the two models and one set of gradients, never two.
    :meth:`transfer` then copies the aligned units. A parameter never taken
    (unused in the forward pass) scores 0. A NaN or inf gradient raises
    :class:`NumericalError` (its message starts with ``step``) in
    :meth:`transfer`, before anything is transferred: its score would be NaN,
    and NaN is never above ``tau``.
    """

    def __init__(self, merged: nn.Module, *, tau: float, granularity: str, skip=(), step: str = "GRASP scoring"):
        self.merged, self.tau, self.granularity, self.skip, self.step = merged, tau, granularity, set(skip), step
        self.params = dict(merged.named_parameters())
        named = [(n, tuple(p.shape)) for n, p in self.params.items() if n not in self.skip]
        self.partners = row_partners(named) if granularity == "row" else {}  # bias -> the weight it follows
        self.masks: dict[str, torch.Tensor] = {}
        self.scores: dict[str, float] = {}
        self.error: NumericalError | None = None

    def take(self, name: str, g_source: torch.Tensor | None) -> None:
        """Score parameter ``name`` from the source's gradient ``g_source`` (None: the loss does not reach it)."""
        if name in self.skip or name in self.partners or name in self.masks:
            return
        p = self.params[name]
        g_t = p.grad if p.grad is not None else torch.zeros_like(p)
        g_s = g_source if g_source is not None else torch.zeros_like(p)
        unit_scores = alignment_scores(g_s, g_t, self.granularity)
        self.masks[name] = transfer_mask(unit_scores, self.tau)
        self.scores[name] = float(unit_scores.mean())
        if not math.isfinite(self.scores[name]) and self.error is None:
            # kept, not raised: a backward hook calls this, and a NaN loss is reported first, by the caller
            self.error = _gradient_error(self.step, name, g_t, g_s)
        p.grad = None

    def finish(self) -> None:
        """Score what no gradient reached (0), give row-partner biases their weight's mask, raise a NaN score."""
        for name in self.params:
            self.take(name, None)
        if self.error is not None:
            raise self.error
        for bias, weight in self.partners.items():
            self.masks[bias], self.scores[bias] = self.masks[weight], self.scores[weight]

    def transfer(self, source: nn.Module, *, buffers: str = "keep") -> tuple[dict[str, float | None],
                                                                           dict[str, float]]:
        """Copy the aligned units of ``source`` into the merged model; per-tensor mean score and fraction copied."""
        self.finish()
        src_params = dict(source.named_parameters())
        transferred = {name: apply_transfer(p.data, src_params[name].data, self.masks[name])
                       for name, p in self.params.items() if name not in self.skip}
        if buffers == "follow":
            _buffers_follow(self.merged, source, self.masks)
        scores: dict[str, float | None] = dict(self.scores)
        for name in self.skip:
            scores[name], transferred[name] = None, 0.0
        return {n: scores[n] for n in self.params}, {n: transferred[n] for n in self.params}


def transfer_aligned(
    merged: nn.Module, source: nn.Module, *, tau: float, granularity: str, buffers: str = "keep", skip=(),
    step: str = "GRASP scoring",
) -> tuple[dict[str, float | None], dict[str, float]]:
    """Stages 3-4 when both models hold their gradients in ``.grad``: :class:`AlignmentScorer` over them all."""
    scorer = AlignmentScorer(merged, tau=tau, granularity=granularity, skip=skip, step=step)
    for name, q in source.named_parameters():
        if q.grad is not None:
            scorer.take(name, q.grad)
    return scorer.transfer(source, buffers=buffers)


def _gradient_error(step: str, name: str, g_merged: torch.Tensor, g_source: torch.Tensor) -> NumericalError:
    """The error for parameter ``name`` whose score is NaN: which model's gradient holds the NaN or inf."""
    whose, grad = ("merged model", g_merged) if not torch.isfinite(g_merged).all() else ("source", g_source)
    return NumericalError(f"{step}: the {whose}'s gradient of {name!r} has {NumericalError.count(grad)}; "
                          "lower --lr, or check the source")


def _buffers_follow(merged: nn.Module, source: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Copy a module's buffers where its weight was transferred (per channel when the shapes allow)."""
    src_buffers = dict(source.named_buffers())
    for name, buf in merged.named_buffers():
        module = name.rpartition(".")[0]
        mask = masks.get(f"{module}.weight" if module else "weight")
        if mask is None:
            continue
        if buf.dim() == 0 or mask.dim() == 0:
            # scalar buffers (num_batches_tracked) or whole-tensor decisions: all or nothing
            if bool(mask.all()):
                buf.copy_(src_buffers[name])
            continue
        unit = mask.reshape(mask.shape[0], -1).all(1) if mask.dim() > 1 else mask
        if unit.shape[0] == buf.shape[0]:
            apply_transfer(buf, src_buffers[name], unit)


def _copy_tensors(dst: nn.Module, src: nn.Module, names) -> None:
    d, s = dst.state_dict(), src.state_dict()
    with torch.no_grad():
        for n in names:
            d[n].copy_(s[n])


__all__ = ["AlignmentScorer", "grasp", "transfer_aligned"]
