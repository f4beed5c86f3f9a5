"""The seam between the algorithm and a model library.

A :class:`ModelFamily` knows how to build an empty model of a checkpoint's
architecture from its config alone, how to turn images into its inputs, how to
get logits out of it and how to save it in the library's native format. The
merge engine only ever talks to a model through this interface, so a new
family (text classifiers, say) plugs in without touching the algorithm.
"""

from __future__ import annotations

import abc
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from ...runtime.errors import GraspError, flag


@dataclass(frozen=True)
class Read:
    """One checkpoint tensor and the model tensors it becomes when it is loaded."""

    key: str                    #: its name in the checkpoint
    targets: tuple[str, ...]    #: the model's (``state_dict``) names it fills, in the order ``split`` returns them
    #: the checkpoint tensor -> the tensors of ``targets`` (a library's conversion, e.g. one fused tensor
    #: split in two); None: the tensor is stored as the model holds it, under ``targets[0]``
    split: Callable[[torch.Tensor], list[torch.Tensor]] | None = None

    def convert(self, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """``(model name, tensor)`` for each of ``targets``, from the checkpoint tensor ``tensor``."""
        return zip(self.targets, self.split(tensor) if self.split is not None else (tensor,))


class TensorNaming:
    """How a checkpoint names a model's tensors; here, as the model does (it saves its ``state_dict()``).

    A library that saves some architectures under other names than it holds
    them in memory (transformers) overrides :meth:`reads` (checkpoint -> model,
    as its loader renames) and :meth:`checkpoint_name` (model -> checkpoint, as
    its saver writes). The engine works on model names throughout and shows
    users the checkpoint's.
    """

    def reads(self, keys: Iterable[str], *, source: str = "") -> list[Read]:
        """How each of a checkpoint's tensor names ``keys`` (of source ``source``) is loaded into the model.

        Raises :class:`~hf_grasp.runtime.errors.SourceError` when the checkpoint cannot
        be read one tensor at a time (a library joining several into one).
        """
        return [Read(k, (k,)) for k in keys]

    def checkpoint_name(self, name: str) -> str:
        """The name the model's tensor ``name`` has in a checkpoint the library saves (what the Hub shows)."""
        return name


#: the naming of a family whose checkpoints hold the model's own names
SAME_NAMES = TensorNaming()


class ModelFamily(abc.ABC):
    """One model library (transformers, timm, ...)."""

    #: short name recorded in reports ("transformers", "timm")
    name: str = ""
    #: what the models classify: "image" or "text" (the target must hold the same)
    modality: str = "image"

    def __init__(self, *, trust_remote_code: bool = False):
        #: whether code from a checkpoint's repository may run (the caller's ``--trust-remote-code``), for what the
        #: family loads besides the model (a text family's tokenizer)
        self.trust_remote_code = trust_remote_code

    @classmethod
    @abc.abstractmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        """Whether a checkpoint's parsed ``config.json`` belongs to this family."""

    @abc.abstractmethod
    def build(self, model_dir: Path, *, trust_remote_code: bool = False) -> nn.Module:
        """Allocate a randomly initialised fp32 model from ``model_dir``'s config only.

        No weights are read: the engine streams them in afterwards.
        """

    def naming(self, model: nn.Module) -> TensorNaming:
        """How checkpoints of ``model``'s architecture name its tensors (by default, as ``state_dict()`` does)."""
        return SAME_NAMES

    @abc.abstractmethod
    def num_labels(self, model_dir: Path) -> int:
        """Number of output classes the checkpoint's head has."""

    @abc.abstractmethod
    def image_transform(self, model_dir: Path, *, train: bool = False) -> Callable[[list], torch.Tensor]:
        """Preprocessing from the checkpoint's own processor / data config.

        Returns a function mapping a list of PIL images to a float tensor
        ``(N, C, H, W)``. Never hand-written normalisation.
        """

    def transform(self, model_dir: Path, *, train: bool = False, max_length: int = 128) -> Any:
        """The preprocessing a target's rows go through: :meth:`image_transform` for an image family; a text
        family's tokenizer (:class:`~hf_grasp.inputs.data.TextEncoder`, cutting at ``max_length`` tokens)."""
        return self.image_transform(model_dir, train=train)

    def check_same_inputs(self, lead: str, lead_dir: Path, name: str, model_dir: Path) -> None:
        """Refuse source ``name`` (in ``model_dir``) whose preprocessing differs from the lead's where the merge
        needs it the same (a text family: the tokenizer). Nothing to compare by default."""

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        """Turn on the library's own gradient checkpointing (activations recomputed in the backward pass instead
        of kept), or raise :class:`~hf_grasp.runtime.errors.GraspError` naming the architecture that has none."""
        raise GraspError(f"{type(model).__name__} ({self.name}): no gradient checkpointing in this library; leave "
                         f"out {flag('gradient_checkpointing')}")

    @contextlib.contextmanager
    def checkpointing_in_eval(self, model: nn.Module) -> Iterator[None]:
        """Within the block, a model in eval mode with checkpointing enabled still checkpoints (the alignment
        takes its gradients in eval mode); nothing to do where the library checkpoints in either mode."""
        yield

    @abc.abstractmethod
    def logits(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Forward pass returning ``(N, num_labels)`` logits; ``batch`` holds the model's inputs as the family's
        preprocessing made them (``pixel_values``; ``input_ids`` and ``attention_mask``) besides ``labels``."""

    @abc.abstractmethod
    def save(self, model: nn.Module, out_dir: Path, *, like: Path) -> None:
        """Write ``model`` to ``out_dir`` in the library's native format.

        ``like`` is a checkpoint directory of the same architecture whose config
        and preprocessing files are carried over, so the result loads with the
        library alone (``AutoModelForImageClassification.from_pretrained`` /
        ``timm.create_model('local-dir:...', pretrained=True)``).
        """
