"""Gradient-alignment math: pure functions over tensors, no model objects.

GRASP scores a source's parameter ``j`` by the cosine between the source's
gradient and the merged model's gradient on the same target batches::

    a[k, j] = <g_k[j], g_T[j]> / (||g_k[j]|| * ||g_T[j]|| + 1e-8)

and transfers it when ``a[k, j] > tau`` (strictly greater). The cosine is kept
in the form of three sums (``<g_k, g_T>``, ``||g_k||^2``, ``||g_T||^2``) because
each is a sum over shards: under FSDP/ZeRO the scores need one all-reduce of
three numbers per unit, never a gathered tensor.

Granularity of a "unit":

- ``tensor``: one score per named parameter tensor (the authors' released code);
- ``row``: one score per output row (first dimension) of a tensor; a bias
  follows the mask of its module's weight rows (see :func:`row_partners`);
- ``element``: one score per scalar, which reduces to sign agreement.
"""

from __future__ import annotations

from typing import Iterable

import torch

from ..plan.options import GRANULARITIES, Granularity  # declared once, torch-free (the CLI's help reads it)

#: the paper's stabiliser in the cosine denominator
EPS = 1e-8


def alignment_sums(g_source: torch.Tensor, g_target: torch.Tensor, granularity: Granularity = "tensor"):
    """Return ``(dot, source_sq, target_sq)`` per unit of ``granularity``.

    Shapes: scalars for ``tensor``, ``(rows,)`` for ``row``, the tensor's shape
    for ``element``; always float64. ``tensor`` sums are three BLAS dot products
    in the gradient's precision (at least float32), as the released code computes
    them: converting every gradient to float64 first took 4-7x as long (a fifth of
    an alignment step on ResNet-18) for a relative difference near 1e-6 that no
    threshold decision can see. ``row`` and ``element`` are computed in float64.
    Summed over shards, the sums reproduce the unsharded score to that precision.
    """
    if g_source.shape != g_target.shape:
        raise ValueError(f"gradient shapes differ: {tuple(g_source.shape)} vs {tuple(g_target.shape)}")
    if granularity == "tensor":
        dtype = torch.promote_types(g_source.dtype, torch.float32)  # bf16/fp16 gradients: dot in float32
        s, t = g_source.detach().reshape(-1).to(dtype), g_target.detach().reshape(-1).to(dtype)
        sums = torch.stack([s @ t, s @ s, t @ t]).to(torch.float64)
        return sums[0], sums[1], sums[2]
    s = g_source.detach().to(torch.float64)
    t = g_target.detach().to(torch.float64)
    if granularity == "row":
        s, t = s.reshape(s.shape[0] if s.dim() else 1, -1), t.reshape(t.shape[0] if t.dim() else 1, -1)
        return (s * t).sum(1), (s * s).sum(1), (t * t).sum(1)
    if granularity == "element":
        return s * t, s * s, t * t
    raise ValueError(f"unknown granularity {granularity!r}; choose from {GRANULARITIES}")


def scores_from_sums(dot: torch.Tensor, source_sq: torch.Tensor, target_sq: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Cosine from the three sums; a zero gradient on either side scores 0."""
    return dot / (source_sq.sqrt() * target_sq.sqrt() + eps)


def alignment_scores(g_source: torch.Tensor, g_target: torch.Tensor, granularity: Granularity = "tensor") -> torch.Tensor:
    """Cosine alignment of two gradients per unit of ``granularity`` (float64)."""
    return scores_from_sums(*alignment_sums(g_source, g_target, granularity))


def transfer_mask(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """Units to transfer: score strictly greater than ``tau`` (a score equal to tau stays)."""
    return scores > tau


def expand_mask(mask: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Broadcast a per-unit mask (scalar, per-row or per-element) to a tensor's shape."""
    shape = torch.Size(shape)
    if mask.dim() == 0 or mask.shape == shape:
        return mask.expand(shape)
    if len(shape) and mask.shape == shape[:1]:
        return mask.reshape(mask.shape + (1,) * (len(shape) - 1)).expand(shape)
    raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit a tensor of shape {tuple(shape)}")


def apply_transfer(merged: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> float:
    """Copy ``source`` into ``merged`` in place where ``mask`` holds; return the fraction copied.

    Decided on the per-unit mask, never on its expansion to the tensor's shape
    (a scalar mask would otherwise be read once per entry): every unit covers
    the same number of entries, so the mask's mean is the fraction copied.
    """
    full = expand_mask(mask, merged.shape)  # a view; raises for a mask that does not fit
    if merged.numel() == 0:
        return 0.0
    with torch.no_grad():
        if mask.all():
            merged.copy_(source)
        elif mask.any():
            merged.copy_(torch.where(full, source, merged))
    return float(mask.float().mean())


def row_partners(named_shapes: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, str]:
    """Map each bias to the weight whose rows it follows under ``row`` granularity.

    A ``<module>.bias`` follows ``<module>.weight`` when the weight is at least
    2-D and has as many rows as the bias has entries (Linear, Conv). Biases of
    1-D weights (norm layers) are scored on their own, per entry.
    """
    shapes = dict(named_shapes)
    partners = {}
    for name, shape in shapes.items():
        if not name.endswith(".bias"):
            continue
        weight = name[: -len("bias")] + "weight"
        wshape = shapes.get(weight)
        if wshape is not None and len(wshape) >= 2 and len(shape) == 1 and wshape[0] == shape[0]:
            partners[name] = weight
    return partners
