"""What the validation-driven methods (greedy soup, sequential task arithmetic) share: judging a candidate.

A candidate merge is judged as it would be served after ``--recalibrate-bn``:
its BatchNorm statistics re-estimated on target *train* images (in a fixed
order, so the same weights are always judged the same), then accuracy and loss
on target *validation*. Test is never looked at for a choice.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from ..engine.context import MergeContext
from ..engine.records import StepKind
from ..engine.training import evaluate_model, recalibrate_batchnorm
from ..inputs.sources import ResolvedSource
from ..runtime.progress import progress


def judge(ctx: MergeContext, model: nn.Module | None = None, *, on: tuple[str, ...] = ("validation",)) -> dict:
    """``model`` (the merged one by default) with BatchNorm re-estimated on target train, evaluated on the splits
    ``on`` together (validation by default; ``("train", "validation")`` for a choice made before any training on
    target train, with twice the examples): ``{"accuracy", "loss", "n"}``."""
    model = ctx.merged if model is None else model
    with ctx.timer.phase("selection"):
        recalibrate_batchnorm(model, ctx.family.logits, ctx.train_in_order, ctx.accelerator)
    parts = [ctx.evaluate(model, split=split) if split != "train" else _on_train(ctx, model) for split in on]
    if len(parts) == 1:
        return parts[0]
    n = sum(m["n"] for m in parts)
    return {"accuracy": sum(m["accuracy"] * m["n"] for m in parts) / n,
            "loss": sum(m["loss"] * m["n"] for m in parts) / n, "n": n}


def _on_train(ctx: MergeContext, model: nn.Module) -> dict:
    with ctx.timer.phase("selection"):
        return evaluate_model(model, ctx.family.logits, ctx.train_in_order, ctx.accelerator)


def rank_sources(ctx: MergeContext, desc: str, each: Callable[[int, ResolvedSource], None] | None = None, *,
                 on: tuple[str, ...] = ("validation",)) -> list[tuple[dict, int, ResolvedSource]]:
    """Every source alone in the merged model, judged (:func:`judge`), best first: ``(metrics, index, source)``.

    One ``ingredient`` record per source. Ranked by validation accuracy, then
    lower loss, then the given order, so a choice never depends on anything but
    the sources and the data (judged on the splits ``on``). ``each(index, source)`` runs while the judged
    source sits in ``ctx.merged`` (its BatchNorm re-estimated), e.g. to predict
    with it.
    """
    ranked = []
    for i, source in enumerate(progress(ctx.sources, desc=desc, unit="source")):
        t0 = time.time()
        ctx.load(ctx.merged, source)
        alone = judge(ctx, on=on)
        if each is not None:
            each(i, source)
        ranked.append((alone, i, source))
        ctx.record(kind=StepKind.INGREDIENT, number=i + 1, source=source.name, validation=alone,
                   test=ctx.step_metrics("test"), seconds=time.time() - t0)
    ranked.sort(key=lambda r: (-r[0]["accuracy"], r[0]["loss"], r[1]))
    return ranked


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


__all__ = ["better", "float_buffers", "judge", "rank_sources", "restore_buffers"]
