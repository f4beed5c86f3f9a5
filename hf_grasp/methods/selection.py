"""What the validation-driven methods (greedy soup, sequential task arithmetic) share: judging a candidate.

A candidate merge is judged as it would be served after ``--recalibrate-bn``:
its BatchNorm statistics re-estimated on target *train* images (in a fixed
order, so the same weights are always judged the same), then accuracy and loss
on target *validation*. Test is never looked at for a choice.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.training import recalibrate_batchnorm
from ..engine.context import MergeContext


def judge(ctx: MergeContext, model: nn.Module | None = None) -> dict:
    """``model`` (the merged one by default) with BatchNorm re-estimated on target train, evaluated on
    validation: ``{"accuracy", "loss", "n"}``."""
    model = ctx.merged if model is None else model
    with ctx.timer.phase("selection"):
        recalibrate_batchnorm(model, ctx.family.logits, ctx.train_in_order, ctx.accelerator)
    return ctx.evaluate(model, split="validation")


def better(new: dict, old: dict | None) -> bool:
    """Strictly higher validation accuracy, or equal accuracy and strictly lower loss."""
    if old is None:
        return True
    return new["accuracy"] > old["accuracy"] or (new["accuracy"] == old["accuracy"] and new["loss"] < old["loss"])


def float_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's floating-point buffers (BatchNorm statistics): small, kept with a judged candidate."""
    return {n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()}


def restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put buffers copied by :func:`float_buffers` back."""
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for n, b in saved.items():
            buffers[n].copy_(b)


__all__ = ["better", "float_buffers", "judge", "restore_buffers"]
