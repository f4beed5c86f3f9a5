"""Every merge option, declared once.

:class:`MergeOptions` is the single declaration: its field names are the
Python keyword arguments of :meth:`GraspMerger.from_pretrained`, the CLI flags
(``--align-batches`` for ``align_batches``) and the recipe keys; its help
strings are the CLI help and the README's option table; the whole dataclass is
recorded in the report and the model card.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from .alignment import GRANULARITIES
from .errors import GraspError


def _opt(default, help: str, *, choices=None, flag: str | None = None, group: str = "merge"):
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag, "group": group})


@dataclass
class MergeOptions:
    """Options of a GRASP merge. Defaults follow DESIGN.md §1 (the paper and its released code)."""

    # --- target data
    target_domain: str | None = _opt(None, "Keep only target rows whose domain column equals this value.", group="data")
    domain_column: str = _opt("domain", "Column holding the domain of each row.", group="data")
    image_column: str = _opt("image", "Column holding the images.", group="data")
    label_column: str = _opt("label", "Column holding the integer class labels.", group="data")
    validation_fraction: float = _opt(
        0.1, "Fraction of train carved (stratified, seeded) as validation when the dataset has none.", group="data")

    # --- the algorithm
    tau: float = _opt(0.3, "Alignment threshold: a unit is transferred when its gradient cosine is strictly above tau.")
    granularity: str = _opt("tensor", "Unit that gets one score: a whole parameter tensor, an output row, or an element.",
                            choices=GRANULARITIES)
    align_batches: int = _opt(1, "Number of target-train batches whose summed gradients are compared.")
    batch_size: int = _opt(32, "Batch size for alignment, fine-tuning and evaluation.")
    initial_epochs: int = _opt(3, "Epochs fine-tuning the initial model on the target before the first transfer.")
    finetune_epochs: int = _opt(3, "Epochs fine-tuning after each source's transfer (Stage 5); 0 disables it.")
    lr: float = _opt(5e-5, "AdamW learning rate.")
    weight_decay: float = _opt(0.01, "AdamW weight decay.")
    schedule: str = _opt("cosine", "Learning-rate schedule over each fine-tuning round.",
                         choices=("cosine", "linear", "constant"))
    init: str = _opt("first", "Initial merged model: 'first' (the first source), 'random', or a model reference "
                     "(e.g. an earlier merge); with the last two the loop starts at the first source.")
    order: str = _opt("given", "Source order: 'given', 'reverse', 'random' (seeded) or a comma list of 0-based indices.")
    seed: int = _opt(0, "Seed for batches, shuffling, random init and random order.")
    buffers: str = _opt("keep", "BatchNorm running statistics: 'keep' the merged model's (released code), or "
                        "'follow' the module's transferred weight.", choices=("keep", "follow"))
    skip_mismatched_heads: bool = _opt(False, "Skip (and report) source heads whose size differs from the target's "
                                       "label count instead of failing.")
    augment: bool = _opt(False, "Train with the model library's own augmentation (timm's training transform); off "
                         "by default so both families train on the same deterministic preprocessing.")
    base: str | None = _opt(None, "The sources' shared starting point (a model reference), for methods on task "
                            "vectors (task-arithmetic, ties).")
    recalibrate_bn: bool = _opt(False, "After a parameter-space merge, re-estimate BatchNorm running statistics on "
                                "target train images (forward passes only, cumulative average).")
    scaling: float | None = _opt(None, "Task-vector scaling λ (task-arithmetic 0.3, ties 1.0 when unset).",
                                 group="baselines")
    density: float = _opt(0.2, "TIES: fraction of each task vector's entries kept by magnitude.", group="baselines")
    fisher_examples: int = _opt(256, "Fisher merging: target-train examples for each source's diagonal Fisher.",
                                group="baselines")
    opcm_alpha: float = _opt(0.5, "OPCM: fraction of the singular-value energy whose subspace a new task vector "
                             "is projected away from.", group="baselines")
    eval_sources: bool = _opt(True, "Also evaluate each source alone on the target test split for the report.")

    # --- loading and runtime
    allow_pickle: bool = _opt(False, "Allow pickle weight files (.bin/.pth) when a source has no safetensors.",
                              group="runtime")
    trust_remote_code: bool = _opt(False, "Allow model or dataset code from the Hub to run.", group="runtime")
    evict_sources: bool = _opt(False, "Download each Hub source's weights only when it is streamed, into a scratch "
                               "directory deleted right after: disk holds one source checkpoint whatever K "
                               "(online; not the first source, not methods that read every source at once).",
                               group="runtime")
    mixed_precision: str = _opt("no", "accelerate mixed precision.", choices=("no", "fp16", "bf16"), group="runtime")
    cpu: bool = _opt(False, "Force the CPU even when an accelerator is present.", group="runtime")

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise GraspError(f"option granularity={self.granularity!r}: choose from {', '.join(GRANULARITIES)}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise GraspError(f"option {f.name}={getattr(self, f.name)!r}: choose from {', '.join(choices)}")
        for name in ("align_batches", "batch_size"):
            if getattr(self, name) < 1:
                raise GraspError(f"option {name} must be at least 1")
        for name in ("initial_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise GraspError(f"option {name} must not be negative")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def build(cls, *layers: dict[str, Any]) -> "MergeOptions":
        """Options from layered dicts, later layers winning; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        merged: dict[str, Any] = {}
        for layer in layers:
            for key, value in layer.items():
                if key not in known:
                    raise GraspError(f"unknown option {key!r}; known options: {', '.join(sorted(known))}")
                if value is not None:
                    merged[key] = value
        return cls(**merged)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_option_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one CLI flag per option. Unset flags parse to None so recipes and defaults can fill them."""
    groups = {}
    for f in fields(MergeOptions):
        group = f.metadata["group"]
        if group not in groups:
            groups[group] = parser.add_argument_group(f"{group} options")
        kwargs: dict[str, Any] = {"default": None, "help": f"{f.metadata['help']} (default: {f.default})"}
        if f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {"int": int, "float": float}.get(str(f.type), str)
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
        groups[group].add_argument(flag_name(f.name), dest=f.name, **kwargs)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user actually set on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(MergeOptions) if getattr(args, f.name, None) is not None}


def option_table_markdown() -> str:
    """The README's option table, generated from the declarations."""
    rows = ["| option (Python / CLI) | default | meaning |", "|---|---|---|"]
    for f in fields(MergeOptions):
        rows.append(f"| `{f.name}` / `{flag_name(f.name)}` | `{f.default}` | {f.metadata['help']} |")
    return "\n".join(rows)
