"""OPCM: Orthogonal Projection-based Continual Merging (Tang et al., 2025).

"Merging Models on the Fly Without Retraining: A Sequential Approach to
Scalable Continual Model Merging" (https://arxiv.org/abs/2501.09522),
FusionBench's ``opcm``. Sources arrive one at a time; each new task vector
``τ_t = S_t - base`` is added to the running merged task vector after removing,
per weight matrix, its components on the merged task vector's principal
singular directions (:func:`hf_grasp.engine.merge_math.opcm_project`). The result is
rescaled so the merged task vector's norm is the mean of the sources' task
vector norms (the paper's adaptive λ_t)::

    Σ_1 = τ_1;   Σ_t = Σ_{t-1} + P_{Σ_{t-1}}(τ_t)   (P: projection, 2-D+ weights; identity otherwise)
    merged = base + Σ_K · mean_k ||τ_k|| / ||Σ_K||

How this differs from FusionBench's ``OPCMForCLIP`` (the math of the final
model is otherwise the same):

- FusionBench projects ``nn.Linear`` weights only; here every parameter with 2
  or more dimensions is projected, conv kernels ``(out, in, kh, kw)`` as
  ``(out, in·kh·kw)`` matrices (these are CNNs). Other parameters are summed
  unprojected, as FusionBench does for all non-Linear ones.
- FusionBench renormalises after every step; the projection does not depend
  on the merged task vector's scale, so renormalising once at the end gives
  the same final model with one pass fewer per source.
- Norms are over parameters only (FusionBench's cover the whole state dict);
  buffers (BatchNorm running statistics) are the base's, not the first
  model's (FusionBench targets ViTs without BatchNorm). ``--recalibrate-bn``
  re-estimates them.
- Source order is ``--order`` (FusionBench shuffles by default).
- A merged task-vector matrix that is exactly 0 leaves the new task vector
  unprojected (FusionBench would divide by 0).
"""

from __future__ import annotations

import math
import time

import torch

from ..runtime.progress import progress
from ..engine import merge_math
from ..inputs.sources import iter_across
from ..engine.context import MergeContext
from ..engine.records import StepKind
from .state import fold_mean, unique_state



def opcm(ctx: MergeContext) -> None:
    """Sequential, data-free OPCM merge relative to ``--base``; no training.

    Memory: ``ctx.merged`` (holding ``base + Σ_t``) and ``ctx.probe`` (the
    current source) — no extra model-sized buffer; the base is read one tensor
    at a time from its safetensors files, and one weight's SVD is resident at
    a time. A parameter the base does not provide (its head has another label
    count) is the running mean of the sources'.
    """
    start = time.time()
    alpha = ctx.params.opcm_alpha
    base = ctx.base_source
    base_skips = set(ctx.skips.get(base.name, ()))
    dev = ctx.accelerator.device
    ctx.load(ctx.merged, base)  # buffers stay the base's
    merged = unique_state(ctx.merged)
    params = dict(ctx.merged.named_parameters())
    probe_params = dict(ctx.probe.named_parameters())
    names = [n for n in merged if n in params and n not in base_skips]
    headless = dict.fromkeys((n for n in merged if n in params and n in base_skips), 0)
    norms: list[float] = []
    sum_sq = 0.0
    for t, source in enumerate(progress(ctx.sources, desc="OPCM", unit="source")):
        ctx.load(ctx.probe, source)
        skipped = set(ctx.skips.get(source.name, ()))
        tv_sq, sum_sq = 0.0, 0.0
        with torch.no_grad():
            for name, (b,) in iter_across([base], names, device=dev, naming=ctx.naming):
                m = params[name]
                tau = probe_params[name] - b if name not in skipped else torch.zeros_like(b)
                tv_sq += float(tau.double().square().sum())
                running = tau if t == 0 else merge_math.opcm_update(m - b, tau, alpha)
                sum_sq += float(running.double().square().sum())
                m.copy_(b + running)
        fold_mean(merged, dict(probe_params), headless, skipped)
        norms.append(math.sqrt(tv_sq))
    scale = merge_math.opcm_scale(math.sqrt(sum_sq), norms)
    with torch.no_grad():
        for name, (b,) in iter_across([base], names, device=dev, naming=ctx.naming):
            m = params[name]
            m.copy_(b + (m - b) * scale)
    ctx.record(kind=StepKind.MERGE, validation=ctx.step_metrics("validation"),
               test=ctx.step_metrics("test"), seconds=time.time() - start,
               details={"opcm_scale": scale, "task_vector_norms": norms})


__all__ = ["opcm"]
