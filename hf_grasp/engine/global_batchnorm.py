"""BatchNorm over the global batch when several processes each hold a share of it.

With ``split_batches`` every process trains on its rows of the same global batch. A BatchNorm layer in train
mode normalises with the statistics of the rows it sees, so two processes would normalise with half-batch
statistics and make a different model from one process. ``torch.nn.SyncBatchNorm`` fixes that on GPUs only
(it refuses CPU tensors) and only for modules it can swap (not timm's ``BatchNormAct2d`` and kin).

:func:`global_batchnorm` instead intercepts ``torch.nn.functional.batch_norm`` itself (a
``TorchFunctionMode``), which every BatchNorm module of torch, transformers and timm calls, whatever its
class: in training mode the per-channel mean and variance are all-reduced over the processes (two
differentiable all-reduces, so the backward pass is that of one process over the whole batch), and the
running statistics are updated from them as one process would. One process, or eval mode, is untouched.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


def batch_norm_across(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                      weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, momentum: float = 0.1,
                      eps: float = 1e-5, group: Any = None) -> torch.Tensor:
    """``F.batch_norm(..., training=True)`` with the batch statistics of every process's rows together.

    Two passes (the sum, then the squared deviations from the global mean), each one all-reduce of a
    per-channel vector: as precise as one process's variance, and differentiable through
    ``torch.distributed.nn.functional.all_reduce``. The running variance takes the unbiased estimate over the
    global count, as ``F.batch_norm`` does over its one batch.
    """
    channels = input.shape[1]
    dims = [0, *range(2, input.dim())]
    shape = [1, channels] + [1] * (input.dim() - 2)
    x = input.float()  # statistics in fp32 under mixed precision, as torch's BatchNorm kernels keep them
    count = torch.full((1,), x.numel() / max(channels, 1), dtype=x.dtype, device=x.device)
    sums = dist_fn.all_reduce(torch.cat([x.sum(dims), count]), group=group or dist.group.WORLD)
    n = sums[-1]
    mean = sums[:-1] / n
    centered = x - mean.view(shape)
    var = dist_fn.all_reduce((centered * centered).sum(dims), group=group or dist.group.WORLD) / n
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(mean.detach().to(running_mean.dtype), alpha=momentum)
            unbiased = var.detach() * (n.detach() / (n.detach() - 1).clamp(min=1))
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
    out = centered * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out.to(input.dtype)


class _AcrossProcesses(TorchFunctionMode):
    """Routes every training-mode ``F.batch_norm`` call to :func:`batch_norm_across`."""

    def __init__(self, group: Any = None):
        super().__init__()
        self.group = group

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            bound = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            if a["training"]:
                return batch_norm_across(a["input"], a["running_mean"], a["running_var"], a["weight"], a["bias"],
                                         a["momentum"], a["eps"], self.group)
        return func(*args, **kwargs)


@contextlib.contextmanager
def global_batchnorm(num_processes: int, group: Any = None) -> Iterator[None]:
    """Within the block, BatchNorm in train mode normalises over the rows of all ``num_processes`` processes
    (a no-op for one process: nothing is intercepted)."""
    if num_processes <= 1 or not (dist.is_available() and dist.is_initialized()):
        yield
        return
    with _AcrossProcesses(group):
        yield
