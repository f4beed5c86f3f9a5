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
import functools
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from torch import nn

from ..runtime.memory import packed_empty, release_freed_memory
from ..inputs.data import TargetData, alignment_batches, make_loader, preprocess_target
from ..runtime.errors import NumericalError, flag
from ..runtime.interrupts import raise_if_interrupted
from ..inputs.families.base import ModelFamily, TensorNaming
from ..plan.options import MergeOptions, MethodParams
from ..runtime.progress import log
from ..inputs.sources import ResolvedSource, stream_into
from ..runtime.timing import PhaseTimer
from .global_batchnorm import global_batchnorm
from .records import Step
from .training import evaluate_model, fine_tune, row_slices, rows_of


@contextlib.contextmanager
def released(model: nn.Module):
    """Free ``model``'s tensor storage for the duration; afterwards it has the same
    tensors again (same objects, same shapes, uninitialised values), packed in one
    block per dtype (:func:`~hf_grasp.runtime.memory.packed_empty`: out of the C heap)."""
    # what a checkpoint holds (state_dict, tied tensors once); a non-persistent buffer (BERT's position_ids) is a
    # constant no source brings back, so it is kept
    tensors = list({id(t): t for t in model.state_dict(keep_vars=True).values()}.values())
    like = [torch.empty(t.shape, dtype=t.dtype, device="meta") for t in tensors]  # shapes and dtypes only
    devices = [t.device for t in tensors]
    for t in tensors:
        t.data = torch.empty(0, dtype=t.dtype, device=t.device)
    release_freed_memory()
    try:
        yield
    finally:
        for device in dict.fromkeys(devices):
            index = [i for i, d in enumerate(devices) if d == device]
            for i, fresh in zip(index, packed_empty([like[i] for i in index], device=device)):
                tensors[i].data = fresh


def _all_reduce_gradients(model: nn.Module, loss: torch.Tensor, accelerator: Accelerator) -> torch.Tensor:
    """Sum ``model``'s gradients and ``loss`` over the processes in one all-reduce; returns the summed loss.

    Every parameter takes part (zeros where a process has no gradient) so all
    processes send buffers of one layout; afterwards every process holds the
    same sums, and a parameter no process reached keeps ``grad`` None.
    """
    params = list(model.parameters())
    flat = torch.cat([loss.reshape(1).to(torch.float32)] + [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float32) for p in params])
    reached = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=flat.device)
    flat, reached = accelerator.reduce([flat, reached], reduction="sum")
    offset = 1
    for p, hit in zip(params, reached.tolist()):
        n = p.numel()
        if hit:
            p.grad = flat[offset:offset + n].view_as(p).to(p.dtype).clone()
        offset += n
    return flat[0]


@contextlib.contextmanager
def _handing_over(model: nn.Module, consume: Callable[[str, torch.Tensor], None] | None):
    """Within the block, once the yielded function is called, every gradient accumulated into a parameter
    of ``model`` goes to ``consume(name, grad)`` and is freed (no-op without ``consume``)."""
    armed = [False]
    if consume is None:
        yield lambda: None
        return
    names = {id(p): n for n, p in model.named_parameters()}

    def hand_over(p: torch.Tensor) -> None:
        if armed[0]:
            consume(names[id(p)], p.grad)
            p.grad = None

    hooks = [p.register_post_accumulate_grad_hook(hand_over) for p in model.parameters() if p.requires_grad]
    try:
        yield lambda: armed.__setitem__(0, True)
    finally:
        for h in hooks:
            h.remove()


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
    records: list[Step] = field(default_factory=list)  # one per step, rendered by report.py
    artifact: Any = None  # a non-native result (e.g. an EnsembleSpec) saved instead of ``merged``
    earlier: Any = None      # the MergeReport of the merge this one continues (``--init org/merged``), if any
    checkpoint: Any = None   # the run's :class:`~hf_grasp.output.checkpoint.Checkpoint`, if it keeps one
    timer: PhaseTimer = field(default_factory=PhaseTimer)  # wall seconds per phase, for the report

    def __post_init__(self):
        text = self.data.modality == "text"  # a text target is tokenised once: augmentation is for images
        length = self.options.max_length
        self.train_transform = train_tf = self.family.transform(self.model_dir, train=self.options.augment and not text,
                                                                max_length=length)
        self.eval_transform = self.family.transform(self.model_dir, max_length=length)
        with self.timer.phase("data"):
            preprocess_target(self.data, self.eval_transform)  # a no-op when the merger did it already
        self._phases_at_last_record = dict(self.timer.seconds)  # each record's phases: the time since the last
        pre, splits = self.data.preprocessed, self.data.splits
        bs, seed = self.options.batch_size, self.options.seed
        # augmented training images differ every epoch: those are decoded per batch
        self.train_preprocessed = None if self.options.augment and not text else pre.get("train")
        self.train_loader = make_loader(splits["train"], train_tf, batch_size=bs, shuffle=True, seed=seed,
                                        preprocessed=self.train_preprocessed)
        self.val_loader = make_loader(splits["validation"], self.eval_transform, batch_size=bs, shuffle=False,
                                      preprocessed=pre.get("validation"))
        self.test_loader = make_loader(splits["test"], self.eval_transform, batch_size=bs, shuffle=False,
                                       preprocessed=pre.get("test"))

    @functools.cached_property
    def naming(self) -> TensorNaming:
        """How the sources' checkpoints name the model's tensors (the family's); the engine uses model names."""
        return self.family.naming(self.merged)

    @functools.cached_property
    def train_in_order(self) -> torch.utils.data.DataLoader:
        """Target train unshuffled, unaugmented: BatchNorm statistics re-estimated for a choice (greedy soup,
        sequential task arithmetic) must not depend on the shuffling. Built by the methods that use it."""
        return make_loader(self.data.splits["train"], self.eval_transform, batch_size=self.options.batch_size,
                           shuffle=False, preprocessed=self.data.preprocessed.get("train"))

    # --- steps of a sequential method: reseeded, checkpointed, resumable, continuable

    @property
    def first_step(self) -> int:
        """The index of this run's first step: 0 (the init step), or the number of steps of the merge it continues."""
        if self.earlier is None:
            return 0
        return sum(1 for s in self.earlier.steps if s.kind.counts_as_sequential_step)

    def step_seed(self, step: int) -> int:
        """The seed of step ``step``: its alignment batches, its shuffling, any other randomness in it."""
        return self.options.seed * 1000 + step

    def begin_step(self, step: int) -> None:
        """Reseed everything random from ``(seed, step)``.

        So a step's outcome depends only on the state it starts from, never on
        what ran before it in this process: a resumed run, or a continuation of
        a published merge, makes the same bits as one run from the start.
        """
        from accelerate.utils import set_seed

        seed = self.step_seed(step)
        set_seed(seed)
        self.train_loader.generator.manual_seed(seed)  # the shuffling of every epoch of this step

    def resume(self) -> int:
        """Restore a checkpointed state into the merged model; how many of this run's steps it holds (0 if none).

        The state must record the first steps of this very run: ``(kind, number, source)`` of each, as GRASP's
        loop numbers them (an init step unless this continues an earlier merge, then one step per source), and
        every local input must still hold the files it pinned; else the checkpoint refuses it, naming why.
        """
        if self.checkpoint is None:
            return 0
        from .records import StepKind

        names = [s.name for s in self.sources]
        expected: list[tuple[StepKind, int | None, str]] = []
        if self.earlier is None:
            first = (self.init_source.name if self.init_source is not None
                     else "random" if self.options.init == "random" else names.pop(0))
            expected.append((StepKind.INIT, None, first))
        expected += [(StepKind.SOURCE, k, n) for k, n in enumerate(names, start=max(self.first_step, 1))]
        self.records = self.checkpoint.restore(self.merged, expected=expected,
                                               inputs=(*self.sources, self.init_source, self.base_source))
        if self.records and self.accelerator.is_local_main_process:
            log.info("resuming after step %d (%s)", len(self.records), self.records[-1].label)
        return len(self.records)

    def end_step(self) -> None:
        """Checkpoint the merged model and the records after a step (when the run keeps a checkpoint)."""
        if self.checkpoint is not None and self.accelerator.is_main_process:
            with self.timer.phase("checkpoint"):
                # every input whose files the state pins: the sources, the init and the base
                self.checkpoint.save(self.merged, self.records, inputs=(*self.sources, self.init_source,
                                                                        self.base_source))

    # --- the shared pieces every method uses

    def load(self, model: nn.Module, source: ResolvedSource) -> None:
        """Stream ``source`` into ``model`` in place (the only way weights enter a model)."""
        raise_if_interrupted()
        release_freed_memory(collect=False)  # the pages the model is about to fill may sit in free heap chunks
        with self.timer.phase("load"), source.present():
            stream_into(model, source, self.skips.get(source.name, ()), self.naming)

    def alignment_batches(self, step: int, n_batches: int) -> list[dict]:
        """``n_batches`` target-train batches for one alignment step, moved to the device; never val or test."""
        batches = alignment_batches(
            self.data.splits["train"], self.eval_transform, n_batches=n_batches, batch_size=self.options.batch_size,
            seed=self.step_seed(step), preprocessed=self.data.preprocessed.get("train"),
        )
        dev = self.accelerator.device
        return [{k: v.to(dev) for k, v in b.items()} for b in batches]

    def gradients(self, model: nn.Module, batches: list[dict], *, step: str = "alignment",
                  advice: str = "lower --lr or check the sources",
                  consume: Callable[[str, torch.Tensor], None] | None = None) -> None:
        """Sum of the loss gradients over ``batches`` into ``param.grad``, model in eval mode.

        With ``consume``, each parameter's finished gradient is handed to
        ``consume(name, grad)`` and then freed instead of kept in ``.grad``: on
        one process as the last batch's backward pass produces it, so the whole
        set never exists at once. A parameter the loss does not reach is not handed over.

        Eval mode for both models (deterministic, dropout-free, each model's own
        BatchNorm statistics); with ``align_mode="train-merged"`` the merged model
        is in train mode, as in the released code.

        Several processes (``accelerate launch``, ``torchrun``) share the work:
        each takes its rows of every batch (in eval mode an example's gradient
        does not depend on the others), and one all-reduce sums the gradients
        and the loss, so every process holds the same gradients as one process
        would, up to the order of float additions. (With replicated weights the
        gradients themselves must be summed: the cosine of a sum is not a sum
        of cosines. Under FSDP each process would hold a shard of the summed
        gradient, and the three sums of :mod:`hf_grasp.engine.alignment` per unit would
        be all-reduced instead.)

        A NaN or inf loss raises :class:`NumericalError` ``"{step}: ...; {advice}"``
        on every process: its gradients would make every alignment score NaN,
        and a NaN score silently transfers nothing. The losses stay on the
        device until the last batch, so the check costs one host sync per call.
        """
        train_mode = self.options.align_mode == "train-merged" and model is self.merged
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        model.train(train_mode)
        model.zero_grad(set_to_none=True)
        release_freed_memory(collect=False)  # what evaluation and loading left in the C heap, before gradients
        with self.timer.phase("alignment"), _handing_over(model, consume if world == 1 else None) as last_batch, \
                global_batchnorm(world if train_mode else 1), self._checkpointing(model):
            self._gradients(model, batches, rank, world, step, advice, last_batch)
        if consume is not None:  # what the hooks did not take: several processes, all-reduced first
            for name, p in model.named_parameters():
                if p.grad is not None:
                    consume(name, p.grad)
                    p.grad = None

    def _checkpointing(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """With ``gradient_checkpointing``, the library checkpoints ``model`` in eval mode too."""
        if self.options.gradient_checkpointing:
            return self.family.checkpointing_in_eval(model)
        return contextlib.nullcontext()

    def _gradients(self, model: nn.Module, batches: list[dict], rank: int, world: int, step: str,
                   advice: str, last_batch: Callable[[], None]) -> None:
        losses = []
        slices = self.options.gradient_accumulation_steps
        for i, b in enumerate(batches):
            labels = b["labels"]
            if world == 1 and slices == 1:
                if i == len(batches) - 1:
                    last_batch()
                loss = torch.nn.functional.cross_entropy(self.family.logits(model, b), labels)
                loss.backward()
                losses.append(loss.detach())
                continue
            # this process's rows, in slices of activations: each slice's share of the batch mean, and the
            # shares add up to it (in eval mode an example's gradient does not depend on the others)
            parts = row_slices(len(labels), rank, world, slices, labels.device)
            for j, part in enumerate(parts):
                if i == len(batches) - 1 and j == len(parts) - 1:
                    last_batch()
                logits = self.family.logits(model, rows_of(b, part))
                loss = torch.nn.functional.cross_entropy(logits, labels[part], reduction="sum") / len(labels)
                loss.backward()
                losses.append(loss.detach())
        total = torch.stack(losses).sum() if losses else torch.zeros((), device=self.accelerator.device)
        if world > 1:
            total = _all_reduce_gradients(model, total, self.accelerator)
        total = float(total)
        if not math.isfinite(total):
            raise NumericalError(f"{step}: the loss on the target-train alignment batches is {total}; {advice}")

    @property
    def total_epochs(self) -> int:
        """The fine-tuning budget GRASP spends: initial epochs plus one round per further source.

        Every method that trains gets this same budget, so comparisons are fair.
        """
        return self.options.initial_epochs + self.options.finetune_epochs * max(len(self.sources) - 1, 0)

    def fine_tune(self, epochs: int, desc: str, *, lr: float | None = None,
                  soft_labels: torch.Tensor | None = None) -> list[dict]:
        """Fine-tune the merged model on target train.

        The probe is idle meanwhile: its storage is released (the next
        :meth:`load` re-materialises it) and the best-validation state goes to a
        scratch safetensors file, so fine-tuning holds one model, its gradients
        and the optimizer's state (AdamW: two moments), nothing more. ``lr`` overrides ``options.lr`` (a
        method with its own rate, such as PEARL's adapters). ``soft_labels``: one probability row per target-train
        example, trained on instead of the labels (distillation); the batches are the same rows in the same order.
        """
        if epochs == 0:
            return []
        from ..runtime.workspace import run_dir  # the run's scratch: a killed run's best state is swept by the next

        o = self.options
        train = self.train_loader
        if soft_labels is not None:  # the same shuffling (its generator's state), each batch with its rows' targets
            train = make_loader(self.data.splits["train"], self.train_transform, batch_size=o.batch_size,
                                shuffle=True, preprocessed=self.train_preprocessed, extra={"soft_labels": soft_labels})
            train.generator.set_state(self.train_loader.generator.get_state())
        with tempfile.TemporaryDirectory(prefix="hf-grasp-best-", dir=run_dir()) as tmp, released(self.probe):
            return fine_tune(
                self.merged, self.family.logits, train, self.val_loader, self.accelerator,
                epochs=epochs, lr=o.lr if lr is None else lr, weight_decay=o.weight_decay, schedule=o.schedule,
                schedule_per=o.schedule_per, best_store=Path(tmp) / "best.safetensors", desc=desc, timer=self.timer,
                keep_start=o.keep_start, optim=o.optim, slices=o.gradient_accumulation_steps,
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
                    f"merged model: tensor {self.naming.checkpoint_name(name)!r} has {NumericalError.count(tensor)} "
                    "at the end of the merge, so it was not saved; the merge overflowed: check the sources' weights "
                    f"and lower {flag('lr', None)} or the method's {flag('scaling', None)}")

    def evaluate(self, model: nn.Module | None = None, split: str = "validation") -> dict:
        """Accuracy, loss and count of ``model`` (the merged one by default) on ``split`` (validation or test)."""
        loader = self.val_loader if split == "validation" else self.test_loader
        with self.timer.phase(split):
            return evaluate_model(model if model is not None else self.merged, self.family.logits, loader,
                                  self.accelerator)

    def evaluate_alone(self, model: nn.Module | None = None) -> dict:
        """A source by itself (in ``model``, the merged one by default) on the test split, for the report."""
        with self.timer.phase("eval_sources"):
            return evaluate_model(model if model is not None else self.merged, self.family.logits, self.test_loader,
                                  self.accelerator)

    def step_metrics(self, split: str) -> dict | None:
        """The merged model on ``split`` for a step's record; None under ``eval_steps=False``, where only the
        last record is evaluated, by :meth:`complete_last_record` once the method is done."""
        return self.evaluate(split=split) if self.options.eval_steps else None

    def complete_last_record(self) -> None:
        """Evaluate the final model on what the last record left out (``eval_steps=False``)."""
        if self.records:
            last = self.records[-1]
            if last.validation is None:
                last.validation = self.evaluate(split="validation")
            if last.test is None:
                last.test = self.evaluate(split="test")

    def validation_after(self, history: list[dict]) -> dict | None:
        """The merged model's validation metrics after a fine-tuning round that returned ``history``.

        The round ends on its kept epoch, which it has just evaluated on the same
        split: those figures are reused. Without a round, the model is evaluated
        (see :meth:`step_metrics`).
        """
        kept = next((h for h in history if h.get("kept")), None)
        if kept is None:
            return self.step_metrics("validation")
        return {"accuracy": kept["val_accuracy"], "loss": kept["val_loss"], "n": len(self.data.splits["validation"])}

    def record(self, step: Step | None = None, /, **fields: Any) -> Step:
        """Keep one step's record for the report and log it as one line (on the main process).

        Either a :class:`~hf_grasp.engine.records.Step` or its fields as keywords (``kind=StepKind.SOURCE,
        number=k, ...``; an unknown keyword is a TypeError: a method's own values go into ``details``). The
        step's ``phases`` are the run's phase seconds spent since the previous record.
        """
        if step is None:
            step = Step(**fields)
        elif fields:
            raise TypeError("record() takes a Step or its fields as keywords, not both")
        now = dict(self.timer.seconds)
        if not step.phases:
            before = self._phases_at_last_record
            step.phases = {name: round(s - before.get(name, 0.0), 3) for name, s in now.items()
                           if s > before.get(name, 0.0)}
        self._phases_at_last_record = now
        self.records.append(step)
        if self.accelerator.is_local_main_process:
            parts = []
            if step.transfer_counts:
                parts.append("%d/%d tensors transferred" % step.transfer_counts)
            for metrics, short in ((step.validation, "val"), (step.test, "test")):
                accuracy = (metrics or {}).get("accuracy")
                if isinstance(accuracy, (int, float)) and math.isfinite(accuracy):
                    parts.append(f"{short} {100 * accuracy:.2f}%")
            if isinstance(step.seconds, (int, float)):
                parts.append(f"{step.seconds:.1f} s")
            source = f" ({step.source})" if step.source else ""
            log.info("%s%s: %s", step.label, source, ", ".join(parts) or "done")
        return step
