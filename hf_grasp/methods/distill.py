"""``distill``: one model taught by the sources' ensemble, never holding more than one source.

1. **Judge and predict.** Each source streams into the merged model and is
   judged alone as greedy soup ranks its ingredients (BatchNorm re-estimated
   on target train, accuracy on target validation). While it is there, its
   softmax probabilities on every target-train example are added to a running
   sum: the ensemble's predictions are N x C numbers, never K models.
2. **Start** from the greedy soup of the ranked sources (``distill_start``:
   ``greedy-soup``) or from the best one alone (``best-source``).
3. **Fine-tune** for the budget every training method gets, on targets that mix
   each training example's label with the ensemble's probabilities:
   ``(1 - w) * one_hot(label) + w * ensemble`` (``w`` = ``distill_weight``).
   At ``w <= 0.5`` the label keeps the largest share of every target, so the
   teacher shapes the rest of the distribution but never overrules a label.

The teacher averages the sources with their BatchNorm statistics re-estimated
on the target, as each was judged. A source whose head does not predict the
target's labels (``--skip-mismatched-heads``) is left out of it. Memory: the
merged model, the probe and the soup's running sum (greedy soup's), plus N x C
floats: flat in K.
"""

from __future__ import annotations

import time

import torch

from ..engine.context import MergeContext
from ..engine.training import classification_metrics, predict_logits
from ..engine.records import StepKind
from ..runtime.errors import SourceError
from .best_source import keep_best
from .multi_source import finish_training_method
from .selection import better, judge, rank_sources
from .soup import cook
from .state import unique_state

#: WiSE-FT's α grid, in the order ties are settled (the middle first, the paper's robust default)
ALPHAS = (0.5, 0.75, 0.25, 1.0, 0.0)


def distill(ctx: MergeContext) -> None:
    """Greedy soup (or the best source), fine-tuned on labels mixed with the streamed ensemble's probabilities."""
    taught = [s for s in ctx.sources if not ctx.skips.get(s.name)]
    if not taught:
        raise SourceError("distill: no source's head predicts the target's labels, so there is no ensemble to learn "
                          "from; use a method that does not need the sources' predictions (greedy-soup)")
    sums: dict[str, torch.Tensor] = {}
    labels: dict[str, torch.Tensor] = {}
    loaders = {"train": ctx.train_in_order, "validation": ctx.val_loader}

    def predict(_: int, source) -> None:
        if ctx.skips.get(source.name):
            return
        with ctx.timer.phase("teacher"):
            for split, loader in loaders.items():
                logits, y = predict_logits(ctx.merged, ctx.family.logits, loader, ctx.accelerator)
                probs = logits.softmax(dim=-1)
                sums[split] = probs if split not in sums else sums[split].add_(probs)
                labels[split] = y

    on = ("train", "validation") if ctx.params.distill_select == "train+validation" else ("validation",)
    ranked = rank_sources(ctx, "distill: judge each source, predict target train", each=predict, on=on)
    teacher = {split: total / len(taught) for split, total in sums.items()}
    t0 = time.time()
    start = ctx.params.distill_start
    kept, tried = cook(ctx, ranked, on=on) if start == "greedy-soup" else keep_best(ctx, ranked)
    w = ctx.params.distill_weight
    one_hot = torch.nn.functional.one_hot(labels["train"], teacher["train"].shape[1]).to(teacher["train"].dtype)
    targets = (1 - w) * one_hot + w * teacher["train"]
    ensemble_val = classification_metrics(teacher["validation"], labels["validation"])
    wise = ctx.params.distill_wise and ctx.total_epochs > 0
    # the start's floating-point tensors, later the fine-tuning's change: one model's worth, whatever K
    delta = {n: t.detach().clone() for n, t in unique_state(ctx.merged).items() if t.is_floating_point()} if wise \
        else None
    finish_training_method(ctx, t0, "on the ensemble's targets", soft_labels=targets, init=start, kept=kept,
                           tried=tried, teacher_sources=[s.name for s in taught],
                           teacher_val_accuracy=ensemble_val["accuracy"])
    if delta is not None:
        interpolate_back(ctx, delta)


def interpolate_back(ctx: MergeContext, delta: dict[str, torch.Tensor]) -> None:
    """WiSE-FT (Wortsman et al., 2022) between the start (``delta`` holds its tensors, overwritten) and the fine-tuned
    model: ``start + α (tuned - start)`` for α in :data:`ALPHAS`, each judged on validation (BatchNorm re-estimated);
    the best is kept (ties: the earlier α of the list)."""
    t0 = time.time()
    merged = {n: t for n, t in unique_state(ctx.merged).items() if n in delta}
    with torch.no_grad():
        for n, t in merged.items():
            torch.sub(t, delta[n], out=delta[n])  # now tuned - start
    scores: dict[float, dict] = {}
    best, current = None, 1.0  # the model holds the tuned weights: α = 1
    for alpha in ALPHAS:
        current = _move_alpha(merged, delta, current, alpha)
        scores[alpha] = judge(ctx)
        if better(scores[alpha], scores.get(best)):
            best = alpha
    _move_alpha(merged, delta, current, best)
    judge(ctx)  # the kept weights' statistics, as they were judged
    ctx.record(kind=StepKind.INTERPOLATE, validation=scores[best], test=ctx.step_metrics("test"),
               seconds=time.time() - t0, details={"alpha": best,
                                                  "tried": {str(a): m["accuracy"] for a, m in scores.items()}})


def _move_alpha(merged: dict, delta: dict, current: float, alpha: float) -> float:
    """``merged`` from ``start + current * delta`` to ``start + alpha * delta``, in place; returns ``alpha``."""
    if alpha != current:
        with torch.no_grad():
            for n, t in merged.items():
                t.add_(delta[n], alpha=alpha - current)
    return alpha


__all__ = ["distill", "interpolate_back"]
