"""The seam between the algorithm and a model library.

A :class:`ModelFamily` knows how to build an empty model of a checkpoint's
architecture from its config alone, how to turn images into its inputs, how to
get logits out of it and how to save it in the library's native format. The
merge engine only ever talks to a model through this interface, so a new
family (text classifiers, say) plugs in without touching the algorithm.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn


class ModelFamily(abc.ABC):
    """One model library (transformers, timm, ...)."""

    #: short name recorded in reports ("transformers", "timm")
    name: str = ""

    @classmethod
    @abc.abstractmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        """Whether a checkpoint's parsed ``config.json`` belongs to this family."""

    @abc.abstractmethod
    def build(self, model_dir: Path, *, trust_remote_code: bool = False) -> nn.Module:
        """Allocate a randomly initialised fp32 model from ``model_dir``'s config only.

        No weights are read: the engine streams them in afterwards.
        """

    @abc.abstractmethod
    def num_labels(self, model_dir: Path) -> int:
        """Number of output classes the checkpoint's head has."""

    @abc.abstractmethod
    def image_transform(self, model_dir: Path, *, train: bool = False) -> Callable[[list], torch.Tensor]:
        """Preprocessing from the checkpoint's own processor / data config.

        Returns a function mapping a list of PIL images to a float tensor
        ``(N, C, H, W)``. Never hand-written normalisation.
        """

    @abc.abstractmethod
    def logits(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Forward pass returning ``(N, num_labels)`` logits."""

    @abc.abstractmethod
    def save(self, model: nn.Module, out_dir: Path, *, like: Path) -> None:
        """Write ``model`` to ``out_dir`` in the library's native format.

        ``like`` is a checkpoint directory of the same architecture whose config
        and preprocessing files are carried over, so the result loads with the
        library alone (``AutoModelForImageClassification.from_pretrained`` /
        ``timm.create_model('local-dir:...', pretrained=True)``).
        """
