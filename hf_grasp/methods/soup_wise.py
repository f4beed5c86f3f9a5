"""``soup-wise``: the greedy soup chosen on more of the target, fine-tuned, then interpolated back towards where it
started (WiSE-FT) as far as validation says.

1. **Judge.** Each source streams into the merged model and is judged alone,
   BatchNorm re-estimated on target train, on target *train and validation*
   together (``soup_select``): train is unseen by the sources until fine-tuning,
   so the choices rest on twice the examples of validation alone.
2. **Soup.** The greedy soup of the ranked sources, judged the same way
   (:func:`~hf_grasp.methods.soup.cook`).
3. **Fine-tune** for the budget every training method gets.
4. **Interpolate back** (Wortsman et al., CVPR 2022, "Robust fine-tuning of
   zero-shot models"): ``start + α (tuned − start)`` for α in
   {0.5, 0.75, 0.25, 1, 0}, each judged on validation only (train has now been
   trained on); the best is kept. α = 0 is the soup itself, α = 1 the
   fine-tuned model, so what ``--keep-start`` would keep is a candidate too.

Memory: the merged model, the probe, the soup's running sum and the start's
weights (later the fine-tuning's change): a fixed number of models, flat in K.
On the digits-eras bench (10 seeds x 6 domains) it is the best one model:
docs/benchmark.md.
"""

from __future__ import annotations

import time

import torch

from ..engine.context import MergeContext
from ..engine.records import StepKind
from .best_source import keep_best
from .multi_source import finish_training_method
from .selection import better, judge, rank_sources
from .soup import cook
from .state import unique_state

#: WiSE-FT's α grid, in the order ties are settled (the middle first, the paper's robust default)
ALPHAS = (0.5, 0.75, 0.25, 1.0, 0.0)


def soup_wise(ctx: MergeContext) -> None:
    """Greedy soup judged on target train + validation, fine-tuned, then WiSE-FT's α chosen on validation."""
    on = splits(ctx.params.soup_select)
    ranked = rank_sources(ctx, "soup-wise: judge each source", on=on)
    tune(ctx, ranked, on=on, start="greedy-soup", wise=True, what="greedy soup")


def splits(select: str) -> tuple[str, ...]:
    """The splits a choice made before any training on the target is judged on: ``"validation"`` or
    ``"train+validation"``."""
    return ("train", "validation") if select == "train+validation" else ("validation",)


def tune(ctx: MergeContext, ranked: list, *, on: tuple[str, ...], start: str, wise: bool, what: str,
         soft_labels: torch.Tensor | None = None, **details) -> None:
    """The start (``"greedy-soup"`` of ``ranked``, judged on ``on``, or ``"best-source"``), fine-tuned for the budget
    (on ``soft_labels`` if given), then with ``wise`` interpolated back (:func:`interpolate_back`)."""
    t0 = time.time()
    kept, tried = cook(ctx, ranked, on=on) if start == "greedy-soup" else keep_best(ctx, ranked)
    wise = wise and ctx.total_epochs > 0
    # the start's floating-point tensors, later the fine-tuning's change: one model's worth, whatever K
    delta = {n: t.detach().clone() for n, t in unique_state(ctx.merged).items() if t.is_floating_point()} if wise \
        else None
    finish_training_method(ctx, t0, what, soft_labels=soft_labels, init=start, kept=kept, tried=tried, **details)
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


__all__ = ["ALPHAS", "interpolate_back", "soup_wise", "splits", "tune"]
