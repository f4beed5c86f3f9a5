"""Fine-tuning and evaluation under ``accelerate``.

The idiomatic accelerate loop (``prepare``, ``accelerator.backward``,
``gather_for_metrics``) with two GRASP-specific constraints:

* The model object never changes. The merge engine holds references to the
  merged model (and streams source tensors into its twin), so ``fine_tune``
  trains the caller's module in place. When ``prepare`` wraps it (DDP), the
  wrapper shares the module's tensors and every state copy goes through the
  caller's module.
* Memory is budgeted. The best-validation state is kept out of RAM
  (``best_store``: the scratch safetensors file the engine passes, or an idle
  module's tensors), gradients are freed before each evaluation, and the
  optimizer's moments are released before returning.

Accuracy comes from the local ``evaluate`` metric module in
``hf_grasp/engine/metrics/accuracy`` (``evaluate.load("accuracy")`` would fetch a script
from a hub).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import accelerate
import safetensors
import safetensors.torch
import evaluate
import torch
import torch.nn.functional as F
from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard
from accelerate.utils import release_memory
from torch import nn

from .global_batchnorm import global_batchnorm
from .optimizers import DEFAULT_OPTIM, make_optimizer
from ..runtime.memory import frozen_heap, packed_empty, release_freed_memory
from ..runtime.errors import DataError, GraspError, NumericalError, flag
from ..runtime.interrupts import raise_if_interrupted
from ..plan.options import Schedule
from ..runtime.progress import log, progress
from ..runtime.timing import PhaseTimer, phase

#: directory of the local ``evaluate`` accuracy module
ACCURACY_METRIC_DIR = Path(__file__).parent / "metrics" / "accuracy"

#: learning-rate schedules ``fine_tune`` accepts (names of ``transformers.get_scheduler``)
SCHEDULES = typing.get_args(Schedule)

#: ``(model, batch) -> logits``: the family takes the model inputs it needs from the batch (its "labels" aside)
LogitsFn = Callable[[nn.Module, Mapping[str, torch.Tensor]], torch.Tensor]


def on_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """``batch`` (model inputs and labels) moved to ``device``: what accelerate does for a prepared loader."""
    return {k: v.to(device) for k, v in batch.items()}


def rows_of(batch: Mapping[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The rows ``rows`` of every tensor of ``batch``."""
    return {k: v[rows] for k, v in batch.items()}


def row_slices(n: int, rank: int, world: int, slices: int, device: torch.device) -> list[torch.Tensor]:
    """The indices of process ``rank``'s rows of a batch of ``n`` (its share among ``world`` processes), in up to
    ``slices`` slices; empty slices left out."""
    mine = torch.tensor_split(torch.arange(n, device=device), world)[rank]
    return [part for part in torch.tensor_split(mine, slices) if len(part)]


def forced_cpu(cpu: bool | None) -> bool | None:
    """``cpu`` as accelerate must be told it: also True for a multi-process launch on a machine with no
    accelerator, which accelerate would otherwise run as unconnected single processes (each one the whole
    merge) instead of gloo ranks."""
    if cpu:
        return True
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) != -1
    return True if launched and not torch.accelerator.is_available() else cpu


def process_state(cpu: bool | None = None) -> accelerate.PartialState:
    """accelerate's view of this launch (one process, or a rank of ``accelerate launch`` / ``torchrun``)."""
    return accelerate.PartialState(cpu=bool(forced_cpu(cpu)))


def make_accelerator(*, cpu: bool | None = None, mixed_precision: str = "no") -> accelerate.Accelerator:
    """Create the :class:`accelerate.Accelerator` every fine-tuning and evaluation runs under.

    ``cpu=None`` lets accelerate pick the device (a GPU when there is one);
    ``cpu=True`` forces the CPU. ``mixed_precision`` is ``"no"``, ``"fp16"`` or ``"bf16"``.
    accelerate's process state is a singleton: every accelerator made in one
    process must agree on these settings.

    Launched on several processes, every batch is split between them
    (``split_batches``): ``--batch-size`` stays the global batch, so a run takes
    the same optimizer steps on the same examples as one process does, and
    BatchNorm normalises over the global batch (:mod:`.global_batchnorm`).
    """
    kwargs: dict[str, Any] = {"mixed_precision": mixed_precision,
                              "dataloader_config": accelerate.DataLoaderConfiguration(split_batches=True)}
    cpu = forced_cpu(cpu)
    if cpu is not None:
        kwargs["cpu"] = cpu
    state = accelerate.state.AcceleratorState
    if state._shared_state and state._shared_state.get("_mixed_precision") != mixed_precision:
        # a second merge of the process in another precision (a bench, a notebook): accelerate keeps one
        # precision per process and refuses another; its per-accelerator state is dropped (as transformers'
        # TrainingArguments does), the process group kept. Merges one after another, never two at once.
        state._reset_state(reset_partial_state=False)
    accelerator = accelerate.Accelerator(**kwargs)
    if mixed_precision == "fp16" and accelerator.device.type == "cpu":
        # accelerate would run it in full precision without a word (no fp16 autocast or loss scaler on CPUs)
        raise GraspError(f"{flag('mixed_precision', 'fp16')} needs a GPU; on a CPU use "
                         f"{flag('mixed_precision', 'bf16')}")
    return accelerator


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (``None``: as it is), restoring the count after."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: each thread's accuracy metric (see load_accuracy)
_metrics = threading.local()


def load_accuracy() -> evaluate.EvaluationModule:
    """The accuracy metric, loaded by path from the module shipped in hf_grasp (works offline).

    Cached, one per thread: loading copies the script into evaluate's module cache and imports it, and an
    ``EvaluationModule`` keeps its batches in a writer between ``add`` and ``compute``, so two threads sharing one
    (the Space making the text sources while a visitor's merge evaluates) closed each other's writer.
    """
    metric = getattr(_metrics, "accuracy", None)
    if metric is None:
        # keep_in_memory: predictions live in RAM, no Arrow cache files per process.
        metric = _metrics.accuracy = evaluate.load(str(ACCURACY_METRIC_DIR), keep_in_memory=True)
    return metric


def predict_logits(model: nn.Module, logits_fn: LogitsFn, loader: Iterable[dict],
                   accelerator: accelerate.Accelerator) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits and labels of ``model`` over ``loader``, on the CPU, in loader order.

    Eval mode without gradients (the model's previous mode is restored); batches
    are sharded and moved by accelerate, and predictions gathered across
    processes with ``gather_for_metrics`` (which drops the samples a distributed
    sampler duplicated to even out shards), so every process gets the same tensors.
    """
    prepared = _is_prepared(loader)
    if not prepared:
        # Shards the data across processes and moves batches to the device.
        loader = accelerator.prepare_data_loader(loader)
    _move_to(model, accelerator.device)
    was_training = model.training
    model.eval()
    out, ys = [], []
    try:
        with torch.no_grad():
            for batch in loader:
                with accelerator.autocast():
                    logits = logits_fn(model, batch)
                logits, y = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
                out.append(logits.cpu())
                ys.append(y.cpu())
    finally:
        model.train(was_training)
        if not prepared:
            _forget(accelerator, loader)
    if not out:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(out), torch.cat(ys)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """``{"accuracy", "loss", "n"}`` of predicted class probabilities.

    ``loss`` is the mean negative log-likelihood of the true labels; accuracy
    comes from the local evaluate metric. No examples give NaN and 0.
    """
    if labels.numel() == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
    accuracy = load_accuracy().compute(predictions=probs.argmax(-1).tolist(), references=labels.tolist())["accuracy"]
    p_true = probs.gather(1, labels[:, None]).squeeze(1)
    nll = -p_true.clamp_min(torch.finfo(probs.dtype).tiny).log()
    return {"accuracy": float(accuracy), "loss": float(nll.mean()), "n": int(labels.numel())}


def evaluate_model(model: nn.Module, logits_fn: LogitsFn, loader: Iterable[dict], accelerator: accelerate.Accelerator) -> dict:
    """Accuracy and mean cross-entropy of ``model`` over ``loader`` (see :func:`predict_logits`).

    Every process returns the same ``{"accuracy", "loss", "n"}``; an empty loader
    gives ``accuracy`` and ``loss`` NaN and ``n`` 0.
    """
    logits, labels = predict_logits(model, logits_fn, loader, accelerator)
    return classification_metrics(logits.softmax(dim=-1), labels)


@frozen_heap()  # collects garbage when done: skip what existed before (also outside a merge)
def fine_tune(
    model: nn.Module,
    logits_fn: LogitsFn,
    train_loader: Iterable[dict],
    val_loader: Iterable[dict],
    accelerator: accelerate.Accelerator,
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    schedule: str = "cosine",
    schedule_per: str = "epoch",
    warmup_ratio: float = 0.0,
    best_store: nn.Module | str | Path | None = None,
    desc: str = "fine-tune",
    timer: PhaseTimer | None = None,
    step_in_backward: bool | None = None,
    keep_start: bool = False,
    optim: str = DEFAULT_OPTIM,
    slices: int = 1,
) -> list[dict]:
    """Fine-tune ``model`` in place on ``train_loader``; keep the best-validation epoch.

    ``optim`` over the trainable parameters (:mod:`.optimizers`; by default the
    released code's AdamW, PyTorch's fused kernel where the device has one)
    with the schedule ``transformers.get_scheduler`` makes
    (``"cosine"``, ``"linear"`` or ``"constant"``) spanning all ``epochs``,
    cross-entropy on ``batch["labels"]`` (on ``batch["soft_labels"]`` when the loader carries them,
    :func:`training_loss`). ``schedule_per="epoch"`` steps the
    schedule once per epoch (the released GRASP code: a cosine over the epochs,
    the whole first epoch at ``lr``); ``"step"`` after every optimizer step (to
    zero at the round's end, as ``transformers.Trainer`` does). After every epoch the model
    is evaluated on ``val_loader``; the state (parameters and buffers) of the epoch
    with the strictly highest validation accuracy (ties keep the earlier epoch) is
    restored into ``model`` at the end.

    ``best_store`` is a module with the same state-dict layout that is idle during
    fine-tuning: the best state is copied into its tensors in place, so keeping it
    costs no extra memory (its contents are overwritten). A path instead keeps the
    best state in a safetensors file there, out of RAM. Without either, the best
    state is kept in a CPU copy.

    Returns one dict per epoch: ``epoch`` (1-based), ``train_loss``,
    ``val_accuracy``, ``val_loss``, ``lr`` (the rate of the epoch's last step) and
    ``kept`` (True for the epoch whose state the model ends with). ``epochs == 0``
    returns ``[]`` and leaves the model untouched. A NaN or inf training loss
    raises :class:`NumericalError` naming ``desc`` and the epoch. ``timer``
    counts the time under ``train``, ``validation`` and ``best_state``.
    ``step_in_backward`` (default: on one process without a loss scaler)
    updates each parameter inside the backward pass (see :func:`_step_in_backward`).
    ``slices`` > 1 runs each batch in that many slices whose gradients add up
    to the batch's (gradient accumulation: the activations of one slice at a
    time; BatchNorm in train mode then normalises each slice on its own).
    ``keep_start``: the state before the first epoch is evaluated too and is
    the one kept when no epoch is strictly better on validation (then no epoch
    is marked ``kept``; the epochs were still trained).
    """
    if epochs < 0:
        raise GraspError(f"epochs must be >= 0, got {epochs}")
    if epochs == 0:
        return []
    if schedule not in SCHEDULES:
        raise GraspError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if schedule_per not in ("step", "epoch"):
        raise GraspError(f"schedule_per must be 'step' or 'epoch', got {schedule_per!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise GraspError("the model has no trainable parameters to fine-tune")
    steps_per_epoch = len(train_loader)  # before prepare: the scheduler counts global batches
    if steps_per_epoch == 0:
        raise DataError("the train split is empty: nothing to fine-tune on")

    was_training = model.training
    _move_to(model, accelerator.device)  # in place, before the optimizer sees the parameters
    # AdamW fused: one kernel per step over all tensors; the default for-each-tensor loop costs a third of a CPU epoch
    optimizer = make_optimizer(optim, params, lr=lr, weight_decay=weight_decay)
    per_step = schedule_per == "step"
    scheduler = _make_scheduler(optimizer, schedule, warmup_ratio,
                                total_steps=epochs * steps_per_epoch if per_step else epochs)
    # The train loader is not prepared: accelerate's split_batches completes a short last batch with rows from
    # the start of the epoch, so several processes would train on other examples than one does. Every process
    # draws the same global batches (the same seeded shuffle) and takes its rows of each (_train_epoch).
    train_model, optimizer, val_dl = accelerator.prepare(model, optimizer, val_loader)
    train_dl = train_loader
    if per_step:
        scheduler = accelerator.prepare(scheduler)
    if accelerator.unwrap_model(train_model, keep_torch_compile=False) is not model:
        raise RuntimeError("accelerate replaced the model object; hf_grasp needs it trained in place")

    _allocate_training_state(optimizer)
    # one process without a loss scaler: each parameter is updated as soon as its gradient is complete
    possible = accelerator.num_processes == 1 and accelerator.scaler is None and slices == 1
    if step_in_backward and not possible:
        raise GraspError("step_in_backward needs one process, no fp16 loss scaler and whole batches")
    in_backward = possible if step_in_backward is None else step_in_backward
    best = _BestEpoch(_StateKeeper(model, best_store), epochs)
    history: list[dict] = []
    try:
        if keep_start:
            with phase(timer, "validation"):
                start = _validate(model, logits_fn, val_dl, accelerator)
            with phase(timer, "best_state"):
                best.offer(0, start["accuracy"])
        for epoch in range(1, epochs + 1):
            with phase(timer, "train"), _step_in_backward(params, optimizer, in_backward) as flush, \
                    global_batchnorm(accelerator.num_processes):
                train_loss, last_lr = _train_epoch(train_model, logits_fn, train_dl, optimizer,
                                                   scheduler if per_step else None, accelerator,
                                                   desc=f"{desc} {epoch}/{epochs}",
                                                   flush=flush if in_backward else None, slices=slices)
            if not per_step:
                scheduler.step()
            if not math.isfinite(train_loss):
                raise NumericalError(f"{desc}, epoch {epoch}/{epochs}: the training loss is {train_loss} (the "
                                     f"weights diverged); lower the learning rate ({flag('lr', None)}, now "
                                     f"{lr:g}) or check "
                                     "the sources")
            with phase(timer, "validation"):
                val = _validate(model, logits_fn, val_dl, accelerator)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_accuracy": val["accuracy"],
                            "val_loss": val["loss"], "lr": last_lr, "kept": False})
            with phase(timer, "best_state"):
                improved = best.offer(epoch, val["accuracy"])
            if accelerator.is_local_main_process:
                log.info("%s epoch %d/%d: train loss %.4f, val acc %.2f%%%s", desc, epoch, epochs, train_loss,
                         100 * val["accuracy"], " (best so far)" if improved else "")
        with phase(timer, "best_state"):
            best.restore_into_model(history)
    finally:
        # Release the optimizer's moments and accelerate's references to this round's objects.
        _forget(accelerator, model, train_model, optimizer, train_dl, val_dl, scheduler)
        optimizer, scheduler, train_dl, val_dl = release_memory(optimizer, scheduler, train_dl, val_dl)
        release_freed_memory()
        model.train(was_training)
    return history


def _allocate_training_state(optimizer: torch.optim.Optimizer) -> None:
    """Allocate AdamW's moments now, with the values its first step would give them (zeros).

    Each moment is one packed block (:func:`~hf_grasp.runtime.memory.packed_empty`):
    mapped on its own, out of the C heap where the batches' activations and
    gradients come and go, and given back whole when the round ends. AdamW
    takes a state it finds as its own.
    """
    from torch.optim.optimizer import _get_scalar_dtype

    inner = _raw(optimizer)
    if type(inner) is not torch.optim.AdamW:  # the others make their own state (Adafactor, SGD, bitsandbytes')
        return
    for group in inner.param_groups:
        fused, on_device = bool(group.get("fused")), bool(group.get("fused") or group.get("capturable"))
        fresh = [p for p in group["params"] if not inner.state[p]]  # what torch.optim.Adam._init_group fills
        for p in fresh:
            inner.state[p]["step"] = torch.zeros((), dtype=_get_scalar_dtype(is_fused=fused),
                                                 device=p.device if on_device else "cpu")
        for moment in ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group.get("amsgrad") else ()):
            for p, zeros in zip(fresh, packed_empty(fresh, zero=True)):
                inner.state[p][moment] = zeros


def _raw(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # under accelerate's AcceleratedOptimizer


@contextlib.contextmanager
def _step_in_backward(params: list[torch.Tensor], optimizer: Any, enabled: bool):
    """Within the block (when ``enabled``), the optimizer updates parameters from inside the backward pass, a
    few at a time as their gradients are complete, and frees those gradients. Yields ``flush``, which updates
    the ones still waiting; call it after each backward pass.

    AdamW updates every tensor from its own gradient and state alone, so this is
    the same update as one ``step()`` after the pass (the same fused kernel, the
    same learning rate), but the whole set of gradients never exists at once: a
    fine-tuning round holds the model and the two moments plus an eighth of a
    model of gradients, not a third full copy. (PyTorch's "optimizer step in
    backward" recipe, batched: one ``step()`` per tensor would cost more Python
    than the kernel.) Only the waiting parameters hold gradients, so ``step()``
    touches only them.
    """
    if not enabled:
        yield lambda: None
        return
    inner = _raw(optimizer)
    batch = max(sum(p.numel() * p.element_size() for p in params) // 8, 1)
    waiting: list[torch.Tensor] = []
    size = [0]

    def flush() -> None:
        if waiting:
            inner.step()
            for p in waiting:
                p.grad = None
            waiting.clear()
            size[0] = 0

    def arrived(p: torch.Tensor) -> None:
        waiting.append(p)
        size[0] += p.numel() * p.element_size()
        if size[0] >= batch:
            flush()

    hooks = [p.register_post_accumulate_grad_hook(arrived) for p in params]
    try:
        yield flush
    finally:
        for h in hooks:
            h.remove()
        waiting.clear()


def _make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup_ratio: float, *, total_steps: int):
    """The schedule ``transformers.get_scheduler(schedule, ...)`` makes over ``total_steps`` (warmup a fraction of
    them, from zero; ``"constant"`` with warmup is its ``constant_with_warmup``), as a torch ``LambdaLR`` over
    transformers' formulas. Not transformers' function itself: ``transformers.optimization`` imports the
    Trainer's utilities, and with them peft and bitsandbytes where installed, 1.2-2 s of every run's start-up
    for three one-line factors (a test keeps these equal to transformers' at every step)."""
    warmup = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(_lr_factor, schedule, warmup, total_steps))


def _lr_factor(schedule: str, warmup: int, total: int, step: int) -> float:
    """transformers' ``_get_{cosine,linear,constant}_schedule_with_warmup_lr_lambda`` (``num_cycles`` 0.5)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, float(total - step) / float(max(1, total - warmup)))
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))


def _train_epoch(model: nn.Module, logits_fn: LogitsFn, loader: Iterable[dict], optimizer: torch.optim.Optimizer,
                 scheduler: Any, accelerator: accelerate.Accelerator, *, desc: str,
                 flush: Callable[[], None] | None = None, slices: int = 1) -> tuple[float, float]:
    """One pass of prepared ``model`` over ``loader`` (``scheduler`` stepped per batch unless None;
    with ``flush`` the backward pass updates the parameters and ``flush()`` completes it, see
    :func:`_step_in_backward`).

    ``loader`` yields global batches. Several processes each take their rows of
    a batch, and each one's loss is its rows' share of the batch mean times the
    number of processes: DDP averages the gradients over the processes, so the
    step is one process's on the whole batch, a short last batch included.
    With ``slices`` > 1 a process's rows go forward and backward a slice at a
    time (each slice's share of the loss, the gradients added up, DDP's
    all-reduce only after the last), then one step.

    Returns the mean batch loss (averaged across processes) and the learning
    rate of the last step. Gradients are freed at the end. A NaN or inf batch
    loss makes the mean NaN or inf; a single process stops the epoch there.
    """
    model.train()
    world = accelerator.num_processes
    total_loss, n_batches, last_lr = 0.0, 0, float("nan")
    for batch in progress(loader, desc=desc, unit="batch", leave=False):
        raise_if_interrupted()
        batch = on_device(batch, accelerator.device)
        if world == 1 and slices == 1:
            loss = training_loss(logits_fn(model, batch).float(), batch)
            accelerator.backward(loss)
        else:
            loss = _backward_in_slices(model, logits_fn, batch, accelerator, slices)
        if flush is not None:
            flush()
        else:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        last_lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        batch_loss = loss.item()  # the one host sync per batch, also the NaN/inf check
        total_loss += batch_loss
        n_batches += 1
        if not math.isfinite(batch_loss) and accelerator.num_processes == 1:
            # the rest of the epoch would train on NaN. With several processes every one must finish
            # the epoch (the others wait in all-reduce); the reduced mean is non-finite on all of them.
            break
    # Gradients are not needed for evaluation: free them before it allocates activations.
    optimizer.zero_grad(set_to_none=True)
    mean = torch.tensor(total_loss / max(n_batches, 1), device=accelerator.device)
    return accelerator.reduce(mean, reduction="mean").item(), last_lr


def training_loss(logits: torch.Tensor, batch: Mapping[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against ``batch["soft_labels"]`` (one probability row per example: a distillation target)
    when the batch carries them, else against ``batch["labels"]``."""
    target = batch.get("soft_labels")
    return F.cross_entropy(logits, batch["labels"] if target is None else target.to(logits.dtype),
                           reduction=reduction)


def _backward_in_slices(model: nn.Module, logits_fn: LogitsFn, batch: Mapping[str, torch.Tensor],
                        accelerator: accelerate.Accelerator, slices: int) -> torch.Tensor:
    """Forward and backward this process's rows of ``batch`` in ``slices`` slices; returns the loss (detached)."""
    n, world, device = len(batch["labels"]), accelerator.num_processes, accelerator.device
    parts = row_slices(n, accelerator.process_index, world, slices, device)
    if not parts:  # a process without rows (a batch smaller than the process count) still takes part in DDP's
        parts = [torch.zeros(0, dtype=torch.long, device=device)]  # backward
    total = torch.zeros((), device=accelerator.device)
    for j, part in enumerate(parts):
        rows = rows_of(batch, part)
        # DDP all-reduces the gradients at the last slice's backward only
        with contextlib.nullcontext() if j == len(parts) - 1 else accelerator.no_sync(model):
            loss = training_loss(logits_fn(model, rows).float(), rows, reduction="sum") * (world / n)
            accelerator.backward(loss)
        total += loss.detach()
    return total


def _validate(model: nn.Module, logits_fn: LogitsFn, loader: Iterable[dict], accelerator: accelerate.Accelerator) -> dict:
    """:func:`evaluate_model` on the validation loader, which must not be empty."""
    val = evaluate_model(model, logits_fn, loader, accelerator)
    if val["n"] == 0:
        raise DataError("the validation split is empty: fine-tuning needs it to pick the best epoch")
    return val


class _BestEpoch:
    """The best-validation epoch so far; its state is kept in a :class:`_StateKeeper`."""

    def __init__(self, keeper: "_StateKeeper", epochs: int):
        self.keeper, self.epochs = keeper, epochs
        self.epoch, self.accuracy = 0, -math.inf

    def offer(self, epoch: int, accuracy: float) -> bool:
        """Keep the model's state if ``accuracy`` is strictly the best so far (ties keep the earlier epoch)."""
        if not accuracy > self.accuracy:
            return False
        self.epoch, self.accuracy = epoch, accuracy
        if epoch < self.epochs:  # the last epoch's state is already in the model
            self.keeper.save()
        return True

    def restore_into_model(self, history: list[dict]) -> None:
        """After the last epoch: put the best state back into the model and mark its epoch ``kept``."""
        if self.epoch != self.epochs:
            self.keeper.restore()
        if self.epoch:  # epoch 0: the state the round started from (keep_start)
            history[self.epoch - 1]["kept"] = True


class _StateKeeper:
    """Holds one snapshot of a module's state dict, in ``store``'s tensors or file when given."""

    def __init__(self, model: nn.Module, store: nn.Module | str | Path | None):
        self.model = model
        self.file = Path(store) if isinstance(store, (str, Path)) else None
        self.store = store if isinstance(store, nn.Module) else None
        self._cpu_copy: dict[str, torch.Tensor] | None = None
        if self.store is not None:
            ours, theirs = model.state_dict(), store.state_dict()
            if list(ours) != list(theirs) or any(ours[k].shape != theirs[k].shape for k in ours):
                raise ValueError("best_store does not have the model's state-dict layout")

    def save(self) -> None:
        source = self.model.state_dict()  # detached views of the live tensors: no copy
        if self.file is not None:
            safetensors.torch.save_file({k: v.contiguous() for k, v in source.items()}, str(self.file))
            return
        with torch.no_grad():
            if self.store is not None:
                target = self.store.state_dict()
                for name, tensor in source.items():
                    target[name].copy_(tensor)
            elif self._cpu_copy is None:
                self._cpu_copy = {k: v.detach().to("cpu", copy=True) for k, v in source.items()}
            else:
                for name, tensor in source.items():
                    self._cpu_copy[name].copy_(tensor)

    def restore(self) -> None:
        if self.file is not None:
            target = self.model.state_dict()
            with torch.no_grad(), safetensors.safe_open(str(self.file), framework="pt") as f:
                for name in f.keys():  # one tensor at a time
                    target[name].copy_(f.get_tensor(name))
            return
        saved = self.store.state_dict() if self.store is not None else self._cpu_copy
        if saved is None:
            raise RuntimeError("no state was saved")
        target = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in target.items():
                tensor.copy_(saved[name])


def _is_prepared(loader: Any) -> bool:
    return isinstance(loader, (DataLoaderShard, DataLoaderDispatcher))


def _move_to(model: nn.Module, device: torch.device) -> None:
    """Move ``model`` to ``device`` in place (``Module.to`` keeps the object)."""
    first = next(model.parameters(), None)
    if first is not None and first.device != device:
        model.to(device)


def _forget(accelerator: accelerate.Accelerator, *objects: Any) -> None:
    """Make accelerate drop the references it keeps to what was prepared on ``accelerator``, ``objects`` among them:
    repeated fine-tuning rounds would otherwise pile up optimizers (and their moments) there.

    Through ``Accelerator.free_memory``, the public call. accelerate (1.x) has
    none that drops only some objects: this forgets everything prepared on the
    accelerator (and restarts its step count), so :func:`fine_tune` and
    :func:`predict_logits` leave nothing registered on the accelerator they are
    given; what was prepared keeps working, but a caller's own ``save_state`` or
    fp16 ``clip_grad_norm_`` needs an accelerator of its own. It collects
    garbage: cheap within a merge (:func:`~hf_grasp.runtime.memory.frozen_heap`).
    """
    accelerator.free_memory(*objects)


def recalibrate_batchnorm(model: nn.Module, logits_fn: LogitsFn, loader: Iterable[dict],
                          accelerator: accelerate.Accelerator) -> int:
    """Re-estimate every BatchNorm layer's running statistics on ``loader`` (forward passes only).

    A parameter-space merge mixes weights whose statistics no longer match; the
    statistics are reset and re-accumulated as a cumulative average
    (``momentum=None``) over one pass. Only the norm layers are put in train mode,
    so dropout stays off. Returns the number of layers recalibrated.
    """
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            for batch in loader:
                logits_fn(model, on_device(batch, accelerator.device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)
