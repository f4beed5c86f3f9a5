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
floats: flat in K. ``--distill-select`` and ``--distill-wise`` are
:mod:`~hf_grasp.methods.soup_wise`'s choices. On the digits-eras bench the
teacher did not help (docs/benchmark.md); ``soup-wise`` is this method without it.
"""

from __future__ import annotations

import torch

from ..engine.context import MergeContext
from ..engine.training import classification_metrics, predict_logits
from ..runtime.errors import SourceError
from .selection import rank_sources
from .soup_wise import splits, tune


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

    on = splits(ctx.params.distill_select)
    ranked = rank_sources(ctx, "distill: judge each source, predict target train", each=predict, on=on)
    teacher = {split: total / len(taught) for split, total in sums.items()}
    w = ctx.params.distill_weight
    one_hot = torch.nn.functional.one_hot(labels["train"], teacher["train"].shape[1]).to(teacher["train"].dtype)
    ensemble_val = classification_metrics(teacher["validation"], labels["validation"])
    tune(ctx, ranked, on=on, start=ctx.params.distill_start, wise=ctx.params.distill_wise,
         what="on the ensemble's targets", soft_labels=(1 - w) * one_hot + w * teacher["train"],
         teacher_sources=[s.name for s in taught], teacher_val_accuracy=ensemble_val["accuracy"])


__all__ = ["distill"]
