"""hf-grasp's GRASP merge against its floors and against a plain-torch copy of the authors' loop, as ratios.

Every figure comes from a fresh interpreter (``python -c CHILD name json_args``, the child prints one JSON
line last), so imports, caches and allocator state never leak from one measurement into the next. The
sources are K random ResNet-18 checkpoints (``hf_grasp.apps.bench.archs``, P = 44.7 MB of fp32 parameters); the
target is rows 0-799 / 800-899 / 900-999 of digits-eras' pretrain pool as train / validation / test. Every
merge: tau 0.3, one alignment batch of 32, batch 32, lr 5e-5, weight decay 0.01, initial = finetune epochs E.

Sections (``--only`` takes their names):

1. ``memory``: peak RSS and peak anonymous memory above the floor (imports + data + sources resolved), in P,
   for grasp, the streamed multi-source average and the naive multi-source average, K = 2, 4, 8, 16, E = 1.
2. ``align``: hf-grasp's load + alignment + transfer per source against the floor of that work: read the
   checkpoint once into a model, one forward+backward of each of the two models on one batch.
3. ``finetune``: one epoch of ``hf_grasp.engine.training.fine_tune`` (validation included) against a plain loop over
   images preprocessed once (fused AdamW, and torch's default AdamW).
4. ``eval``: ``hf_grasp.engine.training.evaluate_model`` against a plain ``no_grad`` loop over preprocessed tensors.
5. ``cache``: the disk high-water of HF_HOME plus the scratch directory with ``evict_sources`` (sources served
   by the test suite's hub server on 127.0.0.1), K = 2 and 16, in checkpoint sizes.
6. ``breakdown``: where the wall time of one K = 8, E = 1 merge process goes.
7. ``authors``: hf-grasp's merge against :func:`authors_loop` (the authors' released loop in plain torch, on the
   released data path, after the released script's imports), whole processes (imports and saving the model
   included), peak RSS and test accuracy, (K, E) in (2, 0), (8, 0), (2, 1), (8, 1).
8. ``threads``: a K = 2, E = 1 merge with one torch thread and with the default, alone and beside a process
   spinning on one core.
9. ``scale``: ViT-B/16, ConvNeXt-T and ResNet-50 at 224 px (random sharded sources, K = 2 and 4, a 32/16/16 target,
   E = 1): peak RSS above the floor, K4 / K2, each transfer step against its floor, disk with ``evict_sources``.
10. ``modes``: the memory modes (``optim``, ``gradient_checkpointing``, ``mixed_precision``,
    ``gradient_accumulation_steps``) at ViT-B/16 scale, K = 2, E = 1: peak above floor and wall.

Run (sections 1-8 took 32 minutes on the 2-core CPU machine at torch's default threads, most of it in
``memory`` and ``authors``; ``scale`` 14 and ``modes`` 11 more; ``--quick`` about 7 minutes for 1-8; the authors'
side imports pytorch_lightning and seaborn, as the released script does: ``pip install pytorch-lightning
seaborn``)::

    python benchmarks/perf.py                       # everything -> benchmarks/results/perf.{json,md}
    python benchmarks/perf.py --only authors --repeats 5
    python benchmarks/perf.py --quick               # K <= 4, one repeat, a 200/50/50 target

Sources and target are cached in ``--work`` (default ``benchmarks/.perf-work/``, which git ignores through
the ``.gitignore`` written into it). ``--quick`` results go to ``--out`` or a temporary directory, never to
``benchmarks/results``. Each part prints a Markdown section as it finishes; a goal is marked met or not met
from the measured value.
"""

from __future__ import annotations

# The parent imports only the standard library at the top: a child imports this module before anything
# else, and its import clock must count what the measured code imports, nothing more.
import argparse
import copy
import datetime
import functools
import importlib.metadata
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SECTIONS = ("memory", "align", "finetune", "eval", "cache", "breakdown", "authors", "threads", "scale", "modes")

TAU, ALIGN_BATCHES, BATCH, LR, WEIGHT_DECAY = 0.3, 1, 32, 5e-5, 0.01
MEMORY_METHODS = ("grasp", "multi-source", "multi-source-naive")
PHASES_ALIGN = ("load", "alignment", "transfer")
MIB = 2**20

GOAL_WALL = 0.8        # hf-grasp wall / authors' loop wall
GOAL_ALIGN = 1.3       # align+transfer per source / floor
GOAL_EPOCH = 1.05      # fine-tune epoch / plain loop (fused AdamW)
GOAL_PEAK_P = 4.5      # peak RSS above floor, in P, at K = 8, E = 1
GOAL_PEAK_K = 1.02     # peak RSS above floor at the largest K / at K = 2
GOAL_LOW_P = 2.5       # the low-memory modes' peak RSS above floor, in P, at ViT-B scale

#: section 9: the architectures users merge at 224 px, each source a sharded checkpoint; K = 2 and 4, E = 1
SCALE_ARCHS = ("vit-b16", "convnext-t", "resnet50")
SCALE_KS = (2, 4)
SCALE_SIZES = (32, 16, 16)  # train / validation / test images: one batch per epoch
SCALE_SHARD = "40MB"  # every architecture in several shards (ResNet-50 is 94 MB)
#: section 10: memory modes at ViT-B scale (K = 2, E = 1), each a set of merge options
MODES = {"default (AdamW)": {}, "--optim adamw_8bit": {"optim": "adamw_8bit"},
         "--optim adafactor": {"optim": "adafactor"}, "--optim sgd": {"optim": "sgd"},
         "--gradient-checkpointing": {"gradient_checkpointing": True},
         "--mixed-precision bf16": {"mixed_precision": "bf16"},
         "adafactor + checkpointing": {"optim": "adafactor", "gradient_checkpointing": True},
         "adafactor + checkpointing + bf16": {"optim": "adafactor", "gradient_checkpointing": True,
                                              "mixed_precision": "bf16"},
         "--gradient-accumulation-steps 8": {"gradient_accumulation_steps": 8},
         "adafactor + checkpointing + 8 slices": {"optim": "adafactor", "gradient_checkpointing": True,
                                                  "gradient_accumulation_steps": 8},
         "adafactor + checkpointing + bf16 + 8 slices": {"optim": "adafactor", "gradient_checkpointing": True,
                                                         "mixed_precision": "bf16", "gradient_accumulation_steps": 8}}

#: the child's clock starts before any import; it runs CHILDREN[name](args, t0) and prints the result last
CHILD = ("import time; T0 = time.perf_counter()\n"
         "import json, sys\n"
         f"sys.path.insert(0, {str(HERE)!r})\n"
         "import perf\n"
         "print(json.dumps(perf.CHILDREN[sys.argv[1]](json.loads(sys.argv[2]), T0)), flush=True)\n")


# =========================================================================== child side


def _import_engine() -> None:
    """What every hf-grasp child imports before its floor (so the floor holds it, whichever merge follows)."""
    import matplotlib.pyplot  # noqa: F401  the heatmap's
    import torch  # noqa: F401
    import transformers.models.resnet.modeling_resnet  # noqa: F401
    import hf_grasp  # noqa: F401
    from hf_grasp.engine.training import load_accuracy

    load_accuracy()


def _status_bytes(name: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM, RssAnon), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(name)


def _floor_now() -> int:
    """RSS now, and VmHWM reset to it: VmHWM then holds the peak of what runs from here on.

    VmHWM, not ``hf_grasp.output.report.peak_rss_bytes()``: that is getrusage's ru_maxrss, which in a child also
    counts the RSS its parent had when it forked (a 1.5 GB parent makes every child report >= 1.5 GB).
    """
    rss = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    return rss


class AnonPeak(threading.Thread):
    """The max of RssAnon, sampled every 2 ms: what the merge allocates, without file-backed pages."""

    def __init__(self):
        super().__init__(daemon=True)
        self.floor = self.peak = _status_bytes("RssAnon")
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.002):
            self.peak = max(self.peak, _status_bytes("RssAnon"))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, _status_bytes("RssAnon"))


def _merger(args: dict, **extra: Any):
    """``GraspMerger.from_pretrained`` with the common settings; ``args["threads"]`` limits torch's threads."""
    from hf_grasp import GraspMerger

    method = args.get("method", "grasp")
    options = dict(method=method, batch_size=BATCH, lr=LR, weight_decay=WEIGHT_DECAY, initial_epochs=args["epochs"],
                   finetune_epochs=args["epochs"], eval_sources=args.get("eval_sources", False),
                   eval_steps=args.get("eval_steps", True), **extra)
    if method == "grasp":  # the other methods refuse GRASP's parameters
        options.update(tau=TAU, align_batches=ALIGN_BATCHES)
    if args.get("threads"):
        options["threads"] = args["threads"]
    options.update(args.get("options", {}))  # a memory mode's options
    return GraspMerger.from_pretrained(args["sources"], target=args["target"], **options)


def memory_child(args: dict, t0: float) -> dict:
    """Section 1: peak RSS and peak RssAnon of ``merge()`` above the floor after the merger is built."""
    _import_engine()
    merger = _merger(args)  # loads the data and resolves the sources: part of the floor
    anon = AnonPeak()
    floor = _floor_now()
    anon.start()
    result = merger.merge()
    return {"floor": floor, "peak": _status_bytes("VmHWM"), "anon_floor": anon.floor, "anon_peak": anon.stop(),
            "param_bytes": result.report.memory.param_bytes, "test_accuracy": result.report.test_accuracy()}


def _after_imports(t0: float, run: Callable[[], tuple[float, int]]) -> dict:
    """``run()`` (-> test accuracy, P) timed from now, the end of the imports; its peak RSS above the RSS now."""
    import torch

    imported = time.perf_counter()
    floor = _floor_now()
    threads = torch.get_num_threads()  # the process's default: a merge's threads option is undone when it ends
    test_accuracy, param_bytes = run()
    return {"imports": imported - t0, "wall": time.perf_counter() - imported,
            "over_floor": _status_bytes("VmHWM") - floor, "param_bytes": param_bytes,
            "test_accuracy": test_accuracy, "torch_threads": threads}


def merge_child(args: dict, t0: float) -> dict:
    """Sections 7, 8: one hf-grasp merge (``from_pretrained`` included) after the imports."""
    _import_engine()

    def run() -> tuple[float, int]:
        result = _merger(args).merge()
        if args.get("save"):  # what a user's run ends with: the folder, its card and heatmap
            with tempfile.TemporaryDirectory() as tmp:
                result.save_pretrained(Path(tmp) / "merged")
        return result.report.test_accuracy(), result.report.memory.param_bytes

    return _after_imports(t0, run)


#: what the released run_grasp_experiment.py imports at its top (with its shared/ and baseline_training/ modules)
AUTHORS_IMPORTS = ("numpy", "torch", "pytorch_lightning", "sklearn.metrics", "matplotlib.pyplot", "seaborn",
                   "torchvision.models", "torchvision.datasets", "torchvision.transforms", "transformers")


def authors_child(args: dict, t0: float) -> dict:
    """Section 7: :func:`authors_loop`, measured as :func:`merge_child` measures a merge, after the imports the
    released script makes (``pip install pytorch-lightning seaborn`` for the two the project does not need; one
    missing is reported, not faked)."""
    import importlib

    missing = []
    for name in (*AUTHORS_IMPORTS, "datasets"):  # datasets: this copy reads the target with it
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)

    def run() -> tuple[float, int]:
        with tempfile.TemporaryDirectory() as tmp:
            out = authors_loop(args["sources"], args["target"], initial_epochs=args["epochs"],
                               finetune_epochs=args["epochs"], save_to=Path(tmp) / "model.pt" if args.get("save")
                               else None, released_data=args.get("released_data", True))
        return out["test"], out["param_bytes"]

    return {**_after_imports(t0, run), "missing_imports": missing}


def _tensors(split, model_dir) -> tuple:
    """A split's images preprocessed once by the checkpoint's AutoImageProcessor, and its labels."""
    import torch
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model_dir)
    images = [im.convert("RGB") for im in split["image"]]
    return processor(images=images, return_tensors="pt")["pixel_values"], torch.as_tensor(list(split["label"]))


def _batches(x, y, *, shuffle: bool = False) -> list[tuple]:
    """``(images, labels)`` batches of ``BATCH`` rows of tensors, in a new random order when ``shuffle``."""
    import torch

    order = torch.randperm(len(y)) if shuffle else torch.arange(len(y))
    return [(x[i], y[i]) for i in order.split(BATCH)]


def train_pass(model, optimizer, batches) -> None:
    """One plain training pass: forward, cross-entropy, backward, step."""
    import torch.nn.functional as F

    model.train()
    for x, y in batches:
        optimizer.zero_grad()
        F.cross_entropy(model(pixel_values=x).logits, y).backward()
        optimizer.step()


def accuracy(model, batches) -> float:
    """Accuracy of ``model`` in eval mode without gradients over ``(images, labels)`` batches."""
    import torch

    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            correct += int((model(pixel_values=x).logits.argmax(-1) == y).sum())
            total += len(y)
    return correct / total


def _loss_backward(model, x, y) -> None:
    """The alignment's gradient: one forward+backward in eval mode, as the engine's ``MergeContext.gradients``."""
    import torch.nn.functional as F

    model.eval()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(pixel_values=x).logits, y).backward()


def _read_into(model, folder: Path) -> None:
    """Every tensor of a checkpoint's safetensors file(s) (all its shards) read once and copied into ``model``'s
    state dict in place, under the names transformers loads it by (ViT's checkpoints keep legacy names)."""
    import safetensors
    import torch
    from hf_grasp.inputs.families import family_for, read_config

    state, naming = model.state_dict(), family_for(read_config(folder)).naming(model)
    for weights in sorted(Path(folder).glob("*.safetensors")):
        with torch.no_grad(), safetensors.safe_open(str(weights), framework="pt") as f:
            for read in naming.reads(f.keys()):
                for name, tensor in read.convert(f.get_tensor(read.key)):
                    state[name].copy_(tensor)


def _floor_per_source(merged, probe, x, y, sources: list[str]) -> float:
    """Seconds per source of the work a transfer step cannot avoid: read the source once, two forward+backward."""
    start = time.perf_counter()
    for source in sources:
        _read_into(probe, Path(source))
        _loss_backward(merged, x, y)
        _loss_backward(probe, x, y)
    return (time.perf_counter() - start) / len(sources)


def align_child(args: dict, t0: float) -> dict:
    """Section 2: the engine's load + alignment + transfer per source, then the floor in the same process."""
    _import_engine()
    from transformers import AutoModelForImageClassification

    merger = _merger(args)
    result = merger.merge()
    phases, k = dict(result.report.phases), len(args["sources"])
    engine = sum(phases.get(p, 0.0) for p in PHASES_ALIGN) / (k - 1)
    probe = AutoModelForImageClassification.from_pretrained(args["sources"][0])
    x, y = _tensors(merger.data.splits["train"].select(range(BATCH)), merger.model_dir)
    floors = [_floor_per_source(result.model, probe, x, y, args["sources"][1:]) for _ in range(args["repeats"])]
    return {"engine_per_source": engine, "floor_per_source": floors, "phases": phases,
            "steps": [[s.label, s.seconds] for s in result.report.steps]}


def _engine_objects(args: dict) -> tuple:
    """The merger, a model of the sources' architecture, and a ``MergeContext`` over it.

    The context's ``__post_init__`` builds the train / validation / test loaders exactly as a merge does;
    ``begin_step`` seeds their shuffling as a merge step would.
    """
    from transformers import AutoModelForImageClassification
    from hf_grasp.engine.context import MergeContext
    from hf_grasp.engine.training import make_accelerator

    merger = _merger(args)
    model = AutoModelForImageClassification.from_pretrained(args["sources"][0])
    o = merger.options
    ctx = MergeContext(options=o, params=merger.params, family=merger.family, model_dir=merger.model_dir,
                       sources=merger.sources, skips={}, init_source=None, base_source=None, merged=model,
                       probe=model, data=merger.data,
                       accelerator=make_accelerator(cpu=o.cpu or None, mixed_precision=o.mixed_precision))
    ctx.begin_step(1)
    return merger, model, ctx


def _alternate(runs: dict[str, Callable[[], Any]], repeats: int, before: Callable[[], None]) -> dict[str, list]:
    """Seconds of every run, alternating them ``repeats`` times (so drift hits all alike); ``before`` untimed."""
    seconds: dict[str, list] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            before()
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def finetune_child(args: dict, t0: float) -> dict:
    """Section 3: one engine epoch (with validation) against plain loops, each from the source's weights."""
    _import_engine()
    import torch
    from hf_grasp.engine.training import fine_tune

    merger, model, ctx = _engine_objects(args)
    pristine = copy.deepcopy(model.state_dict())
    train = _tensors(merger.data.splits["train"], merger.model_dir)
    val = _batches(*_tensors(merger.data.splits["validation"], merger.model_dir))

    def plain(fused: bool) -> Callable[[], float]:
        def run() -> float:
            kw = {"fused": True} if fused else {}  # without it: torch's default implementation
            train_pass(model, torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, **kw),
                       _batches(*train, shuffle=True))
            return accuracy(model, val)
        return run

    runs = {"engine": lambda: fine_tune(model, merger.family.logits, ctx.train_loader, ctx.val_loader,
                                        ctx.accelerator, epochs=1, lr=LR, weight_decay=WEIGHT_DECAY),
            "plain_fused": plain(True), "plain_default": plain(False)}
    seconds = _alternate(runs, args["repeats"], lambda: model.load_state_dict(pristine))
    return {"seconds": seconds, "torch_threads": torch.get_num_threads()}


def eval_child(args: dict, t0: float) -> dict:
    """Section 4: ``evaluate_model`` over the engine's test loader against a plain loop over tensors."""
    _import_engine()
    from hf_grasp.engine.training import evaluate_model

    merger, model, ctx = _engine_objects(args)
    test = _batches(*_tensors(merger.data.splits["test"], merger.model_dir))
    runs = {"engine": lambda: evaluate_model(model, merger.family.logits, ctx.test_loader, ctx.accelerator),
            "plain": lambda: accuracy(model, test)}
    return {"seconds": _alternate(runs, args["repeats"], lambda: None)}


def cache_child(args: dict, t0: float) -> dict:
    """Section 5: a merge of Hub sources (the parent samples the disk meanwhile)."""
    _import_engine()
    result = _merger(args, evict_sources=args["evict"]).merge()
    return {"test_accuracy": result.report.test_accuracy()}


def breakdown_child(args: dict, t0: float) -> dict:
    """Section 6: imports, from_pretrained, merge (its phases) and save_pretrained of one process."""
    _import_engine()
    imported = time.perf_counter()
    merger = _merger(args)
    built = time.perf_counter()
    result = merger.merge()
    merged = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result.save_pretrained(Path(tmp) / "merged")
        saved = time.perf_counter()
    return {"imports": imported - t0, "from_pretrained": built - imported, "merge": merged - built,
            "save_pretrained": saved - merged, "phases": dict(result.report.phases),
            "steps": [[s.label, s.seconds] for s in result.report.steps]}


def scale_child(args: dict, t0: float) -> dict:
    """Sections 9, 10: one merge's peak RSS above the floor (imports, data, sources resolved) and its wall; with
    ``step_floor``, then the floor of one transfer step in the same process (read a source checkpoint, all its
    shards, into a model; one forward+backward of each model on one alignment batch)."""
    _import_engine()
    import torch

    merger = _merger(args)
    floor = _floor_now()
    start = time.perf_counter()
    result = merger.merge()
    wall = time.perf_counter() - start
    peak = _status_bytes("VmHWM")
    report, k = result.report, len(args["sources"])
    phases = dict(report.phases)
    out = {"floor": floor, "peak": peak, "wall": wall, "param_bytes": report.memory.param_bytes,
           "phases": phases, "test_accuracy": report.test_accuracy(), "torch_threads": torch.get_num_threads(),
           "engine_per_source": sum(phases.get(p, 0.0) for p in PHASES_ALIGN) / (k - 1)}
    if args.get("step_floor"):
        from transformers import AutoModelForImageClassification

        probe = AutoModelForImageClassification.from_pretrained(args["sources"][0])
        x, y = _tensors(merger.data.splits["train"].select(range(BATCH)), merger.model_dir)
        out["floor_per_source"] = _floor_per_source(result.model, probe, x, y, args["sources"][1:])
    return out


def step_child(args: dict, t0: float) -> dict:
    """Section 10's reference: the peak RSS of one plain forward+backward of a model loaded by transformers on
    one batch of 32 in train mode (with ``checkpointing``, the library's activation checkpointing), above the
    RSS with the model and batch allocated."""
    _import_engine()
    import torch.nn.functional as F
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(args["sources"][0])
    if args.get("checkpointing"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    import datasets

    x, y = _tensors(datasets.load_from_disk(args["target"])["train"].select(range(BATCH)), args["sources"][0])
    model.train()
    floor = _floor_now()
    F.cross_entropy(model(pixel_values=x).logits, y).backward()
    return {"over_p": (_status_bytes("VmHWM") - floor) / sum(p.numel() * p.element_size() for p in model.parameters())}


CHILDREN = {f.__name__.removesuffix("_child"): f for f in (
    memory_child, merge_child, authors_child, align_child, finetune_child, eval_child, cache_child, breakdown_child,
    scale_child, step_child)}


# =========================================================================== the authors' loop


def authors_loop(source_dirs: list[str], target_dir: str, *, initial_epochs: int, finetune_epochs: int,
                 num_alignment_batches: int = ALIGN_BATCHES, alignment_threshold: float = TAU,
                 batch_size: int = BATCH, learning_rate: float = LR, seed: int = 0,
                 save_to: Path | None = None, released_data: bool = True) -> dict:
    """Reimplements the semantics of the GRASP authors' released loop, experiments/grasp/run_grasp_experiment.py
    (Sekeh-Lab/grasp-multisource-transfer), in plain torch + transformers on the CPU:

    - every model is ``AutoModelForImageClassification.from_pretrained(source)``, a new one per source (their
      ``load_baseline_model``);
    - data: the target's ``datasets`` splits, each image decoded and transformed by torchvision, train
      augmented, shuffled and its last short batch dropped (their DataModule, see :func:`_authors_loaders`);
      no worker processes, as hf-grasp;
    - the first source is fine-tuned ``initial_epochs``; then per further source: the gradients of the first
      ``num_alignment_batches`` batches of a fresh pass over the train loader, the merged model in train()
      mode (its BatchNorm statistics move) and the source in eval(); the cosine of the two per named
      parameter; the parameter copied where it is > ``alignment_threshold`` through state_dict /
      load_state_dict; then ``finetune_epochs`` of ``optim.AdamW(lr, weight_decay=0.01)`` with
      ``CosineAnnealingLR(T_max=epochs)`` stepped once per epoch, the best validation accuracy's state kept by
      deepcopy (best starts at 0.0, kept when strictly greater);
    - ``released_data=False``: hf-grasp's data instead (the checkpoint's AutoImageProcessor, no augmentation,
      every row), for a comparison at equal settings;
    - a final validation and test evaluation; with ``save_to``, ``torch.save`` of the state dict there (their
      last step).

    Left out as they cost nothing on a CPU or are outside the loop: per-batch loss / accuracy bookkeeping,
    FLOPs counting, logging, confusion matrices and saving.
    Returns ``{"validation", "test"}`` accuracies, ``param_bytes`` and the tensors transferred per source.
    """
    import torch
    from transformers import AutoModelForImageClassification

    torch.manual_seed(seed)  # their pl.seed_everything
    train, val, test = (_authors_loaders if released_data else _processor_loaders)(target_dir, source_dirs[0],
                                                                                    batch_size)
    merged = AutoModelForImageClassification.from_pretrained(source_dirs[0])
    _authors_fine_tune(merged, train, val, initial_epochs, learning_rate)
    transferred = []
    for source_dir in source_dirs[1:]:
        source = AutoModelForImageClassification.from_pretrained(source_dir)
        scores = _authors_alignment(source, merged, train, num_alignment_batches)
        transferred.append(_authors_transfer(source, merged, scores, alignment_threshold))
        _authors_fine_tune(merged, train, val, finetune_epochs, learning_rate)
    out = {"validation": accuracy(merged, val), "test": accuracy(merged, test), "transferred": transferred,
           "param_bytes": sum(p.numel() * p.element_size() for p in merged.parameters())}
    if save_to is not None:
        torch.save(merged.state_dict(), save_to)
    return out


def _authors_loaders(target_dir: str, model_dir: str, batch_size: int) -> tuple:
    """Train, validation and test DataLoaders yielding ``(pixel_values, labels)``, as the released data modules
    make them (``baseline_training/*/data_module_*.py``): each image decoded and transformed on its own by
    torchvision (the checkpoint's AutoImageProcessor only gives mean and std); train augmented (Resize to
    256/224 of the crop, RandomCrop, RandomHorizontalFlip, ColorJitter 0.2/0.2/0.2/0.1), shuffled, the last
    short batch dropped; validation and test Resize + CenterCrop. The released crop is 224 for 224-pixel
    checkpoints: here it is the checkpoint's own input size. No worker processes, as hf-grasp (the released
    default is 12)."""
    import datasets
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms
    from transformers import AutoImageProcessor

    splits = datasets.load_from_disk(target_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir)
    crop = processor(images=[splits["validation"][0]["image"].convert("RGB")], return_tensors="pt")[
        "pixel_values"].shape[-1]
    resize = round(crop * 256 / 224)
    normalize = [transforms.ToTensor(), transforms.Normalize(mean=processor.image_mean, std=processor.image_std)]
    train_tf = transforms.Compose([transforms.Resize(resize), transforms.RandomCrop(crop),
                                   transforms.RandomHorizontalFlip(p=0.5),
                                   transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.1),
                                   *normalize])
    eval_tf = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(crop), *normalize])

    class Split(Dataset):  # their ImageFolder: one decoded, transformed image per item
        def __init__(self, rows, transform):
            self.rows, self.transform = rows, transform

        def __len__(self) -> int:
            return len(self.rows)

        def __getitem__(self, i: int) -> tuple:
            row = self.rows[i]
            return self.transform(row["image"].convert("RGB")), torch.tensor(row["label"])

    return (DataLoader(Split(splits["train"], train_tf), batch_size=batch_size, shuffle=True, drop_last=True),
            DataLoader(Split(splits["validation"], eval_tf), batch_size=batch_size),
            DataLoader(Split(splits["test"], eval_tf), batch_size=batch_size))


def _processor_loaders(target_dir: str, model_dir: str, batch_size: int) -> tuple:
    """The splits as hf-grasp feeds them: the checkpoint's AutoImageProcessor per batch, no augmentation, train
    shuffled, every row kept."""
    import datasets
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoImageProcessor

    splits = datasets.load_from_disk(target_dir)
    processor = AutoImageProcessor.from_pretrained(model_dir)

    def collate(rows: list[dict]) -> tuple:
        images = [r["image"].convert("RGB") for r in rows]
        return processor(images=images, return_tensors="pt")["pixel_values"], torch.tensor([r["label"] for r in rows])

    return tuple(DataLoader(splits[name], batch_size=batch_size, shuffle=name == "train", collate_fn=collate)
                 for name in ("train", "validation", "test"))


def _authors_fine_tune(model, train, val, epochs: int, lr: float) -> None:
    """Their ``fine_tune_model``: AdamW + per-epoch cosine schedule, best-validation state by deepcopy."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    best_accuracy, best_state = 0.0, None
    for _ in range(epochs):
        train_pass(model, optimizer, train)
        val_accuracy = accuracy(model, val)
        if val_accuracy > best_accuracy:
            best_accuracy, best_state = val_accuracy, copy.deepcopy(model.state_dict())
        scheduler.step()
    if best_state is not None:
        model.load_state_dict(best_state)


def _authors_alignment(source, merged, train, num_batches: int) -> dict[str, float]:
    """Their ``compute_gradient_alignment``: summed gradients of both models, cosine per named parameter."""
    import torch
    import torch.nn.functional as F

    source.eval()
    merged.train()
    grads: tuple[dict, dict] = ({}, {})
    for index, (x, y) in enumerate(train):
        if index >= num_batches:
            break
        for model, summed in zip((source, merged), grads):
            model.zero_grad()
            F.cross_entropy(model(pixel_values=x).logits, y).backward()
            for name, p in model.named_parameters():
                if p.grad is not None:
                    summed[name] = summed[name] + p.grad.detach().clone() if name in summed else p.grad.detach().clone()
    src, tgt = grads
    return {name: float(torch.dot(g.flatten(), tgt[name].flatten()) / (g.norm() * tgt[name].norm() + 1e-8))
            for name, g in src.items() if name in tgt}


def _authors_transfer(source, merged, scores: dict[str, float], threshold: float) -> int:
    """Their ``transfer_aligned_parameters``: copy the aligned tensors through the state dicts."""
    src, tgt = source.state_dict(), merged.state_dict()
    moved = [name for name, score in scores.items() if score > threshold and name in src and name in tgt]
    for name in moved:
        tgt[name] = src[name].clone()
    merged.load_state_dict(tgt)
    return len(moved)


# =========================================================================== parent side


class ChildError(RuntimeError):
    """A measurement's child process failed (the message ends with its stderr)."""


def run_child(name: str, args: dict, *, env: dict | None = None, poll: Callable[[], None] | None = None) -> dict:
    """Run ``CHILDREN[name](args)`` in a fresh interpreter; its JSON result, with ``process_seconds`` added.

    Output goes to files, not pipes: a child's progress bars never block on a full pipe. ``poll`` is called
    every 50 ms while the child runs.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, name, json.dumps(args)], stdout=out, stderr=err,
                                text=True, env={**os.environ, **(env or {})})
        while True:
            try:
                proc.wait(timeout=0.05 if poll else None)
                break
            except subprocess.TimeoutExpired:
                poll()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise ChildError(f"child {name} exited {proc.returncode}:\n{err.read()[-3000:]}")
        return {**json.loads(out.read().strip().splitlines()[-1]), "process_seconds": seconds}


def goal(value: float, limit: float) -> str:
    """The goal cell: the limit and whether the measured value meets it."""
    return f"≤ {limit:g}: {'met' if value <= limit else 'not met'}"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


@dataclass
class Bench:
    """What every section needs: the cached inputs and the run's settings."""

    sources: list[str]
    target: str
    quick: bool
    repeats: int
    work: Path | None = None  # where inputs are cached (the scale sections build theirs there)

    @property
    def ks(self) -> tuple[int, ...]:
        return (2, 4) if self.quick else (2, 4, 8, 16)

    @property
    def k_mid(self) -> int:
        """The K of the single-K sections (8; 4 in --quick)."""
        return 4 if self.quick else 8

    def reps(self, n: int) -> int:
        """A section's fixed number of repeats (1 in --quick)."""
        return 1 if self.quick else n

    def args(self, k: int, epochs: int, **extra: Any) -> dict:
        return {"sources": self.sources[:k], "target": self.target, "epochs": epochs, **extra}

    @property
    def checkpoint_bytes(self) -> int:
        """One source's weight files, all shards."""
        return sum(f.stat().st_size for f in Path(self.sources[0]).glob("*.safetensors"))


# --------------------------------------------------------------------------- sections


def section_memory(b: Bench) -> tuple[str, dict]:
    runs = []
    for method in MEMORY_METHODS:
        for k in b.ks:
            m = run_child("memory", b.args(k, 1, method=method))
            runs.append({**m, "method": method, "k": k, "over_p": (m["peak"] - m["floor"]) / m["param_bytes"],
                         "anon_over_p": (m["anon_peak"] - m["anon_floor"]) / m["param_bytes"]})
    k_goal = 8 if 8 in b.ks else b.ks[-1]
    rows = [[m["method"], m["k"], f"{m['floor'] / MIB:.0f}", f"{m['over_p']:.2f}", f"{m['anon_over_p']:.2f}",
             f"{m['test_accuracy']:.3f}", goal(m["over_p"], GOAL_PEAK_P) if (m["method"], m["k"]) == ("grasp", k_goal)
             else ""] for m in runs]
    over = {(m["method"], m["k"]): m["over_p"] for m in runs}
    ratios = {method: over[method, b.ks[-1]] / over[method, 2] for method in MEMORY_METHODS}
    ratio_rows = [[method, f"{r:.3f}", goal(r, GOAL_PEAK_K) if method == "grasp" else ""]
                  for method, r in ratios.items()]
    text = (table(["method", "K", "floor MiB", "peak RSS − floor (P)", "peak RssAnon − floor (P)", "test acc",
                   f"goal (grasp, K={k_goal})"], rows)
            + "\n\nE = 1. Floor: RSS after imports, data and sources resolved; peak: VmHWM (reset at the floor); "
              "RssAnon sampled every 2 ms. P = fp32 bytes of the parameters. multi-source streams the average, "
              "multi-source-naive (the issue's naive multi-source) holds all K sources.\n\n"
            + table(["method", f"peak RSS − floor, K{b.ks[-1]} / K2", "goal"], ratio_rows))
    return text, {"runs": runs, "ratio_largest_k_over_k2": ratios}


def section_align(b: Bench) -> tuple[str, dict]:
    k = b.k_mid
    m = run_child("align", b.args(k, 0, repeats=b.reps(3)))
    floor = statistics.median(m["floor_per_source"])
    ratio = m["engine_per_source"] / floor
    what = ("(load + alignment + transfer) / (K − 1) from report.phases (load counts the first source's too)"
            if m["phases"] else
            "report.phases missing: the transfer steps' seconds / (K − 1), their val + test evaluation included")
    text = (table(["K", "hf-grasp s / source", "floor s / source", "ratio", "goal"],
                  [[k, f"{m['engine_per_source']:.3f}", f"{floor:.3f}", f"{ratio:.2f}", goal(ratio, GOAL_ALIGN)]])
            + f"\n\nE = 0. hf-grasp: {what}. Floor: read the source's safetensors once into a model + one "
              f"forward+backward of each model on one batch of {BATCH} preprocessed images; median of "
              f"{len(m['floor_per_source'])}.")
    return text, {**m, "floor_median": floor, "ratio": ratio}


def section_finetune(b: Bench) -> tuple[str, dict]:
    m = run_child("finetune", b.args(2, 1, repeats=b.reps(3)))
    med = {name: statistics.median(s) for name, s in m["seconds"].items()}
    labels = {"engine": "hf_grasp.engine.training.fine_tune (its AdamW)", "plain_fused": "plain loop, AdamW(fused=True)",
              "plain_default": "plain loop, torch's default AdamW"}
    rows = [[labels[name], f"{s:.2f}", f"{med['engine'] / s:.2f}",
             goal(med["engine"] / s, GOAL_EPOCH) if name == "plain_fused" else ""] for name, s in med.items()]
    text = (table(["one epoch + validation", "median s", "engine / this", "goal"], rows)
            + f"\n\nMedians of {len(m['seconds']['engine'])}, runs alternated, each from the source's weights; "
              f"torch threads {m['torch_threads']}. The plain loops train on images preprocessed once.")
    return text, {**m, "median": med, "ratio_vs_fused": med["engine"] / med["plain_fused"]}


def section_eval(b: Bench) -> tuple[str, dict]:
    m = run_child("eval", b.args(2, 1, repeats=b.reps(5)))
    med = {name: statistics.median(s) for name, s in m["seconds"].items()}
    ratio = med["engine"] / med["plain"]
    text = (table(["evaluate_model s", "plain no_grad loop s", "ratio"],
                  [[f"{med['engine']:.3f}", f"{med['plain']:.3f}", f"{ratio:.2f}"]])
            + f"\n\nThe test split; medians of {len(m['seconds']['engine'])}. The plain loop reads preprocessed "
              "tensors.")
    return text, {**m, "median": med, "ratio": ratio}


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # renamed or deleted while walking
                pass
    return total


def _disk_high_water(b: Bench, server, k: int, evict: bool, scratch: Path, repo: str = "bench/s") -> dict:
    """One merge of ``k`` sources served as ``{repo}{i}``, in a child with a fresh HF_HOME and TMPDIR, both
    sampled every 50 ms."""
    hf_home, tmp = scratch / f"hf-{repo.replace('/', '-')}{k}-{evict}", scratch / f"tmp-{repo.replace('/', '-')}{k}-{evict}"
    tmp.mkdir(parents=True)
    high = {"hf_home": 0, "tmpdir": 0, "both": 0}

    def sample() -> None:
        sizes = {"hf_home": _tree_bytes(hf_home), "tmpdir": _tree_bytes(tmp)}
        sizes["both"] = sizes["hf_home"] + sizes["tmpdir"]
        high.update({key: max(high[key], v) for key, v in sizes.items()})

    args = {**b.args(k, 0), "sources": [f"{repo}{i}" for i in range(k)], "evict": evict}
    m = run_child("cache", args, env={**server.env(hf_home), "TMPDIR": str(tmp)}, poll=sample)
    sample()
    return {**m, "k": k, "evict": evict, "high_water_bytes": high,
            "checkpoints": {key: v / b.checkpoint_bytes for key, v in high.items()}}


def section_cache(b: Bench) -> tuple[str, dict]:
    sys.path.insert(0, str(REPO / "tests"))
    from hub_server import HubServer  # the test suite's hub-compatible server on 127.0.0.1

    k_max = b.ks[-1]
    with tempfile.TemporaryDirectory(prefix="perf-cache-") as scratch:
        server = HubServer(Path(scratch) / "hub-store").start()
        try:
            for i, source in enumerate(b.sources[:k_max]):
                server.serve(f"bench/s{i}", Path(source))
            runs = [_disk_high_water(b, server, k, evict, Path(scratch))
                    for k, evict in ((2, True), (k_max, True), (k_max, False))]
        finally:
            server.stop()
    ratio = runs[1]["checkpoints"]["both"] / runs[0]["checkpoints"]["both"]
    rows = [[m["k"], "yes" if m["evict"] else "no", f"{m['checkpoints']['both']:.2f}",
             f"{m['checkpoints']['hf_home']:.2f}", f"{m['checkpoints']['tmpdir']:.2f}"] for m in runs]
    text = (table(["K", "evict_sources", "high-water (checkpoints)", "HF_HOME alone", "TMPDIR (scratch) alone"], rows)
            + f"\n\nK{k_max} / K2 with evict_sources: **{ratio:.2f}**. E = 0; disk sampled every 50 ms; one "
              f"checkpoint = {b.checkpoint_bytes / MIB:.1f} MiB. Evicted sources are fetched into the run's scratch "
              "under TMPDIR, so both trees count; the row without eviction shows what the sampler sees otherwise.")
    return text, {"runs": runs, "ratio_largest_k_over_k2": ratio, "checkpoint_bytes": b.checkpoint_bytes}


def section_breakdown(b: Bench) -> tuple[str, dict]:
    m = run_child("breakdown", b.args(b.k_mid, 1, eval_sources=True))
    total = m["process_seconds"]
    parts = [("interpreter start-up + imports", m["imports"]),
             ("from_pretrained (data + sources)", m["from_pretrained"])]
    if m["phases"]:
        parts += [(f"merge: {name}", s) for name, s in m["phases"].items()]
        parts.append(("merge: not in a phase", m["merge"] - sum(m["phases"].values())))
    else:  # an engine without report.phases: its steps' seconds
        parts += [(f"merge: step {step}", s) for step, s in m["steps"]]
        parts.append(("merge: outside the steps", m["merge"] - sum(s for _, s in m["steps"])))
    parts += [("save_pretrained", m["save_pretrained"])]
    parts.append(("process exit and the rest", total - sum(s for _, s in parts)))
    rows = [[name, f"{s:.2f}", f"{100 * s / total:.1f}%"] for name, s in parts]
    text = (table(["part", "s", "% of total"], rows + [["**total (process wall)**", f"{total:.2f}", "100%"]])
            + f"\n\nOne GRASP merge, K = {b.k_mid}, E = 1, sources evaluated (the default)"
            + ("." if m["phases"] else "; report.phases missing, so per-step seconds."))
    return text, {**m, "parts": dict(parts)}


def section_authors(b: Bench) -> tuple[str, dict]:
    raw, rows = {}, []
    for k, e in ((2, 0), (b.k_mid, 0), (2, 1), (b.k_mid, 1)):
        runs: dict[str, list] = {"hf": [], "authors": []}
        for _ in range(b.repeats):  # alternated, so drift on the machine hits both sides alike
            # the authors' loop evaluates the final model only (and validation within its epochs): so does hf-grasp
            runs["hf"].append(run_child("merge", b.args(k, e, eval_steps=False, save=True)))
            runs["authors"].append(run_child("authors", b.args(k, e, save=True)))
        med = {side: {key: statistics.median([r[key] for r in rs])
                      for key in ("process_seconds", "wall", "imports", "over_floor", "test_accuracy")}
               for side, rs in runs.items()}
        p = runs["hf"][0]["param_bytes"]
        ratio = med["hf"]["process_seconds"] / med["authors"]["process_seconds"]
        raw[f"K={k} E={e}"] = {"runs": runs, "median": med, "ratio": ratio,
                               "ratio_after_imports": med["hf"]["wall"] / med["authors"]["wall"]}
        rows.append([k, e, f"{med['hf']['process_seconds']:.1f}", f"{med['authors']['process_seconds']:.1f}",
                     f"{ratio:.2f}", goal(ratio, GOAL_WALL),
                     f"{med['hf']['wall'] / med['authors']['wall']:.2f}",
                     f"{med['hf']['imports']:.1f} / {med['authors']['imports']:.1f}",
                     f"{med['hf']['over_floor'] / p:.2f}", f"{med['authors']['over_floor'] / p:.2f}",
                     f"{med['hf']['test_accuracy']:.3f}", f"{med['authors']['test_accuracy']:.3f}"])
    text = (table(["K", "E", "hf-grasp process s", "authors process s", "hf / authors", "goal",
                   "after the imports, hf / authors", "imports s (hf / authors)", "hf peak − floor (P)",
                   "authors peak − floor (P)", "hf test acc", "authors test acc"], rows)
            + f"\n\nMedians of {b.repeats}, runs alternated. Process: a user's stopwatch, from the interpreter's "
              "start to its exit (imports, data loading, the merge, the final evaluation and saving the model: "
              "hf-grasp's folder with card and heatmap, the loop's torch.save). eval_sources and eval_steps off: "
              "the final model evaluated, as the loop does. Floor = RSS after the imports. The loop follows the "
              "released data path (train augmentation, last short batch dropped), so its accuracy is not that of "
              "equal settings.")
    return text, raw


def _spinning() -> subprocess.Popen:
    """A process keeping one core busy."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _merge_beside(b: Bench, threads: int | None, busy: bool) -> dict:
    """A K = 2, E = 1 merge with ``threads`` torch threads (None: the default), beside a spinning process when
    ``busy``."""
    spinner = _spinning() if busy else None
    try:
        return run_child("merge", b.args(2, 1, threads=threads))
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def section_threads(b: Bench) -> tuple[str, dict]:
    configs = [(threads, busy) for threads in (1, None) for busy in (False, True)]
    runs: dict[tuple, list] = {c: [] for c in configs}
    for _ in range(b.repeats):  # alternated, so drift on the machine hits every configuration alike
        for c in configs:
            runs[c].append(_merge_beside(b, *c))
    wall = {c: statistics.median(m["wall"] for m in ms) for c, ms in runs.items()}
    default = runs[None, False][0]["torch_threads"]
    rows = [["1" if threads else f"default ({default})", "yes" if busy else "no", f"{s:.1f}",
             f"{s / wall[None, False]:.2f}", f"{s / wall[threads, False]:.2f}"] for (threads, busy), s in wall.items()]
    text = (table(["torch threads", "competing process", "wall s", "/ default alone", "/ same threads alone"], rows)
            + f"\n\nOne GRASP merge, K = 2, E = 1, timed after the imports; medians of {b.repeats}, runs "
              f"alternated. The competitor spins on one core of {os.cpu_count()}. One thread is asked through "
              "from_pretrained(threads=1) when the engine has that option, else torch.set_num_threads(1).")
    return text, {"runs": [{"threads": t, "busy": busy, "runs": ms, "median_wall": wall[t, busy]}
                           for (t, busy), ms in runs.items()]}


def _new_scale_source(out: Path, *, arch: str, seed: int) -> None:
    from hf_grasp.apps.bench import archs

    archs.new_checkpoint(arch, out, num_labels=10, image_size=224, seed=seed, max_shard_size=SCALE_SHARD)


def scale_bench(b: Bench, arch: str) -> Bench:
    """K = 4 random ``arch`` sources at 224 px, each sharded, and a 32 / 16 / 16 image target; made once."""
    work = b.work or HERE / ".perf-work"
    sources = [_built(work / "scale" / f"{arch}-{SCALE_SHARD}" / f"s{i}",
                      functools.partial(_new_scale_source, arch=arch, seed=i))
               for i in range(max(SCALE_KS))]
    target = _built(work / "target-{}-{}-{}".format(*SCALE_SIZES), functools.partial(_new_target, sizes=SCALE_SIZES))
    return Bench([str(x) for x in sources], str(target), b.quick, b.repeats, work)


def _served(server, sb: Bench, repo: str) -> None:
    for i, source in enumerate(sb.sources):
        server.serve(f"{repo}{i}", Path(source))


def section_scale(b: Bench) -> tuple[str, dict]:
    sys.path.insert(0, str(REPO / "tests"))
    from hub_server import HubServer  # the test suite's hub-compatible server on 127.0.0.1

    raw, rows, disk_rows = {}, [], []
    with tempfile.TemporaryDirectory(prefix="perf-scale-") as scratch:
        server = HubServer(Path(scratch) / "hub-store").start()
        try:
            for arch in SCALE_ARCHS:
                sb = scale_bench(b, arch)
                runs = {k: run_child("scale", {**sb.args(k, 1, eval_steps=False), "step_floor": k == SCALE_KS[0]})
                        for k in SCALE_KS}
                p = runs[SCALE_KS[0]]["param_bytes"]
                over = {k: (r["peak"] - r["floor"]) / p for k, r in runs.items()}
                k_ratio = over[SCALE_KS[-1]] / over[SCALE_KS[0]]
                first = runs[SCALE_KS[0]]
                step, step_floor = first["engine_per_source"], first["floor_per_source"]
                repo = f"scale-{arch}/s"
                _served(server, sb, repo)
                disk = {k: _disk_high_water(sb, server, k, True, Path(scratch), repo=repo) for k in SCALE_KS}
                shards = len(list(Path(sb.sources[0]).glob("*.safetensors")))
                raw[arch] = {"runs": runs, "over_p": over, "k_ratio": k_ratio, "step": step, "step_floor": step_floor,
                             "disk": disk, "shards": shards, "param_bytes": p, "checkpoint_bytes": sb.checkpoint_bytes}
                rows.append([arch, f"{p / 1e6:.0f} MB", shards, *(f"{over[k]:.2f}" for k in SCALE_KS),
                             goal(over[SCALE_KS[-1]], GOAL_PEAK_P), f"{k_ratio:.3f}", goal(k_ratio, GOAL_PEAK_K),
                             f"{step:.1f} / {step_floor:.1f}", f"{step / step_floor:.2f}", goal(step / step_floor, GOAL_ALIGN),
                             *(f"{runs[k]['wall']:.0f}" for k in SCALE_KS), f"{first['test_accuracy']:.3f}"])
                disk_rows.append([arch, *(f"{disk[k]['checkpoints']['both']:.2f}" for k in SCALE_KS),
                                  f"{disk[SCALE_KS[-1]]['checkpoints']['both'] / disk[SCALE_KS[0]]['checkpoints']['both']:.2f}"])
        finally:
            server.stop()
    ks = SCALE_KS
    text = (table(["arch", "P", "shards", *(f"peak − floor K{k} (P)" for k in ks), f"goal (K{ks[-1]})",
                   f"K{ks[-1]} / K{ks[0]}", "goal", "step s / its floor s", "step / floor", "goal",
                   *(f"merge s K{k}" for k in ks), "test acc (random sources)"], rows)
            + f"\n\nRandom-init sources at 224 px, each saved by `save_pretrained(max_shard_size={SCALE_SHARD!r})`; "
              f"target: {'/'.join(map(str, SCALE_SIZES))} train/validation/test digits-eras images (one batch per "
              "epoch); released settings: τ 0.3, one alignment batch of 32, AdamW 5e-5, E = 1 (initial and per "
              "source). Floor: RSS after imports, data and sources resolved; peak: VmHWM. Step: load + alignment "
              "+ transfer per source (the report's phases); its floor, in the same process: read the source's "
              "shards into a model, one forward+backward of each of the two models on one batch of 32.\n\n"
            + table(["arch", *(f"disk high-water K{k} (checkpoints)" for k in ks), f"K{ks[-1]} / K{ks[0]}"],
                    disk_rows)
            + "\n\n`evict_sources`, sources by repo id from the test suite's hub server on 127.0.0.1, E = 0; HF_HOME "
              "plus the scratch directory, sampled every 50 ms, in units of one source's checkpoint.")
    return text, raw


def section_modes(b: Bench) -> tuple[str, dict]:
    sb = scale_bench(b, "vit-b16")
    raw, rows = {}, []
    for name, options in MODES.items():
        m = run_child("scale", {**sb.args(2, 1, eval_steps=False), "options": options})
        over = (m["peak"] - m["floor"]) / m["param_bytes"]
        raw[name] = {**m, "over_p": over, "options": options}
        rows.append([name, f"{over:.2f}", f"{m['wall']:.0f}", f"{m['test_accuracy']:.3f}"])
    base = raw["default (AdamW)"]
    for row, m in zip(rows, raw.values()):
        row.insert(3, f"{m['wall'] / base['wall']:.2f}")
        row.append(goal(m["over_p"], GOAL_LOW_P))
    steps = {gc: run_child("step", {**sb.args(1, 0), "checkpointing": gc})["over_p"] for gc in (False, True)}
    raw["plain forward+backward"] = steps
    text = (table(["mode", "peak − floor (P)", "merge s", "/ default", "test acc (random sources)",
                   "low-memory goal"], rows)
            + "\n\nViT-B/16 at 224 px, K = 2, E = 1, the settings of section 9 otherwise. Each mode's bench "
              "accuracy (digits-eras, 3 seeds x 6 domains) is in benchmarks/results/bench-digits-eras-modes/. "
              f"For scale: one plain forward+backward of the model in train mode on a batch of 32, loaded by "
              f"transformers, peaks {steps[False]:.2f}P above the RSS with model and batch allocated "
              f"({steps[True]:.2f}P with its activation checkpointing): the activations, before any merge.")
    return text, raw


SECTION_FUNCTIONS = {"memory": section_memory, "align": section_align, "finetune": section_finetune,
                     "eval": section_eval, "cache": section_cache, "breakdown": section_breakdown,
                     "authors": section_authors, "threads": section_threads, "scale": section_scale,
                     "modes": section_modes}
TITLES = {"memory": "1. Peak memory above the floor", "align": "2. Align + transfer vs its floor",
          "finetune": "3. Fine-tune epoch vs a plain loop", "eval": "4. Evaluation vs a plain no_grad loop",
          "cache": "5. Disk high-water with evict_sources", "breakdown": "6. Wall-time breakdown of one merge",
          "authors": "7. The authors' loop vs hf-grasp", "threads": "8. Threads and a competing process",
          "scale": "9. Real scale: ViT-B/16, ConvNeXt-T, ResNet-50 at 224 px, sharded",
          "modes": "10. Memory modes at ViT-B scale"}


# --------------------------------------------------------------------------- setup and output


def _built(path: Path, make: Callable[[Path], None]) -> Path:
    """``path``, made by ``make`` into a sibling then renamed: an interrupted setup leaves no half-made entry."""
    if not path.exists():
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        make(tmp)
        tmp.rename(path)
    return path


def _new_source(out: Path, *, seed: int) -> None:
    from hf_grasp.apps.bench import archs

    archs.new_checkpoint("resnet18", out, num_labels=10, image_size=32, seed=seed)


def _new_target(out: Path, *, sizes: tuple[int, int, int]) -> None:
    import datasets
    from hf_grasp.apps.bench.digits_eras import load_digits_eras

    pool, (n_train, n_val, n_test) = load_digits_eras()["pretrain"], sizes
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val),
              "test": (n_train + n_val, n_train + n_val + n_test)}
    datasets.DatasetDict({name: pool.select(range(*bound)) for name, bound in bounds.items()}).save_to_disk(str(out))


def prepare(work: Path, k_max: int, sizes: tuple[int, int, int]) -> tuple[list[str], str]:
    """The random ResNet-18 sources and the target, built once into ``work`` and reused by later runs."""
    work.mkdir(parents=True, exist_ok=True)
    (work / ".gitignore").write_text("*\n")  # the cache stays out of git
    sources = [_built(work / "sources" / f"s{i}", functools.partial(_new_source, seed=i)) for i in range(k_max)]
    target = _built(work / "target-{}-{}-{}".format(*sizes), functools.partial(_new_target, sizes=sizes))
    return [str(s) for s in sources], str(target)


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"cpu_count": os.cpu_count(), "torch": importlib.metadata.version("torch"),
            "commit": commit.stdout.strip() or None, "date": datetime.datetime.now().astimezone().isoformat(),
            "command": shlex.join([sys.executable, *sys.argv]), "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


@dataclass
class Output:
    """The JSON and Markdown results, rewritten after every section (an interrupted run keeps what it measured)."""

    out: Path
    data: dict
    sections: list[str] = field(default_factory=list)

    def add(self, name: str, text: str, raw: dict | None = None, *, failure: str | None = None) -> None:
        """Print a section's Markdown and rewrite both files with it (``failure``: the traceback of one that
        broke)."""
        section = f"### {TITLES[name]}\n\n{text}\n"
        print(section, flush=True)
        self.sections.append(section)
        if failure is None:
            self.data["sections"][name] = raw
        else:
            self.data["failed"][name] = failure
        self.write()

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "perf.json").write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        m = self.data["machine"]
        head = (f"# hf-grasp performance\n\n{m['date']}, commit {m['commit']}, {m['cpu_count']} CPUs, torch "
                f"{m['torch']}, OMP_NUM_THREADS={m['omp_num_threads']}\n\n`{m['command']}`\n\n")
        (self.out / "perf.md").write_text(head + "\n".join(self.sections))


def _out_dir(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    results = HERE / "results"
    if not args.quick:
        return args.out or results
    if args.out is None:
        return Path(tempfile.mkdtemp(prefix="perf-quick-"))
    if args.out.resolve() == results.resolve():
        parser.error("--quick results never go to benchmarks/results (pass another --out)")
    return args.out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="K <= 4, one repeat, a 200/50/50 target: checks the script.")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"Comma list of sections ({', '.join(SECTIONS)}).")
    p.add_argument("--repeats", type=int, default=None, help="Runs per side in authors and threads (default 3; "
                                                             "1 with --quick); medians are printed.")
    p.add_argument("--work", type=Path, default=HERE / ".perf-work", help="Where sources and target are cached.")
    p.add_argument("--out", type=Path, default=None, help="Results directory (default benchmarks/results).")
    args = p.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    out_dir = _out_dir(args, p)
    repeats = args.repeats or (1 if args.quick else 3)

    sources, target = prepare(args.work, 4 if args.quick else 16, (200, 50, 50) if args.quick else (800, 100, 100))
    bench = Bench(sources, target, args.quick, repeats, args.work)
    output = Output(out_dir, {"machine": machine(), "settings": {
        "quick": args.quick, "repeats": repeats, "ks": bench.ks, "tau": TAU, "align_batches": ALIGN_BATCHES,
        "batch_size": BATCH, "lr": LR, "weight_decay": WEIGHT_DECAY, "target": target}, "sections": {}, "failed": {}})
    print(f"results -> {out_dir}\n", flush=True)
    for name in (s for s in SECTIONS if s in only):
        try:
            output.add(name, *SECTION_FUNCTIONS[name](bench))
        except Exception as e:  # one broken section must not lose the others of a long run
            output.add(name, f"FAILED: {e}", failure=traceback.format_exc())
    return 1 if output.data["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
