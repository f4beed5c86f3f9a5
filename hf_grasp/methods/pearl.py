"""PEARL-style baseline: per-source low-rank adapters composed with learned weights.

The paper describes its PEARL baseline only as "per-source low-rank adapters
(rank 16) composed with weights; lr 1e-3, 3 epochs". This module is one
concrete, streaming reading of that, built with ``peft``'s LoRA layers:

1. **Base.** ``ctx.merged`` <- ``--base`` if given, else the first source.
2. **One adapter per source**, streamed: each source S_k (other than the base
   itself) is loaded into the probe and a LoRA adapter ``src{k}`` (rank 16,
   ``lora_alpha = 16`` so peft's scale is 1) is injected into every ``Conv2d``
   (``groups == 1``) and ``Linear`` layer of the merged model. It is
   initialised from the rank-16 truncated SVD of that layer's task vector
   ``S_k.weight - base.weight`` (conv weights flattened to ``(out, in*kh*kw)``;
   ``lora_B = U sqrt(s)`` and ``lora_A = sqrt(s) Vh`` reshaped to peft's
   ``(out, r, 1, 1)`` / ``(r, in, kh, kw)`` conv shapes), so each adapter starts
   as the source's low-rank task vector. Layers with fewer than 16 singular
   values get zero-padded factors (the padding stays zero: both its factors are).
   When the base is the first source its task vector is zero, so it gets no
   adapter: it is present through the base weights.
3. **Composition weights.** One learnable scalar ``c_k`` per adapter, shared by
   all of that adapter's layers, initialised to ``1/K`` (K = number of
   sources). It is placed in peft's per-adapter ``scaling`` slot of every LoRA
   layer (peft multiplies the adapter's output by it, in ``forward`` and in
   ``get_delta_weight``), so layer outputs are ``W_base x + sum_k c_k B_k A_k x``.
   With ``c_k = 1/K`` the starting model is the uniform average of the sources
   (each task vector truncated to rank 16).
4. **Training.** Adapters (A_k, B_k) and composition weights are trained jointly
   on the target train split, everything of the base frozen (its BatchNorm
   running statistics do follow the target in train mode), with AdamW at
   ``lr = 1e-3`` (the paper's PEARL rate, ``--pearl-lr``, not ``--lr``) for
   ``ctx.total_epochs`` epochs: the budget every training method of the bench
   gets (GRASP's initial plus per-source epochs), not the paper's 3, so methods
   are compared at equal training cost. The best validation epoch is kept (in
   a scratch safetensors file, the probe released meanwhile, as
   ``MergeContext.fine_tune`` does).
5. **Merge.** The learned weights are frozen into the scales and peft's
   ``merge_and_unload`` folds every adapter into the base weights and removes
   the LoRA layers: ``ctx.merged`` is again a plain model of the architecture
   (same object, same state-dict keys) that saves natively, so
   ``--recalibrate-bn`` applies.

Biases and normalisation parameters are not adapted: they stay the base's.
Memory: one model, the probe (released while training), and K rank-16 adapters.
"""

from __future__ import annotations

import time

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer, LoraModel
from torch import nn

from ..runtime.progress import progress
from ..runtime.errors import GraspError
from ..engine.context import MergeContext
from ..engine.records import StepKind

#: attribute under which the composition weights are registered while training
COMPOSITION = "pearl_composition"
#: above this many singular values a randomized truncated SVD is used (exact SVD below)
EXACT_SVD_MAX = 512


def pearl(ctx: MergeContext) -> None:
    """Per-source LoRA adapters from truncated task vectors, composed with learned weights, merged at the end."""
    o, rank, lr = ctx.options, ctx.params.pearl_rank, ctx.params.pearl_lr
    start = time.time()
    base = ctx.base_source or ctx.sources[0]
    ctx.load(ctx.merged, base)
    base_is_source = ctx.base_source is None
    targets = lora_targets(ctx.merged)
    if not targets:
        raise GraspError(f"pearl: {type(ctx.merged).__name__} has no plain Conv2d or Linear layer to adapt")
    base_weights = {n: ctx.merged.get_submodule(n).weight for n in targets}  # kept by peft as base_layer.weight
    test = ctx.evaluate(split="test") if o.eval_sources and base_is_source else ctx.step_metrics("test")
    ctx.record(kind=StepKind.INIT, source=base.name, source_alone=test if o.eval_sources and base_is_source else None,
               validation=ctx.step_metrics("validation"), test=test, seconds=time.time() - start)

    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, lora_dropout=0.0, bias="none")
    composition = nn.ParameterDict()
    tuner: LoraModel | None = None
    n_sources = len(ctx.sources)
    adapted = [(i, s) for i, s in enumerate(ctx.sources, start=1) if s.name != base.name]
    for i, source in progress(adapted, desc="PEARL: adapters from task vectors", unit="source"):
        start = time.time()
        name = f"src{i}"
        skipped = set(ctx.skips.get(source.name, ()))
        ctx.load(ctx.probe, source)
        alone = ctx.evaluate_alone(ctx.probe) if o.eval_sources and not skipped else None
        tuner = add_adapter(tuner, ctx.merged, name, config)
        with torch.no_grad():
            for layer_name in targets:
                if f"{layer_name}.weight" in skipped:
                    delta = torch.zeros_like(base_weights[layer_name])  # head not read from this source
                else:
                    delta = ctx.probe.get_submodule(layer_name).weight - base_weights[layer_name]
                init_lora_from_delta(ctx.merged.get_submodule(layer_name), name, delta)
        composition[name] = nn.Parameter(torch.tensor(1.0 / n_sources, device=base_weights[targets[0]].device))
        use_composition(tuner, composition)
        ctx.record(kind=StepKind.ADAPTER, number=i, source=source.name, source_alone=alone, skipped=sorted(skipped),
                   validation=ctx.step_metrics("validation"), test=ctx.step_metrics("test"),
                   seconds=time.time() - start)

    start = time.time()
    history: list[dict] = []
    if tuner is not None and ctx.total_epochs > 0:
        history = _train(ctx, composition)
    learned = {k: v.item() for k, v in composition.items()}
    if tuner is not None:
        merge_adapters(tuner, composition)
    for p in ctx.merged.parameters():
        p.requires_grad_(True)  # peft froze the base; the result is an ordinary model again
    ctx.record(kind=StepKind.COMPOSE, history=history, details={"composition": learned, "lr": lr},
               validation=ctx.step_metrics("validation"), test=ctx.step_metrics("test"),
               seconds=time.time() - start,
               note=f"PEARL-style: rank-{rank} LoRA adapters initialised from each source's truncated task vector, "
                    f"composed with learned per-adapter weights (init 1/K), trained {ctx.total_epochs} epochs at "
                    f"lr {lr:g}, then merged into the weights (one plain model).")


def _train(ctx: MergeContext, composition: nn.ParameterDict) -> list[dict]:
    """Train adapters + composition weights with :meth:`MergeContext.fine_tune` at ``--pearl-lr``,
    the composition weights registered on the model meanwhile."""
    ctx.merged.add_module(COMPOSITION, composition)  # registered: the optimizer and the best-epoch copy see them
    try:
        return ctx.fine_tune(ctx.total_epochs, desc="PEARL: train adapters + composition", lr=ctx.params.pearl_lr)
    finally:
        delattr(ctx.merged, COMPOSITION)


# --- the peft pieces


def lora_targets(model: nn.Module) -> list[str]:
    """Names of the layers that get adapters: plain ``Conv2d`` (``groups == 1``, zero padding) and ``Linear``.

    Exact types only: subclasses with their own forward (timm's dynamic-padding
    convs) would not match peft's plain LoRA conv. Grouped/depthwise convs are
    left out because peft cannot merge LoRA into them.
    """
    names = []
    for name, m in model.named_modules():
        if type(m) is nn.Linear or (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros"):
            names.append(name)
    return names


def add_adapter(tuner: LoraModel | None, model: nn.Module, name: str, config: LoraConfig) -> LoraModel:
    """Inject LoRA adapter ``name`` into ``model`` in place; returns the tuner that manages its adapters.

    ``LoraModel`` injects into the module it is given (the model object is
    unchanged, only its targeted layers are wrapped) and keeps
    ``merge_and_unload`` for the end; further adapters go through its
    ``inject_adapter``, as ``PeftModel.add_adapter`` does.
    """
    if tuner is None:
        return LoraModel(model, config, adapter_name=name)
    tuner.peft_config[name] = config
    tuner.inject_adapter(model, name)
    return tuner


def init_lora_from_delta(layer: LoraLayer, adapter: str, delta: torch.Tensor) -> None:
    """Set ``layer``'s adapter so that ``lora_B @ lora_A`` is the rank-r truncation of ``delta``.

    Assumes scale 1 (``lora_alpha == r``), which :func:`pearl` configures.
    """
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    rank = a.shape[0]
    up, down = low_rank_factors(delta, rank)
    a.copy_(down.reshape(a.shape))
    b.copy_(up.reshape(b.shape))


def low_rank_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` of shapes ``(out, rank)`` and ``(rank, numel/out)`` with ``B @ A`` the best rank-``rank``
    approximation of ``delta`` flattened to 2-D (truncated SVD, singular values split evenly).

    Exact SVD when the matrix has at most :data:`EXACT_SVD_MAX` singular values,
    ``torch.svd_lowrank`` (randomized, 4 power iterations) above. Fewer singular
    values than ``rank`` leave the remaining rows/columns zero.
    """
    m = delta.reshape(delta.shape[0], -1).float()
    full = min(m.shape)
    if full <= EXACT_SVD_MAX:
        u, s, vh = torch.linalg.svd(m, full_matrices=False)
    else:
        u, s, v = torch.svd_lowrank(m, q=min(rank + 16, full), niter=4)
        vh = v.T
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    up = m.new_zeros(m.shape[0], rank)
    down = m.new_zeros(rank, m.shape[1])
    up[:, :r] = u[:, :r] * root
    down[:r] = root[:, None] * vh[:r]
    return up.to(delta.dtype), down.to(delta.dtype)


def use_composition(tuner: LoraModel, composition: nn.ParameterDict) -> None:
    """Activate every adapter and make ``composition[k]`` the scale of adapter ``k`` in every layer."""
    tuner.set_adapter(list(composition))
    for module in tuner.model.modules():
        if isinstance(module, LoraLayer):
            for name, weight in composition.items():
                module.scaling[name] = weight


def merge_adapters(tuner: LoraModel, composition: nn.ParameterDict) -> None:
    """Fold every adapter, scaled by its composition weight, into the base weights; remove the LoRA layers."""
    for module in tuner.model.modules():
        if isinstance(module, LoraLayer):
            for name, weight in composition.items():
                module.scaling[name] = weight.item()  # plain numbers: the merge is not part of any graph
    with torch.no_grad():
        tuner.merge_and_unload(adapter_names=list(composition))
