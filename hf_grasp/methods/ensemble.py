"""Ensemble baseline: the uniform average of the sources' predicted probabilities.

The paper's first baseline. No training and no merging: each source is
streamed into the probe in turn, its softmax probabilities on the validation
and test splits are added to a running sum (N x C per split, small), and the
averaged probabilities are scored. Memory stays at one model during the run,
but the result is a *predictor of K models*, not one model: ``ctx.artifact``
receives an :class:`~hf_grasp.methods.ensemble_model.EnsembleSpec` (the sources'
references), which the merge result saves instead of a checkpoint, and which
:class:`~hf_grasp.methods.ensemble_model.EnsembleClassifier` reloads. ``ctx.merged``
is left as the engine allocated it and is not the result.

Records: one per source (``step="source k"``) holding that source's own test
metrics (``source_alone``) and the metrics of the ensemble of the first k
sources; the last record is the full ensemble and carries a ``note``.
"""

from __future__ import annotations

import time

import torch

from ..runtime.progress import progress
from .ensemble_model import EnsembleSpec
from ..runtime.errors import SourceError
from ..engine.training import classification_metrics, predict_logits
from ..engine.context import MergeContext
from ..engine.records import StepKind

NOTE = ("Ensemble is a predictor of K models (the uniform average of the sources' softmax probabilities), "
        "not one merged model: it is saved as ensemble.json (the sources' references) and reloaded with "
        "hf_grasp.methods.ensemble_model.EnsembleClassifier, which holds all K models at inference time.")


def ensemble(ctx: MergeContext) -> None:
    """Average the sources' predicted probabilities on validation and test, one source resident at a time."""
    for s in ctx.sources:
        if ctx.skips.get(s.name):
            raise SourceError(f"source {s.name!r}: its head does not predict the target's labels; an ensemble "
                              "averages the sources' own predictions, so every source needs a target-sized head")
    loaders = {"validation": ctx.val_loader, "test": ctx.test_loader}
    sums: dict[str, torch.Tensor] = {}
    labels: dict[str, torch.Tensor] = {}
    for k, source in enumerate(progress(ctx.sources, desc="Ensemble: predict", unit="source"), start=1):
        start = time.time()
        ctx.load(ctx.probe, source)
        alone = None
        for split, loader in loaders.items():
            logits, y = predict_logits(ctx.probe, ctx.family.logits, loader, ctx.accelerator)
            if split in labels and not torch.equal(labels[split], y):
                raise RuntimeError(f"the {split} loader did not yield the same examples for every source")
            labels[split] = y
            probs = logits.softmax(dim=-1)
            sums[split] = probs if split not in sums else sums[split] + probs
            if split == "test" and ctx.options.eval_sources:
                alone = classification_metrics(probs, y)
        metrics = {split: classification_metrics(sums[split] / k, labels[split]) for split in loaders}
        last = k == len(ctx.sources)
        ctx.record(kind=StepKind.SOURCE, number=k, source=source.name, source_alone=alone,
                   validation=metrics["validation"], test=metrics["test"], seconds=time.time() - start,
                   note=NOTE if last else None)
    ctx.artifact = EnsembleSpec.from_sources(ctx.sources, ctx.family, ctx.model_dir, labels=ctx.data.label_names)
