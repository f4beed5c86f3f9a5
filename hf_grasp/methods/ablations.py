"""GRASP's ablations, each through the same source stream, data and evaluation.

- ``no-align``: every tensor of every source transferred (τ = -inf);
- ``no-finetune``: no Stage 5 after each transfer (the initial fine-tune stays);
- ``finetune-only``: the first source fine-tuned for GRASP's whole epoch budget, no transfer;
- ``scratch``: a random init trained on the target alone for the same budget.
"""

from __future__ import annotations

import time

from ..engine.context import MergeContext
from ..engine.records import StepKind
from .grasp import grasp


def no_align(ctx: MergeContext) -> None:
    ctx.params = ctx.params.model_copy(update={"tau": float("-inf")})
    grasp(ctx)


def no_finetune(ctx: MergeContext) -> None:
    ctx.options = ctx.options.model_copy(update={"finetune_epochs": 0})
    grasp(ctx)


def _train_alone(ctx: MergeContext, init_name: str) -> None:
    start = time.time()
    alone = ctx.evaluate_alone() if ctx.options.eval_sources and init_name != "random" else None
    history = ctx.fine_tune(ctx.total_epochs, desc=f"fine-tune {init_name}")
    ctx.record(kind=StepKind.INIT, source=init_name, source_alone=alone, history=history,
               validation=ctx.validation_after(history), test=ctx.step_metrics("test"),
               seconds=time.time() - start)


def finetune_only(ctx: MergeContext) -> None:
    first = ctx.init_source or ctx.sources[0]
    ctx.load(ctx.merged, first)
    _train_alone(ctx, first.name)


def scratch(ctx: MergeContext) -> None:
    # ctx.merged was allocated with seeded random weights and nothing is streamed in
    _train_alone(ctx, "random")
