"""Ensemble baseline: the uniform average of the sources' predicted probabilities.

The paper's first baseline. No training and no merging: each source is
streamed into the probe in turn, its softmax probabilities on the validation
and test splits are added to a running sum (N x C per split, small), and the
averaged probabilities are scored. Memory stays at one model during the run,
but the result is a *predictor of K models*, not one model: ``ctx.artifact``
receives an :class:`~hf_grasp.ensemble_model.EnsembleSpec` (the sources'
references), which the merge result saves instead of a checkpoint, and which
:class:`~hf_grasp.ensemble_model.EnsembleClassifier` reloads. ``ctx.merged``
is left as the engine allocated it and is not the result.

Records: one per source (``step="source k"``) holding that source's own test
metrics (``source_alone``) and the metrics of the ensemble of the first k
sources; the last record is the full ensemble and carries a ``note``.
"""

from __future__ import annotations

import time

import torch
from torch import nn
from tqdm.auto import tqdm

from ..ensemble_model import EnsembleSpec
from ..errors import SourceError
from ..training import _forget, _is_prepared, _move_to, load_accuracy
from .base import MergeContext, register_method

NOTE = ("Ensemble is a predictor of K models (the uniform average of the sources' softmax probabilities), "
        "not one merged model: it is saved as ensemble.json (the sources' references) and reloaded with "
        "hf_grasp.ensemble_model.EnsembleClassifier, which holds all K models at inference time.")


@register_method("ensemble", pretty_name="Ensemble (uniform average of the sources' predicted probabilities)",
                 parameter_space=False)
def ensemble(ctx: MergeContext) -> None:
    """Average the sources' predicted probabilities on validation and test, one source resident at a time."""
    for s in ctx.sources:
        if ctx.skips.get(s.name):
            raise SourceError(f"source {s.name!r}: its head does not predict the target's labels; an ensemble "
                              "averages the sources' own predictions, so every source needs a target-sized head")
    loaders = {"validation": ctx.val_loader, "test": ctx.test_loader}
    sums: dict[str, torch.Tensor] = {}
    labels: dict[str, torch.Tensor] = {}
    for k, source in enumerate(tqdm(ctx.sources, desc="Ensemble: predict", unit="source"), start=1):
        start = time.time()
        ctx.load(ctx.probe, source)
        alone = None
        for split, loader in loaders.items():
            logits, y = predict_logits(ctx, ctx.probe, loader)
            if split in labels and not torch.equal(labels[split], y):
                raise RuntimeError(f"the {split} loader did not yield the same examples for every source")
            labels[split] = y
            probs = logits.softmax(dim=-1)
            sums[split] = probs if split not in sums else sums[split] + probs
            if split == "test" and ctx.options.eval_sources:
                alone = scores(probs, y)
        metrics = {split: scores(sums[split] / k, labels[split]) for split in loaders}
        last = k == len(ctx.sources)
        ctx.record(step=f"source {k}", source=source.name, source_alone=alone,
                   validation=metrics["validation"], test=metrics["test"], seconds=time.time() - start,
                   **({"note": NOTE} if last else {}))
    ctx.artifact = EnsembleSpec.from_sources(ctx.sources, ctx.family, ctx.model_dir)


def predict_logits(ctx: MergeContext, model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits and labels of ``model`` over ``loader`` on CPU, in loader order.

    Runs like :func:`hf_grasp.training.evaluate_model`: eval mode, no gradients,
    batches sharded and moved by accelerate, predictions gathered across processes.
    """
    acc = ctx.accelerator
    prepared = _is_prepared(loader)
    if not prepared:
        loader = acc.prepare_data_loader(loader)
    _move_to(model, acc.device)
    was_training = model.training
    model.eval()
    out, ys = [], []
    try:
        with torch.no_grad():
            for batch in loader:
                with acc.autocast():
                    logits = ctx.family.logits(model, batch["pixel_values"])
                logits, y = acc.gather_for_metrics((logits.float(), batch["labels"]))
                out.append(logits.cpu())
                ys.append(y.cpu())
    finally:
        model.train(was_training)
        if not prepared:
            _forget(acc, loader)
    if not out:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(out), torch.cat(ys)


def scores(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """``{"accuracy", "loss", "n"}`` of predicted probabilities, as ``evaluate_model`` reports a model.

    ``loss`` is the negative log-likelihood of the true label under ``probs``.
    """
    if labels.numel() == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
    accuracy = load_accuracy().compute(predictions=probs.argmax(-1).tolist(), references=labels.tolist())["accuracy"]
    p_true = probs.gather(1, labels[:, None]).squeeze(1)
    nll = -p_true.clamp_min(torch.finfo(probs.dtype).tiny).log()
    return {"accuracy": float(accuracy), "loss": float(nll.mean()), "n": int(labels.numel())}
