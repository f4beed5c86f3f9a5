"""``hf-grasp bench``: every merge method, τ sweep, source orders, ablations and memory, on one recipe.

For each target domain and seed it makes the sources (a shared base, one
source per other domain), runs every registered method through the same code
path, and writes ``results.csv`` after every (domain, seed) pair, so an
interrupted bench resumes (``--resume``). At the end it runs the peak-memory
comparison and writes what :mod:`.results` makes of the rows: ``table.md``,
``claims.md``, ``memory.json`` and the plots.

Every method that trains gets the same total fine-tuning budget in epochs
(GRASP's initial epochs plus one round per further source).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ...runtime.errors import GraspError, flag
from ...methods import METHODS
from ...plan.config import CONFIG_NAME
from ...runtime.progress import log, progress
from . import digits_eras, tweet_eras
# torch-free at import: make_sources trains in its functions
from .make_sources import BENCHMARKS, DEFAULT_ARCH, AtChanceError, recipe_for
from .results import MAIN_TAU, RunResult, claims, plot, read_csv, summarise, write_csv

TAUS = (0.1, 0.3, 0.5, 0.7, 0.9)
N_ORDERS = 5
MEMORY_K = (2, 4, 8)
# multi-source-naive only exists for the memory comparison; it equals multi-source in accuracy
SKIP_IN_ACCURACY = {"multi-source-naive"}
#: option sets run besides each method's defaults, by name (the name is appended to the row's label)
VARIANTS = {"keep-start": {"keep_start": True}}
#: memory modes a bench can add to GRASP (``--modes``), each a variant: the option set it names
MEMORY_MODES = {"adamw_8bit": {"optim": "adamw_8bit"}, "adafactor": {"optim": "adafactor"}, "sgd": {"optim": "sgd"},
                "bf16": {"mixed_precision": "bf16"},
                "adafactor+bf16": {"optim": "adafactor", "mixed_precision": "bf16"},
                "adamw_8bit+bf16": {"optim": "adamw_8bit", "mixed_precision": "bf16"}}
VARIANTS.update(MEMORY_MODES)
#: the leads tried for a one-model method beating the ensemble and the best source (issue 27), as distill's options
DISTILL_LEADS = {
    "wise": {"distill_wise": True},
    "train-val+keep-start": {"distill_select": "train+validation", "keep_start": True},
    "no-teacher+keep-start": {"distill_weight": 0.0, "keep_start": True},
    "no-teacher+wise": {"distill_weight": 0.0, "distill_wise": True},
    "no-teacher+train-val+keep-start": {"distill_weight": 0.0, "distill_select": "train+validation",
                                        "keep_start": True},
    "no-teacher+train-val+wise": {"distill_weight": 0.0, "distill_select": "train+validation", "distill_wise": True},
}
VARIANTS.update(DISTILL_LEADS)
#: which methods run in which variant (each once, without BN recalibration)
VARIANT_RUNS = (("grasp", "keep-start"), ("multi-source", "keep-start"), ("greedy-soup", "keep-start"),
                ("sequential-ta", "keep-start"), ("learned-interpolation", "keep-start"), ("best-source", "keep-start"),
                ("distill", "keep-start"), *(("distill", lead) for lead in DISTILL_LEADS))
#: the methods each memory run compares (each in a fresh interpreter, K = cfg.memory_k)
MEMORY_METHODS = ("grasp", "multi-source-naive", "greedy-soup", "sequential-ta", "learned-interpolation",
                  "best-source", "distill", "soup-wise")
#: the benchmarks whose models hold no BatchNorm, so a "+bn" (recalibrated) run would repeat the plain one
NO_BATCHNORM = {tweet_eras.TWEET_ERAS}
#: the benchmarks whose base make-sources does not train (a seeded random init)
NO_PRETRAINING = {tweet_eras.TWEET_ERAS}
#: the file a bench writes first into its output: what --resume looks for (a bench older than it: config.json and
#: results.csv)
MARKER = ".hf-grasp-bench"


@dataclass
class BenchConfig:
    """What one ``hf-grasp bench`` run covers."""

    recipe: str = "digits-eras"
    arch: str | None = None                   # None: the recipe's (resnet; tweet-eras: bert)
    domains: list[int] = field(default_factory=lambda: [d for d in range(digits_eras.NUM_DOMAINS)])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    methods: list[str] | None = None          # None: every registered method
    taus: tuple[float, ...] = TAUS
    n_orders: int = N_ORDERS
    max_sources: int | None = None            # K; None: every non-target domain
    memory_k: tuple[int, ...] = MEMORY_K
    memory_arch: str = "resnet18"
    pretrain_epochs: int | None = None        # None: the recipe's (tweet-eras' base is not pretrained)
    source_epochs: int | None = None          # None: the recipe's
    options: dict = field(default_factory=dict)  # merge option overrides (e.g. epochs in --quick)
    modes: tuple[str, ...] = ()               # MEMORY_MODES to run GRASP in besides its default
    variants: tuple[str, ...] | None = None   # the VARIANT_RUNS variants to run (None: every one)

    def __post_init__(self):
        # the recipe's values filled in here, so config.json records what ran (and --resume compares it)
        if self.recipe not in BENCHMARKS:
            return  # bench() refuses it, naming the recipe
        self.arch = self.arch or DEFAULT_ARCH[self.recipe]
        recipe = recipe_for(self.recipe, self.arch)  # the arch's own epochs (make-sources' defaults for it)
        if self.source_epochs is None:
            self.source_epochs = recipe["source_epochs"]
        if self.pretrain_epochs is None and self.recipe not in NO_PRETRAINING:
            self.pretrain_epochs = recipe["pretrain_epochs"]

    @classmethod
    def quick(cls, **overrides) -> "BenchConfig":
        """One domain, one seed, K = 3, one epoch per round, a small model for memory: minutes on 2 CPU cores."""
        recipe = overrides.get("recipe", cls.recipe)
        base = dict(domains=[BENCHMARKS.get(recipe, digits_eras).RECIPE["target_domain"]], seeds=[0],
                    taus=(0.1, 0.5, 0.9), n_orders=2, max_sources=3, memory_k=(2, 4), memory_arch="resnet",
                    source_epochs=3, options={"initial_epochs": 1, "finetune_epochs": 1},
                    **({} if recipe in NO_PRETRAINING else {"pretrain_epochs": 3}))
        return cls(**{**base, **overrides})


def _source_order(domain: int, recipe: str = digits_eras.DIGITS_ERAS) -> list[int]:
    """Sources on both sides of the target, not nearest-first (the recipe's order for its target)."""
    module = BENCHMARKS[recipe]
    if domain == module.RECIPE["target_domain"]:
        return list(module.RECIPE["source_domains"])
    others = [d for d in range(module.NUM_DOMAINS) if d != domain]
    return sorted(others, key=lambda d: (-abs(d - domain), d))  # farthest first, alternating sides by tie order


def _run(refs, domain, seed, method, cfg: BenchConfig, *, base, tau=None, order="given", recal=False,
         variant="") -> RunResult:
    """One merge through the public API, as a user would run it; its accuracies and epochs as a row."""
    from ...merger import GraspMerger

    opts = {**cfg.options, **VARIANTS.get(variant, {}), "seed": seed, "target_domain": str(domain), "order": order,
            "recalibrate_bn": recal, "eval_sources": False, "eval_steps": False}  # a row is the final model
    if tau is not None:
        opts["tau"] = tau
    if METHODS[method].needs_base:
        opts["base"] = str(base)
    start = time.time()
    merger = GraspMerger.from_pretrained(refs, target=cfg.recipe, recipe=cfg.recipe, method=method, **opts)
    report = merger.merge().report
    return RunResult(domain, seed, method, tau if method == "grasp" else None, order, recal,
                     report.final["test"]["accuracy"], report.final["validation"]["accuracy"],
                     report.epochs_trained, time.time() - start, variant)


def _sources(cfg: BenchConfig, output: Path, seed: int) -> Path:
    """A base and one source per domain for ``seed``, shared by every target domain (made once)."""
    from .make_sources import make_sources  # trains: loads the model stack, which `bench --help` must not

    root = output / "sources" / f"{cfg.arch.replace(':', '-')}-seed{seed}"
    if not (root / "base").is_dir():
        try:
            make_sources(root, benchmark=cfg.recipe, arch=cfg.arch, target_domain=None, seed=seed,
                         pretrain_epochs=cfg.pretrain_epochs, source_epochs=cfg.source_epochs)
        except AtChanceError as e:
            # one line in the bench's terms: it has no --lr, and its --source-epochs sets the base's epochs too
            # (BenchConfig: pretrain_epochs, named when it differs). Raised in a worker, it is made again in the
            # bench's process (_each_respelled), which knows how its caller spells options
            options = [("source_epochs", cfg.source_epochs)]
            if e.checkpoint == "base" and cfg.pretrain_epochs not in (None, cfg.source_epochs):
                options.append(("pretrain_epochs", cfg.pretrain_epochs))
            raise AtChanceError("bench", e.arch, f"{e.checkpoint} of seed {seed}", e.accuracy, e.chance,
                                options) from None
    return root


def _methods(cfg: BenchConfig) -> list[str]:
    methods = [m for m in (cfg.methods or list(METHODS)) if m not in SKIP_IN_ACCURACY]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise GraspError(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(METHODS)}")
    return methods


def pair_runs(cfg: BenchConfig, seed: int, n_sources: int) -> list[dict]:
    """The runs of one (target domain, seed), each as ``_run``'s keyword arguments besides the sources:
    methods (± BN recalibration), their variants, the τ sweep, source orders."""
    methods = _methods(cfg)
    runs = []
    for method in methods:
        tau = MAIN_TAU if method == "grasp" else None
        runs.append(dict(method=method, tau=tau))
        if METHODS[method].parameter_space and cfg.recipe not in NO_BATCHNORM:
            runs.append(dict(method=method, tau=tau, recal=True))
    runs += [dict(method=m, tau=MAIN_TAU if m == "grasp" else None, variant=v) for m, v in VARIANT_RUNS
             if m in methods and (cfg.variants is None or v in cfg.variants)]
    runs += [dict(method="grasp", tau=MAIN_TAU, variant=mode) for mode in cfg.modes]
    runs += [dict(method="grasp", tau=tau) for tau in cfg.taus if tau != MAIN_TAU or "grasp" not in methods]
    rng = random.Random(seed)
    for _ in range(cfg.n_orders - 1):
        perm = list(range(n_sources))
        rng.shuffle(perm)
        runs.append(dict(method="grasp", tau=MAIN_TAU, order=",".join(map(str, perm))))
    return runs


def run_key(method: str, tau: float | None = None, order: str = "given", recal: bool = False,
            variant: str = "") -> tuple:
    """What tells one run of a (domain, seed) pair from another: a finished one is not run again (--resume)."""
    return method, tau, order, bool(recal), variant


def run_pair(cfg: BenchConfig, output: Path, domain: int, seed: int, done: frozenset = frozenset()
             ) -> list[RunResult]:
    """The runs of :func:`pair_runs` for one (target domain, seed) whose :func:`run_key` is not in ``done``."""
    root = _sources(cfg, output, seed)
    refs = [str(root / f"d{d}") for d in _source_order(domain, cfg.recipe)[: cfg.max_sources]]
    return [_run(refs, domain, seed, cfg=cfg, base=root / "base", **run) for run in pair_runs(cfg, seed, len(refs))
            if run_key(**run) not in done]


def _worker_init(threads: int, log_dir: str) -> None:
    """A bench worker: its share of the cores, its stderr (warnings, training lines) to its own log."""
    import torch

    torch.set_num_threads(threads)
    sink = open(Path(log_dir) / f"worker-{os.getpid()}.log", "a", buffering=1)
    os.dup2(sink.fileno(), 2)


def _each(fn, jobs: list[tuple], workers: int, output: Path):
    """Yield ``(job, fn(*job))`` as jobs finish: in this process, or over ``workers`` spawned processes."""
    if workers <= 1:
        for job in jobs:
            yield job, fn(*job)
        return
    (output / "logs").mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(threads, str(output / "logs")))
    try:
        futures = {pool.submit(fn, *job): job for job in jobs}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    except BaseException:
        # An interrupt (SIGTERM, Ctrl-C), a failed job or a caller that stops iterating: stop now. Leaving the
        # pool's `with` block instead waited for the running jobs and then ran every queued one (a SIGTERM
        # to `hf-grasp bench` was answered after the whole bench). Python 3.11 has no public way to stop
        # the workers (3.14's terminate_workers); a killed pair is rerun by --resume.
        for process in list((pool._processes or {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)  # the workers are gone: this only closes the queues
        raise
    pool.shutdown()


def _each_respelled(fn, jobs: list[tuple], workers: int, output: Path):
    """:func:`_each`; a make-sources refusal (:class:`AtChanceError`) raised in a worker is made again here, so its
    line names options as this process's caller spells them (``--source-epochs`` from the command line: a spawned
    worker does not know it was)."""
    try:
        yield from _each(fn, jobs, workers, output)
    except AtChanceError as e:
        raise AtChanceError(*e.args) from None


def _finished(done: list[RunResult]) -> dict[tuple[int, int], set]:
    finished: dict[tuple[int, int], set] = {}
    for r in done:
        finished.setdefault((r.domain, r.seed), set()).add(
            run_key(r.method, r.tau, r.order, r.recalibrate_bn, r.variant))
    return finished


def missing_runs(cfg: BenchConfig, done: list[RunResult]) -> list[tuple[int, int]]:
    """The (domain, seed) pairs that lack some of their runs: all of them, or those of methods added since."""
    finished = _finished(done)
    n_sources = len(_source_order(0, cfg.recipe)[: cfg.max_sources])
    return [(d, s) for d in cfg.domains for s in cfg.seeds
            if any(run_key(**run) not in finished.get((d, s), set()) for run in pair_runs(cfg, s, n_sources))]


def run_accuracy(cfg: BenchConfig, output: Path, *, done: list[RunResult] = (), workers: int = 1) -> list[RunResult]:
    """All accuracy runs of every (domain, seed) not already in ``done``; ``results.csv`` after each."""
    _methods(cfg)  # unknown names fail before hours of work
    results = list(done)
    finished = _finished(done)
    pairs = missing_runs(cfg, done)
    # sources first (one set per seed), so parallel pairs never build the same set twice
    seeds = sorted({s for _, s in pairs})
    for _ in _each_respelled(_sources, [(cfg, output, s) for s in seeds], workers, output):
        pass
    finishing = _each(run_pair, [(cfg, output, d, s, frozenset(finished.get((d, s), ()))) for d, s in pairs],
                      workers, output)
    for (_, _, domain, seed, _), runs in progress(finishing, desc="bench: (domain, seed) pairs", total=len(pairs),
                                               unit="pair"):
        results += runs
        results.sort(key=lambda r: (r.domain, r.seed))  # stable: runs keep their order within a pair
        write_csv(results, output / "results.csv")  # after every pair: an interrupted bench resumes from here
        log.info("bench: target domain %s, seed %s done (%d runs, %.1f min)", domain, seed, len(runs),
                 sum(r.seconds for r in runs) / 60)
    return results


MEMORY_CHILD = """
import json, sys
from hf_grasp import GraspMerger
from hf_grasp.output.report import peak_rss_bytes
args = json.loads(sys.argv[1])
GraspMerger.from_pretrained(args["sources"], target="digits-eras", method=args["method"], eval_sources=False,
                            initial_epochs=1, finetune_epochs=1, lr=1e-3, **args["options"]).merge()
print(json.dumps(peak_rss_bytes()))
"""


def run_memory(cfg: BenchConfig) -> list[dict]:
    """Peak RSS of each of :data:`MEMORY_METHODS` for each K, each run in a fresh interpreter."""
    from . import archs

    rows = []
    with tempfile.TemporaryDirectory(prefix="hf-grasp-mem-") as tmp:
        dirs = []
        for i in range(max(cfg.memory_k) + 1):  # the last one is the base of the methods that take one
            d = Path(tmp) / f"s{i}"
            archs.new_checkpoint(cfg.memory_arch, d, num_labels=10, image_size=32, seed=i)
            dirs.append(str(d))
        for k in cfg.memory_k:
            for method in MEMORY_METHODS:
                if method not in METHODS:
                    continue
                options = {"base": dirs[-1]} if METHODS[method].needs_base else {}
                arg = json.dumps({"sources": dirs[:k], "method": method, "options": options})
                proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, arg], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise GraspError(f"memory run {method} K={k} failed: {proc.stderr.strip().splitlines()[-1]}")
                rows.append({"k": k, "method": method, "peak_rss_bytes": json.loads(proc.stdout.splitlines()[-1])})
    return rows


def _bench_config(path: Path) -> dict | None:
    """A bench's ``config.json`` as written, or None if ``path`` is not one (missing, not JSON, a model's)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) and {"recipe", "arch", "domains", "seeds"} <= data.keys() else None


def _is_bench(output: Path) -> bool:
    """Whether ``output`` is a directory ``hf-grasp bench`` wrote: its marker, or (older) its config.json and
    results.csv."""
    return (output / MARKER).is_file() or (
        (output / "results.csv").is_file() and _bench_config(output / "config.json") is not None)


def _check_output(output: Path, resume: bool) -> None:
    """Refuse, before any work, an output a bench must not write into: with ``resume``, anything but a bench's
    directory; without, a directory holding anything but nothing or a bench (which ``resume`` continues).

    A merge's folder or a model (a source) is never a bench's: a bench would overwrite its config.json and train
    inside it. What :func:`~hf_grasp.runtime.workspace.claim_output` refuses (a file, a symbolic link, the current
    directory, the HF cache, an unwritable place) it refuses next, holding the lock for the bench.
    """
    resuming, what = flag("resume"), (
        "a merge's folder (it holds grasp_config.json)" if (output / CONFIG_NAME).exists()
        else "a model's folder (it holds config.json)" if (output / "config.json").exists()
        and _bench_config(output / "config.json") is None else None)
    if resume:
        if not output.exists() and not output.is_symlink():
            raise GraspError(f"{resuming}: {output} does not exist, so there is no bench to resume; leave out "
                             f"{resuming} to start one there")
        if not output.is_dir():
            raise GraspError(f"{resuming}: {output} is a file, not a directory a bench wrote; pass the "
                             f"{flag('output', None)} of the bench to resume")
        if what:
            raise GraspError(f"{resuming}: {output} is {what}, not a directory a bench wrote; pass the "
                             f"{flag('output', None)} of the bench to resume")
        if (output / "results.csv").is_file() and _bench_config(output / "config.json") is None:
            raise GraspError(f"{resuming}: {output} has results.csv but no bench config.json, so the settings its "
                             f"rows ran with are unknown; start the bench in another {flag('output', None)}")
        if not _is_bench(output):
            raise GraspError(f"{resuming}: {output} is not a directory a bench wrote (no {MARKER}, no results.csv "
                             f"and config.json); pass the {flag('output', None)} of the bench to resume")
        return
    if output.is_dir() and not output.is_symlink() and not _is_bench(output) and any(output.iterdir()):
        raise GraspError(f"output {output} is {what or 'a directory that is not empty and not a bench'}; a bench "
                         f"writes into a new or empty directory: choose another {flag('output', None)}")


def _check_resumable(cfg: BenchConfig, output: Path, resume: bool) -> list[RunResult]:
    """The runs to keep from an earlier bench in ``output``: none, or all of them if it had the same settings."""
    csv_path, cfg_path = output / "results.csv", output / "config.json"
    if not resume and (csv_path.exists() or (output / MARKER).is_file()):  # a bench, perhaps killed before a row
        raise GraspError(f"{csv_path if csv_path.exists() else output / MARKER} exists: pass {flag('resume')} to "
                         f"continue that bench, or choose another {flag('output', None)}")
    if not csv_path.exists():
        return []
    # domains and seeds may grow between runs; everything else must match what made the earlier rows
    # (the memory runs are redone by every invocation, so their settings may differ too)
    # methods may be added: a pair then runs only what it lacks
    same = {k: v for k, v in json.loads(json.dumps(asdict(cfg))).items()
            if k not in ("domains", "seeds", "methods", "memory_k", "memory_arch")}
    before = _bench_config(cfg_path)
    if before is None:
        raise GraspError(f"{flag('resume')}: {output} has results.csv but no bench config.json, so the settings its "
                         f"rows ran with are unknown; start the bench in another {flag('output', None)}")
    changed = sorted(k for k in same if before.get(k) != same[k])
    if changed:
        raise GraspError(f"{flag('resume')}: {cfg_path} was written with other settings ({', '.join(changed)}); "
                         f"rerun with the same settings or choose another {flag('output', None)}")
    return read_csv(csv_path)


def merge_defaults() -> dict:
    """The merge options' defaults of this hf_grasp, recorded with a bench: a row is comparable with rows of
    another hf_grasp only if the defaults it ran with are the same."""
    from ...plan.options import MergeOptions

    return json.loads(json.dumps(MergeOptions().to_dict()))


def _check_defaults(output: Path) -> None:
    """Refuse to add runs to a bench whose rows ran under other merge defaults than this hf_grasp's."""
    path = output / "config.json"
    before = json.loads(path.read_text()).get("merge_defaults") if path.exists() else None
    now = merge_defaults()
    if before is None:
        changed = ["(not recorded: the bench predates the record)"]
    else:
        # an option added since (absent before) defaults to the behaviour that came before it, by convention
        changed = [f"{k} {before[k]!r} -> {now[k]!r}" for k in now if k in before and before[k] != now[k]]
    if changed:
        raise GraspError(f"{flag('resume')}: the runs in {output / 'results.csv'} ran under other merge defaults "
                         f"({'; '.join(changed)}); new runs would not be comparable with them: choose another "
                         f"{flag('output', None)} (re-drawing the tables without new runs is fine)")


def bench(cfg: BenchConfig, output: str | Path, *, resume: bool = False, workers: int = 1) -> dict:
    """Run the whole bench into ``output``; returns the result and memory rows and the printed texts.

    ``output`` is a new or empty directory, or with ``resume=True`` one a
    bench wrote (it writes :data:`MARKER` first): ``resume=True`` keeps the
    (domain, seed) pairs an earlier, interrupted or smaller bench with the same
    settings finished in ``output`` and runs the rest; ``workers`` runs that
    many pairs at once, each in its own process. The output is locked for the
    bench (:func:`~hf_grasp.runtime.workspace.claim_output`).
    """
    from ...runtime.workspace import claim_output

    if cfg.recipe not in BENCHMARKS:
        raise GraspError(f"bench {flag('recipe', cfg.recipe)}: only {' and '.join(BENCHMARKS)} make their own "
                         "sources offline so far")
    if cfg.memory_k and cfg.recipe != digits_eras.DIGITS_ERAS:
        raise GraspError(f"bench {flag('recipe', cfg.recipe)}: the memory runs are measured on digits-eras' "
                         f"{cfg.memory_arch}; pass {flag('no_memory')} here")
    _methods(cfg)  # unknown names: refused before the output is made
    output = Path(output)
    _check_output(output, resume)
    # overwrite: a non-empty output is one _check_output let through, a bench's own directory
    with claim_output(output, overwrite=True):
        return _bench(cfg, output, resume=resume, workers=workers)


def _bench(cfg: BenchConfig, output: Path, *, resume: bool, workers: int) -> dict:
    """:func:`bench` in its claimed, checked ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    done = _check_resumable(cfg, output, resume)
    (output / MARKER).write_text("written by hf-grasp bench: `hf-grasp bench --resume` continues this directory\n")
    adding = bool(missing_runs(cfg, done))
    if done and adding:
        _check_defaults(output)
    if not done or adding:  # a re-draw (nothing to run) keeps the record of what its rows ran with
        (output / "config.json").write_text(json.dumps({**asdict(cfg), "merge_defaults": merge_defaults()},
                                                       indent=2))
    start = time.time()
    results = run_accuracy(cfg, output, done=done, workers=workers)
    if cfg.memory_k:
        memory = run_memory(cfg)
    else:  # a resumed bench without memory runs keeps the figures of the one before
        earlier = output / "memory.json"
        memory = json.loads(earlier.read_text()) if done and earlier.exists() else []
    table, figures = summarise(results, memory)
    claim_text = claims(figures, memory)
    plot(results, memory, figures, output)
    seconds = time.time() - start
    # every invocation on this output, so a resumed bench still says how long the whole took
    history_path = output / "history.json"
    history = json.loads(history_path.read_text()) if done and history_path.exists() else []
    history.append({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "minutes": round(seconds / 60, 1),
                    "pairs_run": len({(r.domain, r.seed) for r in results}) - len({(r.domain, r.seed) for r in done}),
                    "runs": len(results) - len(done),
                    "workers": workers, "cpu_cores": os.cpu_count(), "memory_runs": bool(cfg.memory_k)})
    history_path.write_text(json.dumps(history, indent=2))
    domains, seeds = sorted({r.domain for r in results}), sorted({r.seed for r in results})
    runs_text = "; ".join(f"{h['pairs_run']} new pairs, {h.get('runs', '?')} runs"
                          f"{' + memory' if h['memory_runs'] else ''} in {h['minutes']} min "
                          f"({h['workers']} worker(s), {h['cpu_cores']} CPU cores)" for h in history)
    header = (f"hf-grasp bench --recipe {cfg.recipe}: arch {cfg.arch}, target domains {domains}, seeds {seeds}, "
              f"K = {cfg.max_sources or 'all'}; every method that trains gets the same fine-tuning epochs "
              f"(column 2). {len(results)} runs ({sum(r.seconds for r in results) / 3600:.1f} h summed over runs); "
              f"wall clock by invocation: {runs_text}")
    (output / "table.md").write_text(header + "\n\n" + table + "\n")
    (output / "claims.md").write_text(claim_text + "\n")
    (output / "memory.json").write_text(json.dumps(memory, indent=2))
    print(header, table, "", claim_text, sep="\n")
    return {"results": results, "memory": memory, "table": table, "claims": claim_text, "seconds": seconds}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``hf-grasp bench`` flags."""
    p.add_argument("--recipe", default="digits-eras",
                   help="Built-in benchmark (it makes its own sources): digits-eras (images) or tweet-eras (text; "
                        "no memory runs, which digits-eras measures).")
    p.add_argument("--arch", default=None,
                   help="Architecture of the sources (see make-sources --arch; default resnet, tweet-eras: bert).")
    p.add_argument("--seeds", type=int, default=None,
                   help="Number of seeds (default 5; gains below about 2 points need 10).")
    p.add_argument("--domains", type=int, nargs="+", help="Target domains (default: all).")
    p.add_argument("--methods", nargs="+", help="Methods to run (default: every registered method).")
    p.add_argument("--quick", action="store_true",
                   help="One domain, one seed, K=3, one epoch per round, 3 τ values, 2 orders, K=2,4 for memory.")
    p.add_argument("--no-memory", action="store_true", help="Skip the peak-memory runs (tweet-eras: always).")
    p.add_argument("--taus", type=float, nargs="+", help="τ values for the sweep (default 0.1 0.3 0.5 0.7 0.9).")
    p.add_argument("--orders", type=int, help="Number of source orders (default 5).")
    p.add_argument("--max-sources", type=int, help="K: use only the first K sources of the order.")
    p.add_argument("--memory-k", type=int, nargs="+", help="K values for the memory runs (default 2 4 8).")
    p.add_argument("--source-epochs", type=int, help="Epochs for the base and for each source in make-sources.")
    p.add_argument("--modes", nargs="+", choices=list(MEMORY_MODES), default=(),
                   help="Memory modes to run GRASP in besides its default, each a row of its own: an optimizer "
                        "(--optim), bf16 (--mixed-precision) or both.")
    p.add_argument("--variants", nargs="*", choices=sorted({v for _, v in VARIANT_RUNS}), default=None,
                   help="Which option sets to run besides each method's defaults (default: every one; with no name: "
                        "none): keep-start for grasp, multi-source, greedy-soup, sequential-ta, "
                        "learned-interpolation, best-source and distill, and distill's leads.")
    p.add_argument("--output", type=Path, default=Path("bench"), help="Directory for sources, CSV, tables, plots.")
    p.add_argument("--resume", action="store_true",
                   help="Keep the (domain, seed) pairs already in OUTPUT/results.csv and run only the rest.")
    p.add_argument("--workers", type=int, default=1,
                   help="Run this many (domain, seed) pairs at once, each process with its share of the cores.")


def run_from_args(args: argparse.Namespace) -> dict:
    """``hf-grasp bench``: a :class:`BenchConfig` from the flags (``--quick`` to start from), then :func:`bench`."""
    cfg = BenchConfig.quick(recipe=args.recipe, arch=args.arch) if args.quick else BenchConfig(recipe=args.recipe,
                                                                                               arch=args.arch)
    if args.seeds is not None:
        cfg.seeds = list(range(args.seeds))
    if args.domains:
        cfg.domains = args.domains
    if args.methods:
        cfg.methods = args.methods
    if args.no_memory or cfg.recipe != digits_eras.DIGITS_ERAS:  # the memory runs are digits-eras' (see bench)
        cfg.memory_k = ()
    for name in ("taus", "memory_k"):
        if getattr(args, name):
            setattr(cfg, name, tuple(getattr(args, name)))
    if args.orders:
        cfg.n_orders = args.orders
    cfg.modes = tuple(args.modes or ())
    if args.variants is not None:
        cfg.variants = tuple(args.variants)
    if args.max_sources:
        cfg.max_sources = args.max_sources
    if args.source_epochs:
        cfg.source_epochs = args.source_epochs
        if cfg.recipe not in NO_PRETRAINING:
            cfg.pretrain_epochs = args.source_epochs
    return bench(cfg, args.output, resume=args.resume, workers=args.workers)
