"""The arithmetic of the baseline merge methods, as free functions over tensors.

Everything here works on plain tensors (one parameter of K models at a time,
or a running buffer and one new tensor), in the style of
``peft.utils.merge_utils`` — no model objects, so every rule is testable on
tensors small enough to check by hand. TIES and task arithmetic call peft's
own functions rather than re-deriving them.

Reading checkpoints is not done here: :func:`hf_grasp.inputs.sources.iter_across`
hands these functions one tensor of every source at a time.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor

# --- averaging ----------------------------------------------------------------


def running_mean_(mean: Tensor, new: Tensor, count: int) -> Tensor:
    """Fold the ``count``-th value into a running mean in place: ``mean += (new - mean) / count``.

    After values ``x_1..x_n`` (the first copied in, the others folded with
    ``count = 2..n``) ``mean`` is their arithmetic mean.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if count == 1:
        return mean.copy_(new)
    return mean.add_(new.to(mean.dtype) - mean, alpha=1.0 / count)


# --- task vectors: task arithmetic and TIES ---------------------------------------


def _peft_merge_utils():
    """``peft.utils.merge_utils``, imported on first use: peft is an optional extra that only the methods built
    on it need (they check for it before they start)."""
    from peft.utils import merge_utils

    return merge_utils


def task_vectors(base: Tensor, tensors: Sequence[Tensor]) -> list[Tensor]:
    """``tensors[k] - base`` for every k: the task vectors of one parameter."""
    return [t - base for t in tensors]


def task_arithmetic(base: Tensor, tensors: Sequence[Tensor], scaling: float) -> Tensor:
    """Task arithmetic (Ilharco et al., 2023): ``base + scaling * sum_k (tensors[k] - base)``.

    The sum of task vectors is peft's ``task_arithmetic`` with every weight
    equal to ``scaling``.
    """
    if not tensors:
        return base.clone()
    weights = torch.full((len(tensors),), float(scaling), dtype=base.dtype, device=base.device)
    return base + _peft_merge_utils().task_arithmetic(task_vectors(base, tensors), weights)


def ties(
    base: Tensor,
    tensors: Sequence[Tensor],
    *,
    scaling: float,
    density: float,
    majority_sign_method: Literal["total", "frequency"] = "total",
) -> Tensor:
    """TIES-merging (Yadav et al., 2023) of one parameter: ``base + scaling * ties(task vectors)``.

    peft's ``ties``: each task vector keeps its top ``density`` fraction of
    entries by magnitude (trim), the sign with the larger total mass wins per
    entry (elect), and the entries agreeing with it are averaged (disjoint
    mean). Trimming is per tensor (peft's), not over the whole flattened model
    as in the paper and FusionBench.
    """
    if not tensors:
        return base.clone()
    weights = torch.full((len(tensors),), float(scaling), dtype=base.dtype, device=base.device)
    return base + _peft_merge_utils().ties(task_vectors(base, tensors), weights, density, majority_sign_method)


# --- Fisher merging ----------------------------------------------------------------


def fisher_objective(logits: Tensor) -> Tensor:
    """Scalar whose squared gradient is FusionBench's (MergeLM's) Fisher estimate for one batch.

    ``sum_n sum_y sqrt(p(y|x_n)) * log p(y|x_n)`` with ``p`` detached: the
    expectation is over the model's own predictive distribution (not the
    labels), and the ``sqrt(p)`` becomes ``p`` once the gradient is squared.
    The square is taken of the batch sum's gradient (not per example), as in
    FusionBench.
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)
    return (torch.sqrt(log_p.detach().exp()) * log_p).sum()


def fisher_coefficient(fisher_norm: float, minimal_fisher_weight: float = 1e-6) -> float:
    """FusionBench's ``normalize_fisher_weight``: a model's weight is ``1 / (||F_k|| + eps)``.

    FusionBench further divides these by their sum (and by K); those common
    factors cancel in :func:`fisher_merge`'s ratio, so streaming needs only
    each model's own norm.
    """
    return 1.0 / (float(fisher_norm) + minimal_fisher_weight)


def fisher_accumulate_(
    numerator: Tensor,
    denominator: Tensor,
    param: Tensor,
    fisher: Tensor,
    coefficient: float = 1.0,
    minimal_fisher_weight: float = 1e-6,
) -> None:
    """Fold one model into the running sums: ``num += c (F + eps) theta``, ``den += c (F + eps)``."""
    w = (fisher.to(denominator.dtype) + minimal_fisher_weight) * coefficient
    denominator.add_(w)
    numerator.add_(w * param.to(numerator.dtype))


def fisher_merge(
    params: Sequence[Tensor],
    fishers: Sequence[Tensor],
    *,
    coefficients: Sequence[float] | None = None,
    minimal_fisher_weight: float = 1e-6,
) -> Tensor:
    """Diagonal Fisher merging (Matena & Raffel, 2022) of one parameter.

    ``sum_k c_k (F_k + eps) theta_k / sum_k c_k (F_k + eps)`` elementwise,
    FusionBench's ``merging_with_fisher_weights`` (``eps`` is its
    ``minimal_fisher_weight``, which keeps the denominator positive). A convex
    combination: every entry lies between the models' min and max.
    """
    if len(params) != len(fishers) or not params:
        raise ValueError("need one Fisher tensor per parameter tensor, and at least one")
    coefficients = [1.0] * len(params) if coefficients is None else list(coefficients)
    num = torch.zeros_like(params[0], dtype=torch.float32)
    den = torch.zeros_like(num)
    for p, f, c in zip(params, fishers, coefficients):
        fisher_accumulate_(num, den, p, f, c, minimal_fisher_weight)
    return num / den


# --- OPCM ----------------------------------------------------------------------


def as_matrix(t: Tensor) -> Tensor:
    """A weight as a 2-D matrix: ``(out, in)`` stays, a conv ``(out, in, kh, kw)`` becomes ``(out, in*kh*kw)``."""
    return t.reshape(t.shape[0], -1)


def opcm_split_rank(singular_values: Tensor, alpha: float) -> int:
    """OPCM's split rank as FusionBench computes it.

    The 0-based index of the first singular value at which the cumulative share
    ``cumsum(s) / sum(s)`` exceeds ``alpha``; the block ``[:r, :r]`` is
    removed. (FusionBench's docs write the 1-based index of that value, one
    more; the code, followed here, excludes the crossing value from the block —
    its diagonal term is removed anyway.) 0 when all singular values are 0.
    """
    total = singular_values.sum()
    if total <= 0:
        return 0
    return int((singular_values.cumsum(0) / total > alpha).float().argmax())


def opcm_project(previous: Tensor, task: Tensor, alpha: float) -> Tensor:
    """OPCM's projection of a new task vector against the merged task vector so far (2-D).

    With ``previous = U S V^T`` and ``r = opcm_split_rank(S, alpha)``, removes
    from ``task`` its components on ``u_i v_j^T`` for ``i, j < r`` (the
    principal subspace) and on ``u_i v_i^T`` for every ``i`` (the diagonal):
    FusionBench's ``U^T task V`` with the ``[:r, :r]`` block and the diagonal
    zeroed, mapped back. Written with the thin SVD (no ``m x m`` / ``n x n``
    bases), which gives the same matrix. ``previous == 0`` leaves ``task``
    unchanged (there is nothing to be orthogonal to).
    """
    if previous.dim() != 2 or task.shape != previous.shape:
        raise ValueError(f"opcm_project needs two 2-D tensors of one shape, got {tuple(previous.shape)} "
                         f"and {tuple(task.shape)}")
    prev, t = previous.double(), task.double()  # the SVD basis must be orthonormal to working precision
    u, s, vh = torch.linalg.svd(prev, full_matrices=False)
    if not bool(s.sum() > 0):
        return task.clone()
    r = opcm_split_rank(s, alpha)
    v = vh.mT
    coords = u.mT @ t @ v                          # k x k coordinates of task in the basis u_i v_j^T
    removed = torch.diag_embed(torch.diagonal(coords))
    removed[:r, :r] = coords[:r, :r]
    return (t - u @ removed @ v.mT).to(task.dtype)


def opcm_update(previous_sum: Tensor, task: Tensor, alpha: float) -> Tensor:
    """One OPCM step for one parameter, on the unnormalised running sum of projected task vectors.

    Weights with 2 or more dimensions are projected (:func:`opcm_project`, convs
    as matrices), other parameters (biases, norms) are added as they are.
    """
    if task.dim() >= 2:
        return previous_sum + opcm_project(as_matrix(previous_sum), as_matrix(task), alpha).reshape(task.shape)
    return previous_sum + task


def opcm_scale(sum_norm: float, task_vector_norms: Sequence[float]) -> float:
    """OPCM's adaptive scaling: the factor making the merged task vector's norm the mean task-vector norm.

    FusionBench divides by ``lambda_t = ||sum|| / mean_k ||tau_k||`` (norms over
    the whole model), so ``||merged - base|| == mean_k ||tau_k||``.
    """
    mean = sum(task_vector_norms) / max(len(task_vector_norms), 1)
    if sum_norm <= 0 or mean <= 0:
        return 1.0
    return mean / sum_norm


__all__ = [
    "as_matrix", "fisher_accumulate_", "fisher_coefficient", "fisher_merge", "fisher_objective",
    "opcm_project", "opcm_scale", "opcm_split_rank", "opcm_update", "running_mean_", "task_arithmetic",
    "task_vectors", "ties",
]
