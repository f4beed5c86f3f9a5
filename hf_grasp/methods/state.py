"""Helpers over a model's state that the parameter-space methods share (multi-source, Fisher, OPCM, task vectors)."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from ..engine.merge_math import running_mean_


def unique_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict without aliases: a tied tensor appears once (in-place updates apply once)."""
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape), t.dtype)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def parameter_names(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def fold_mean(target: dict[str, Tensor], source: dict[str, Tensor], counts: dict[str, int],
              skipped: Iterable[str] = ()) -> None:
    """Fold one source into a per-tensor running mean held in ``target``'s tensors, in place.

    ``counts`` names the tensors to average and how many sources each has seen.
    Float tensors: ``mean += (new - mean) / k``. Integer tensors (BatchNorm's
    ``num_batches_tracked``) are not averaged: the first source's is kept.
    Tensors in ``skipped`` (a head pre-flight left out) do not count.
    """
    skipped = set(skipped)
    with torch.no_grad():
        for name in counts:
            if name in skipped:
                continue
            t = target[name]
            if not t.is_floating_point():
                if counts[name] == 0:
                    t.copy_(source[name])
                    counts[name] = 1
                continue
            counts[name] += 1
            running_mean_(t, source[name], counts[name])
