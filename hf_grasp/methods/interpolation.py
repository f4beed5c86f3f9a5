"""Learned interpolation: GRASP's step with a learned mixing coefficient per unit instead of a hard gate.

AdaMerging-style (Yang et al., ICLR 2024), made sequential and supervised. The
steps are GRASP's (:func:`hf_grasp.methods.grasp.grasp`: the initial model
fine-tuned, then per source the alignment gradients on target-train batches),
but Stage 4 learns, for every unit j GRASP scores (a parameter tensor by
default; a row or an element with ``--granularity``), a coefficient α_j ∈ [0, 1]::

    merged_j <- (1 - α_j) · merged_j + α_j · S_j

α starts at GRASP's gate (α_j = 1 where the alignment score is above τ, else 0),
so GRASP's hard transfer is the special case of α fixed there. Only the α's are
trained: ``--interp-epochs`` epochs over target train with AdamW at
``--interp-lr``, the model called through ``torch.func.functional_call`` on the
interpolated weights (both models' weights held fixed; eval mode, so BatchNorm
uses the merged model's statistics and nothing else changes), each step's α
projected back onto [0, 1]. The α kept is the one with the best validation
accuracy among the start and the end of each epoch (strictly better than the
start: with no gain, GRASP's gate is kept). Then the usual fine-tuning round.

Memory: the two models GRASP holds (merged and the source in the probe), the
α's (one scalar per unit), and during α training the interpolated weights and
their gradients for one batch: flat in K.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..runtime.progress import progress
from ..engine.training import evaluate_model, on_device
from ..engine.context import MergeContext
from .grasp import AlignmentScorer, _buffers_follow, grasp


def learned_interpolation(ctx: MergeContext) -> None:
    """GRASP's steps with Stage 4 replaced by :func:`learn_interpolation` (``ctx.params``: InterpolationParams)."""
    grasp(ctx, transfer=learn_interpolation)


class _Logits(nn.Module):
    """``family.logits(model, x)`` as a module's forward, so ``functional_call`` can swap the model's weights."""

    def __init__(self, model: nn.Module, logits_fn):
        super().__init__()
        self.model, self.logits_fn = model, logits_fn

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.logits_fn(self.model, batch)


def interpolate(merged: torch.Tensor, source: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``(1 - α)·merged + α·source``, α broadcast over the unit it scores (a tensor, its rows, its elements).

    Written as the two products rather than ``torch.lerp``: at α = 0 or 1 it
    gives ``merged`` or ``source`` exactly (lerp's ``m + α(s − m)`` does not), so
    α fixed to GRASP's mask makes GRASP's transfer bit for bit.
    """
    a = alpha.reshape(alpha.shape + (1,) * (merged.dim() - alpha.dim()))
    return (1 - a) * merged + a * source


def learn_interpolation(ctx: MergeContext, scorer: AlignmentScorer, source: nn.Module,
                        extra: dict) -> tuple[dict, dict]:
    """Learn α per unit from GRASP's gate, keep the best on validation, write the interpolation into the merged model.

    Returns the per-tensor mean alignment score and mean α (GRASP's "fraction
    transferred"); ``extra`` gets the validation accuracy at the gate and at the
    kept α, and the epoch kept (0: the gate).
    """
    p = ctx.params
    scorer.finish()
    merged = scorer.params
    src = dict(source.named_parameters())
    names = [n for n in merged if n not in scorer.skip]
    alphas = {n: scorer.masks[n].to(merged[n].dtype).clone().requires_grad_(True) for n in names}
    wrapper = _Logits(ctx.merged, ctx.family.logits)

    def weights() -> dict[str, torch.Tensor]:
        return {f"model.{n}": interpolate(merged[n].detach(), src[n].detach(), alphas[n]) for n in names}

    def on_validation() -> dict:
        with torch.no_grad():
            values = weights()
        return evaluate_model(ctx.merged, lambda _m, x: functional_call(wrapper, values, (x,)), ctx.val_loader,
                              ctx.accelerator)

    gate = best = on_validation()
    kept_alphas, kept_epoch = {n: a.detach().clone() for n, a in alphas.items()}, 0
    if p.interp_epochs and alphas:
        optimizer = torch.optim.AdamW(list(alphas.values()), lr=p.interp_lr, weight_decay=0.0)
        ctx.merged.eval()
        for epoch in progress(range(1, p.interp_epochs + 1), desc="learned interpolation: α", unit="epoch"):
            for batch in ctx.train_loader:
                batch = on_device(batch, ctx.accelerator.device)
                loss = nn.functional.cross_entropy(functional_call(wrapper, weights(), (batch,)), batch["labels"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for a in alphas.values():
                        a.clamp_(0.0, 1.0)
            metrics = on_validation()
            if metrics["accuracy"] > best["accuracy"]:
                best, kept_epoch = metrics, epoch
                kept_alphas = {n: a.detach().clone() for n, a in alphas.items()}
        del optimizer
    moved: dict[str, float] = {}
    with torch.no_grad():
        for n in names:
            merged[n].copy_(interpolate(merged[n], src[n], kept_alphas[n]))
            moved[n] = float(kept_alphas[n].float().mean())
    if p.buffers == "follow":  # a module's statistics follow its weight where it moved at least halfway
        _buffers_follow(ctx.merged, source, {n: a >= 0.5 for n, a in kept_alphas.items()})
    scores: dict[str, float | None] = dict(scorer.scores)
    for n in scorer.skip:
        scores[n], moved[n] = None, 0.0
    extra.update(interpolation={"gate_val_accuracy": gate["accuracy"], "kept_val_accuracy": best["accuracy"],
                                "kept_epoch": kept_epoch})
    return {n: scores[n] for n in merged}, {n: moved[n] for n in merged}


__all__ = ["interpolate", "learn_interpolation", "learned_interpolation"]
