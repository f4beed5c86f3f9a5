"""What every merge method receives: :class:`MergeContext`.

A method is a function ``method(ctx: MergeContext) -> None`` that leaves the
result in ``ctx.merged`` (methods are named in :mod:`hf_grasp.methods.registry`).
The context owns the two models that ever exist (the merged model and the probe
a source is streamed into), the target data, the accelerator and the report
records, so every method shares one source stream, one data path and one
evaluation.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from .._memory import release_freed_memory
from ..data import TargetData, alignment_batches, make_loader
from ..errors import NumericalError
from ..families.base import ModelFamily
from ..options import MergeOptions, MethodParams
from ..progress import log
from ..sources import ResolvedSource, stream_into
from ..training import evaluate_model, fine_tune


@contextlib.contextmanager
def released(model: nn.Module):
    """Free ``model``'s tensor storage for the duration; afterwards it has the same
    tensors again (same objects, same shapes, uninitialised values)."""
    tensors = [t for t in itertools.chain(model.parameters(), model.buffers())]
    shapes = [(t.shape, t.dtype, t.device) for t in tensors]
    for t in tensors:
        t.data = torch.empty(0, dtype=t.dtype, device=t.device)
    release_freed_memory()
    try:
        yield
    finally:
        for t, (shape, dtype, device) in zip(tensors, shapes):
            t.data = torch.empty(shape, dtype=dtype, device=device)


@dataclass
class MergeContext:
    """The state a merge method works on."""

    options: MergeOptions               # what every method shares
    params: MethodParams                # the running method's own parameters (ctx.params.density, ...)
    family: ModelFamily
    model_dir: Any                      # a checkpoint directory of the architecture (config, processor)
    sources: list[ResolvedSource]       # in merge order
    skips: dict[str, list[str]]         # source name -> head tensors not read from it
    init_source: ResolvedSource | None  # explicit init model, when options.init names one
    base_source: ResolvedSource | None  # the sources' shared starting point, when options.base names one
    merged: nn.Module
    probe: nn.Module
    data: TargetData
    accelerator: Accelerator
    records: list[dict] = field(default_factory=list)  # one per step, rendered by report.py
    artifact: Any = None  # a non-native result (e.g. an EnsembleSpec) saved instead of ``merged``

    def __post_init__(self):
        train_tf = self.family.image_transform(self.model_dir, train=self.options.augment)
        self.eval_transform = self.family.image_transform(self.model_dir, train=False)
        bs, seed = self.options.batch_size, self.options.seed
        self.train_loader = make_loader(self.data.splits["train"], train_tf, batch_size=bs, shuffle=True, seed=seed)
        self.val_loader = make_loader(self.data.splits["validation"], self.eval_transform, batch_size=bs, shuffle=False)
        self.test_loader = make_loader(self.data.splits["test"], self.eval_transform, batch_size=bs, shuffle=False)

    # --- the shared pieces every method uses

    def load(self, model: nn.Module, source: ResolvedSource) -> None:
        """Stream ``source`` into ``model`` in place (the only way weights enter a model)."""
        with source.present():
            stream_into(model, source, self.skips.get(source.name, ()))

    def alignment_batches(self, step: int, n_batches: int) -> list[dict]:
        """``n_batches`` target-train batches for one alignment step, moved to the device; never val or test."""
        batches = alignment_batches(
            self.data.splits["train"], self.eval_transform,
            n_batches=n_batches, batch_size=self.options.batch_size,
            seed=self.options.seed * 1000 + step,
        )
        dev = self.accelerator.device
        return [{k: v.to(dev) for k, v in b.items()} for b in batches]

    def gradients(self, model: nn.Module, batches: list[dict], *, step: str = "alignment",
                  advice: str = "lower --lr or check the sources") -> None:
        """Sum of the loss gradients over ``batches`` into ``param.grad``, model in eval mode.

        Eval mode for both models (deterministic, dropout-free, each model's own
        BatchNorm statistics); the released code used train mode for the merged model.

        A NaN or inf loss raises :class:`NumericalError` ``"{step}: ...; {advice}"``:
        its gradients would make every alignment score NaN, and a NaN score
        silently transfers nothing. The losses stay on the device until the
        last batch, so the check costs one host sync per call, not per batch.
        """
        model.eval()
        model.zero_grad(set_to_none=True)
        losses = []
        for b in batches:
            logits = self.family.logits(model, b["pixel_values"])
            loss = torch.nn.functional.cross_entropy(logits, b["labels"])
            loss.backward()
            losses.append(loss.detach())
        total = float(torch.stack(losses).sum()) if losses else 0.0
        if not math.isfinite(total):
            raise NumericalError(f"{step}: the loss on the target-train alignment batches is {total}; {advice}")

    @property
    def total_epochs(self) -> int:
        """The fine-tuning budget GRASP spends: initial epochs plus one round per further source.

        Every method that trains gets this same budget, so comparisons are fair.
        """
        return self.options.initial_epochs + self.options.finetune_epochs * max(len(self.sources) - 1, 0)

    def fine_tune(self, epochs: int, desc: str, *, lr: float | None = None) -> list[dict]:
        """Fine-tune the merged model on target train.

        The probe is idle meanwhile: its storage is released (the next
        :meth:`load` re-materialises it) and the best-validation state goes to a
        scratch safetensors file, so fine-tuning holds one model, its gradients
        and the AdamW moments, nothing more. ``lr`` overrides ``options.lr`` (a
        method with its own rate, such as PEARL's adapters).
        """
        if epochs == 0:
            return []
        from ..workspace import run_dir  # the run's scratch: a killed run's best state is swept by the next

        o = self.options
        with tempfile.TemporaryDirectory(prefix="hf-grasp-best-", dir=run_dir()) as tmp, released(self.probe):
            return fine_tune(
                self.merged, self.family.logits, self.train_loader, self.val_loader, self.accelerator,
                epochs=epochs, lr=o.lr if lr is None else lr, weight_decay=o.weight_decay, schedule=o.schedule,
                best_store=Path(tmp) / "best.safetensors", desc=desc,
            )

    def check_finite(self) -> None:
        """Raise :class:`NumericalError` naming the merged model's first tensor holding NaN or inf.

        Run once at the end of a merge, before a result exists that could be
        saved. Every floating-point tensor is reduced on the device and the
        flags come back in one sync. An artifact (the ensemble) is what gets
        saved instead of ``merged``, and its members were checked as they streamed.
        """
        if self.artifact is not None:
            return
        state = [(n, t) for n, t in self.merged.state_dict().items() if t.is_floating_point()]
        finite = torch.stack([torch.isfinite(t).all() for _, t in state]).tolist() if state else []
        for (name, tensor), ok in zip(state, finite):
            if not ok:
                raise NumericalError(
                    f"merged model: tensor {name!r} has {NumericalError.count(tensor)} at the end of the merge, "
                    "so it was not saved; the merge overflowed: check the sources' weights and lower --lr or "
                    "the method's --scaling")

    def evaluate(self, model: nn.Module | None = None, split: str = "validation") -> dict:
        loader = self.val_loader if split == "validation" else self.test_loader
        return evaluate_model(model if model is not None else self.merged, self.family.logits, loader, self.accelerator)

    def record(self, **entry) -> dict:
        """Keep one step's entry for the report and log it as one line (on the main process)."""
        entry.setdefault("time", time.time())
        self.records.append(entry)
        if self.accelerator.is_local_main_process:
            parts = []
            moved = entry.get("transferred")
            if moved:
                parts.append(f"{sum(1 for v in moved.values() if v)}/{len(moved)} tensors transferred")
            for split, short in (("validation", "val"), ("test", "test")):
                accuracy = (entry.get(split) or {}).get("accuracy")
                if isinstance(accuracy, (int, float)) and math.isfinite(accuracy):
                    parts.append(f"{short} {100 * accuracy:.2f}%")
            if isinstance(entry.get("seconds"), (int, float)):
                parts.append(f"{entry['seconds']:.1f} s")
            source = f" ({entry['source']})" if entry.get("source") else ""
            log.info("%s%s: %s", entry.get("step", "step"), source, ", ".join(parts) or "done")
        return entry
