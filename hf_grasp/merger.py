"""The public Python API: :class:`GraspMerger` and :class:`MergeResult`.

``from_pretrained`` reads like the data flow: options -> target data -> resolved
and checked sources; ``merge`` allocates the two models, runs the method and
builds the report.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate.utils import set_seed
from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, ModelHubMixin
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx  # the HTTP library huggingface_hub itself uses
from safetensors import SafetensorError
from torch import nn

from .runtime.memory import frozen_heap
from .output.card import HEATMAP, build_model_card, for_publication, has_heatmap
from .inputs.data import TargetData, load_target, preprocess_target
from .runtime.errors import GraspError, SourceError, first_line
from .inputs.families.base import ModelFamily
from .output.heatmap import plot_alignment_heatmap
from .inputs.labels import relabel_model, relabel_saved
from .runtime.launch import announce_processes
from .plan.config import CONFIG_NAME, REPORT_NAME, MergeConfig, find_merge_config, pinned_reference
from .methods import METHODS, find_method, get_method
from .engine.context import MergeContext
from .plan.licenses import License, LicenseDecision, decide_license
from .plan.options import Layer, MergeOptions, MethodParams, resolve
from .runtime.progress import log
from .inputs.recipes import resolve_target
from .output.report import MergeReport, build_report
from .inputs.resolution import MergeInputs, check_family, preflight_inputs, resolve_inputs
from .inputs.sources import expected_specs
from .runtime.timing import RunClock
from .engine.training import make_accelerator, process_state, recalibrate_batchnorm, torch_threads


def check_free_space(output: str | Path, inputs: MergeInputs, *, checkpointed: bool = False) -> None:
    """Refuse, before any work, an output whose file system cannot hold one more checkpoint of the lead's size
    (three with ``checkpointed``: the resume state beside it holds one, and two while it is replaced)."""
    size = sum(f.stat().st_size for f in inputs.lead.weight_files if f.exists())
    need = size * (3 if checkpointed else 1)
    where = Path(output).resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need and free < need * 1.1:  # weights plus config, card, report and heatmap
        raise GraspError(f"output {output}: {free / 2**20:.1f} MiB free on its file system, the merged model needs "
                         f"about {need / 2**20:.1f} MiB; free space or choose another --output")


def _references(sources: Any) -> list[str]:
    """The source references as text: a list of ``str`` or ``os.PathLike``."""
    try:
        refs = [os.fspath(s) for s in sources]
    except TypeError as e:
        raise GraspError(f"sources must be repo ids or paths (str or os.PathLike): {e}") from None
    if not refs:
        raise GraspError("no sources given")
    return refs


@dataclass
class _EarlierMerge:
    """A merge saved by hf-grasp that ``--init`` names, to be continued."""

    reference: str
    config: MergeConfig

    def report(self, resolved) -> MergeReport:
        """Its ``grasp_report.json``, from the files ``resolved`` (the init source) brought."""
        path = Path(resolved.path) / REPORT_NAME
        if not path.is_file():
            raise SourceError(f"--init {self.reference!r}: it has {CONFIG_NAME} but no {REPORT_NAME}, so its steps "
                              "cannot be carried on; re-save it with hf-grasp")
        return MergeReport.load(path)


def _merged_license(options: MergeOptions, inputs: MergeInputs) -> LicenseDecision:
    """The merged model's license: ``--license``, else the one the model card of every checkpoint its weights
    come from states (an earlier merge continued, a base, each source)."""
    given = License(options.license, options.license_name, options.license_link) if options.license else None
    return decide_license(given, {s.name: s.license for s in inputs.everyone})


def _continued_merge(init: str | None, method: str, token: str | bool | None) -> _EarlierMerge | None:
    """The earlier sequential merge ``init`` names, when this ``method`` can continue it; else None (``init``
    is then only the initial model)."""
    if not init or init in ("first", "random") or not find_method(method).sequential:
        return None
    found = find_merge_config(init, token=token)
    if found is None or not find_method(found[0].method).sequential:
        return None
    return _EarlierMerge(init, found[0])


def push_folder(folder: str | Path, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                create_pr: bool = False, commit_message: str | None = None, token: str | bool | None = None) -> str:
    """Upload every file of a saved merge ``folder`` to the Hub model repo ``repo_id`` in one commit.

    The repo is created if missing (``private`` then applies); a ``revision``
    branch too. One ``create_commit`` rather than ``upload_folder``: with Xet,
    ``upload_folder`` may split a folder over several commits, and weights
    without their card or report must never be a revision of the repo.
    Returns the commit's URL, or the pull request's with ``create_pr``. A
    failure is a :class:`GraspError` naming the repo, never the token.
    """
    folder = Path(folder)
    api = HfApi(token=token)
    operations = [CommitOperationAdd(path_in_repo=f.relative_to(folder).as_posix(), path_or_fileobj=str(f))
                  for f in sorted(folder.rglob("*")) if f.is_file()]
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision and revision != "main":  # a new branch must exist before a commit to it
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.create_commit(repo_id, operations, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message or f"Upload merged model ({len(operations)} files) "
                                                                  "with hf-grasp")
    except (HfHubHTTPError, OSError, ValueError, httpx.HTTPError) as e:
        # httpx: a refused or dropped connection surfaces as the HTTP library's own error, unwrapped
        raise GraspError(f"pushing to Hub repo {repo_id} failed ({_redact(first_line(e), token)}); nothing was "
                         "committed") from None
    return info.pr_url or info.commit_url


def _redact(text: str, token: str | bool | None) -> str:
    """``text`` without the token in it: an error message is printed, the token must never be."""
    return text.replace(token, "***") if isinstance(token, str) and token else text


class GraspMerger:
    """Merges K same-architecture classifiers onto a target dataset, one source resident at a time.

    Build it with :meth:`from_pretrained`; call :meth:`merge`.
    """

    def __init__(self, inputs: MergeInputs, data: TargetData, options: MergeOptions, *, method: str = "grasp",
                 params: MethodParams | None = None, references: Sequence[str] | None = None,
                 target: str | None = None, recipe: str | None = None, earlier: MergeReport | None = None,
                 clock: RunClock | None = None):
        self.inputs, self.data, self.options = inputs, data, options
        # when the run started, for the report's wall time (the CLI sets the process's start)
        self.clock = clock or RunClock.now("the GraspMerger was made")
        self.method = get_method(method)
        self.params = params if params is not None else self.method.params()
        if self.method.needs_base and inputs.base_source is None:
            raise GraspError(f"method {method!r} works on task vectors: pass --base with the sources' shared "
                             "starting point")
        self.model_dir = inputs.lead.path
        self.family: ModelFamily = check_family(inputs)
        self.references = list(references) if references is not None else [s.name for s in inputs.sources]
        self.target, self.recipe = target, recipe
        self.earlier = earlier  # the report of the merge this one continues (--init org/merged)
        self.license = _merged_license(options, inputs)
        if self.license.warning:  # now, before the merge's minutes: the user can stop and pass --license
            log.warning(self.license.warning)
        # decoded and preprocessed once here, with the data, rather than every epoch of the merge
        preprocess_target(data, self.family.image_transform(self.model_dir, train=False))

    @property
    def sources(self):
        return self.inputs.sources

    @classmethod
    def from_pretrained(
        cls,
        sources: Sequence[str | os.PathLike] | str | os.PathLike,
        *,
        target: str | None = None,
        recipe: str | None = None,
        method: str | None = None,
        token: str | bool | None = None,
        **options: Any,
    ) -> "GraspMerger":
        """Load the ``target`` dataset and resolve ``sources``; or restore a published merge.

        Hub sources are checked against the architecture on their remote
        safetensors headers before any of their weights are downloaded.

        Args:
            sources: references — ``org/name``, ``org/name@revision``, ``hf-hub:org/name``
                or a local directory — of checkpoints sharing one architecture.
                Resolved through the HF cache (HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN apply).
                A single reference instead names a merge saved by hf-grasp (a Hub repo or
                folder holding ``grasp_config.json``): the merger is rebuilt with that merge's
                sources (pinned to the commits it used), target, method and every option, so
                ``.merge()`` makes the same model; arguments given here override them.
            target: a recipe name (``digits-eras``, ``yearbook``, ``clear10``, ``clear100``),
                a dataset id, or a local path that ``datasets`` reads (``save_to_disk``
                output, imagefolder, ...).
            recipe: a recipe name or YAML file (``recipes/``) whose options fill those
                you leave unset; with a ``target`` path, the recipe's settings apply to it.
            method: a registered merge method (default ``grasp``; ``hf_grasp.methods.METHODS`` lists them).
            token: Hub token, if not taken from the environment.
            **options: shared options (:class:`~hf_grasp.plan.options.MergeOptions`: ``lr``,
                ``initial_epochs``, ``target_domain``, ...) and the method's own parameters
                (``tau``, ``granularity`` for GRASP; ``density`` for TIES; ...). A recipe's
                values fill those you leave unset. ``init`` may name an earlier GRASP merge
                (``init="org/merged"``): the merge then continues it, one step per new source,
                with that merge's options unless given here.
        """
        clock = RunClock.now("from_pretrained was called")  # loading the data and sources is the run too
        saved = None
        if isinstance(sources, (str, os.PathLike)):  # one reference: a published merge to rebuild
            config, _ = find_merge_config(sources, token=token, required=True)
            saved = Layer(config.options | config.params, origin=f"merge {os.fspath(sources)}", lenient=True)
            sources, method = config.sources, method or config.method
            if target is None and recipe is None:
                target, recipe = config.target, config.recipe
        method = method or "grasp"
        find_method(method).require_extra()  # before any source is resolved or any data loaded
        sources = _references(sources)
        target = os.fspath(target) if target is not None else None
        earlier = _continued_merge(options.get("init") or (saved and saved.values.get("init")), method, token)
        if earlier is not None and target is None and recipe is None:
            target, recipe = earlier.config.target, earlier.config.recipe
        dataset, recipe_values = resolve_target(target, recipe)
        layers = [Layer(recipe_values, origin=f"recipe {recipe or target}", lenient=True)]
        if earlier is not None:
            layers.append(Layer(earlier.config.inherited(), origin=f"earlier merge {earlier.reference}", lenient=True))
        opts, params = resolve(method, [*layers, *([saved] if saved else []), Layer(options)])
        if opts.init == "first" and len(sources) < 2:
            raise GraspError(f"{find_method(method).label} with init=first needs at least 2 sources")
        if opts.evict_sources and find_method(method).reads_across_sources:
            raise GraspError(f"--evict-sources: method {method!r} reads one tensor of every source at a time, so all "
                             "sources must be on disk together")
        info = find_method(method)
        state = process_state(opts.cpu)  # the launch: one process, or accelerate launch / torchrun ranks
        announce_processes(state)
        if state.num_processes > 1 and not info.multi_process:
            raise GraspError(f"method {method!r} cannot run on {state.num_processes} processes yet (its result would "
                             "differ from one process's); launch it as a single process")
        if state.num_processes > 1 and opts.align_mode == "train-merged":
            raise GraspError("--align-mode train-merged: in train mode BatchNorm takes statistics over the whole "
                             "batch, which is split between the processes; launch it as a single process")
        # several processes on one machine: the first downloads and caches, the others then read its files
        with state.main_process_first():
            data = load_target(
                dataset, domain=opts.target_domain, domain_column=opts.domain_column,
                image_column=opts.image_column, label_column=opts.label_column,
                validation_fraction=opts.validation_fraction, seed=opts.seed,
                trust_remote_code=opts.trust_remote_code, skip_bad_images=opts.skip_bad_images,
            )
            inputs = resolve_inputs(sources, opts, num_labels=data.num_labels, token=token,
                                    label_names=data.label_names)
        return cls(inputs, data, opts, method=method, params=params, references=sources, target=target,
                   recipe=recipe, earlier=earlier.report(inputs.init_source) if earlier else None, clock=clock)

    @property
    def config(self) -> MergeConfig:
        """This merge's configuration, every input pinned (what ``grasp_config.json`` holds)."""
        from hf_grasp import __version__

        by_name = {s.name: s for s in self.inputs.everyone}
        pins = {name: pinned_reference(name, s.ref.repo_id, s.commit) for name, s in by_name.items()}
        options = self.options.to_dict()
        for key, source in (("init", self.inputs.init_source), ("base", self.inputs.base_source)):
            if source is not None:
                options[key] = pins[source.name]
        return MergeConfig(
            method=self.method.name, sources=[pins.get(r, r) for r in self.references],
            target=self.target, recipe=self.recipe, options=options,  # local paths as given, like the sources
            params=self.params.to_dict(), version=__version__,
            continues=pins[self.inputs.init_source.name] if self.earlier is not None else None)

    def _build(self) -> nn.Module:
        return self.family.build(self.model_dir, trust_remote_code=self.options.trust_remote_code).float()

    @frozen_heap()  # the merge collects garbage between phases: skip what existed before it
    def merge(self, *, checkpoint_dir: str | os.PathLike | None = None, resume: bool = False) -> "MergeResult":
        """Run the merge; returns the result (one model, or the ensemble's description) with its report.

        ``checkpoint_dir``: for a sequential method (GRASP and its ablations),
        the merged state is saved there after every step; with ``resume`` a
        state already there (of this same merge, else :class:`GraspError`
        naming the difference) is restored and the merge goes on from the next
        step, ending with the same weights as a run never stopped. Without
        ``resume`` a state already there is refused. The directory is left in
        place: remove it once the result is saved.
        """
        with torch_threads(self.options.threads):
            return self._merge(checkpoint_dir, resume)

    def _merge(self, checkpoint_dir: str | os.PathLike | None, resume: bool) -> "MergeResult":
        from .output.checkpoint import Checkpoint

        o = self.options
        if resume and not self.method.sequential:
            raise GraspError(f"--resume: method {self.method.name!r} does not checkpoint its steps; only "
                             f"{', '.join(sorted(n for n, m in METHODS.items() if m.sequential))} can be resumed")
        checkpoint = (Checkpoint(checkpoint_dir, self.config, resume=resume)
                      if checkpoint_dir is not None and self.method.sequential else None)
        start = time.time()
        set_seed(o.seed)
        merged = self._build()  # seeded: this is the random init when init=random
        probe = self._build()
        arch_labels = self.family.num_labels(self.model_dir)
        if arch_labels != self.data.num_labels:
            raise SourceError(
                f"source {self.inputs.lead.name!r}: head has {arch_labels} outputs but target {self.data.name!r} has "
                f"{self.data.num_labels} labels, and this checkpoint sets the architecture, head included "
                "(--skip-mismatched-heads applies only to the others): "
                + ("" if self.inputs.init_source else f"put a source with a {self.data.num_labels}-output head "
                   "first (reorder --sources or use --order), or ")
                + f"pass --init a checkpoint of this architecture with a {self.data.num_labels}-output head, adding "
                "--skip-mismatched-heads for the sources whose heads differ")
        relabel_model(merged, self.data.label_names)  # its head ends in the target's class order, not the lead's
        skips = preflight_inputs(self.inputs, expected_specs(merged), num_labels=self.data.num_labels,
                                 skip_mismatched_heads=o.skip_mismatched_heads, naming=self.family.naming(merged))
        accelerator = make_accelerator(cpu=o.cpu or None, mixed_precision=o.mixed_precision)
        if o.batch_size % accelerator.num_processes:
            raise GraspError(f"--batch-size {o.batch_size}: each batch is split between the "
                             f"{accelerator.num_processes} processes, so it must be a multiple of "
                             f"{accelerator.num_processes}")
        merged.to(accelerator.device)
        probe.to(accelerator.device)
        ctx = MergeContext(
            options=o, params=self.params, family=self.family, model_dir=self.model_dir,
            sources=self.inputs.sources, skips=skips, init_source=self.inputs.init_source,
            base_source=self.inputs.base_source, merged=merged, probe=probe, data=self.data,
            accelerator=accelerator, earlier=self.earlier, checkpoint=checkpoint,
        )
        self.method.fn(ctx)
        if o.recalibrate_bn and self.method.parameter_space:
            if self.method.sequential:  # the shuffling as if after one more step, resumed or not
                ctx.begin_step(ctx.first_step + len(ctx.records))
            recalibrate_batchnorm(merged, self.family.logits, ctx.train_loader, accelerator)
            ctx.record(step="recalibrate-bn", source=None, validation=ctx.step_metrics("validation"),
                       test=ctx.step_metrics("test"), seconds=0.0)
        ctx.complete_last_record()
        ctx.check_finite()  # a NaN/inf model is never returned, so never saved
        del ctx.probe, probe
        accelerator.free_memory()
        report = build_report(ctx, self.method, seconds=time.time() - start, license=self.license, clock=self.clock)
        return MergeResult(model=merged.cpu().eval(), family=self.family, model_dir=self.model_dir, report=report,
                           artifact=ctx.artifact, merge_config=self.config, clock=self.clock)


class MergeResult(ModelHubMixin):
    """A merged model with its report; saves in the model library's native format.

    ``save_pretrained(dir)`` writes the model (loadable with plain transformers or
    timm), its preprocessing config, ``grasp_report.json``, an alignment heatmap
    and a model card; ``push_to_hub(repo_id)`` uploads the same folder.

    ``artifact``: a result that is not one model of the architecture (the
    ensemble's :class:`~hf_grasp.methods.ensemble_model.EnsembleSpec`). When set, it is
    what gets saved (its own ``save_pretrained`` writes its files and README) and
    ``model`` is only the engine's working model, never written.
    """

    def __init__(self, model: nn.Module, family: ModelFamily, model_dir: Path, report: MergeReport,
                 artifact: Any = None, merge_config: MergeConfig | None = None, clock: RunClock | None = None):
        self.model, self.family, self.model_dir, self.report = model, family, Path(model_dir), report
        self.artifact, self.merge_config = artifact, merge_config
        self.clock = clock  # when the run started: saving is part of its wall time
        # ModelHubMixin turns JSON-able __init__ arguments (the report, a dataclass artifact) into a
        # config.json it writes when _save_pretrained did not: never wanted here.
        self._hub_mixin_config = None

    def _save_pretrained(self, save_directory: Path) -> None:
        if self.artifact is not None:
            self.artifact.save_pretrained(save_directory)
        else:
            self.family.save(self.model, save_directory, like=self.model_dir)
            relabel_saved(save_directory, self.report.target.label_names)  # like's config names like's order
        if self.merge_config is not None:  # what GraspMerger.from_pretrained(<this folder or repo>) rebuilds
            self.merge_config.save(save_directory / CONFIG_NAME)
        if has_heatmap(self.report):  # labelled as the card names the sources: no paths of this machine
            plot_alignment_heatmap(for_publication(self.report), save_directory / HEATMAP)
        if self.clock is not None:  # the run's wall time up to now, its files written (the card, next, reads it)
            self.report.wall_seconds = round(self.clock.seconds(), 3)
        self.report.save(save_directory / REPORT_NAME)

    def generate_model_card(self, *args, repo_id: str | None = None, **kwargs) -> ModelCard:
        """The card of this merge; ``repo_id`` (where it is pushed) goes into its loading snippet."""
        return build_model_card(self.report, repo_id=repo_id, reproducible=self.merge_config is not None)

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                    create_pr: bool = False, commit_message: str | None = None,
                    token: str | bool | None = None) -> str:
        """Upload what :meth:`save_pretrained` writes to ``repo_id`` as ONE commit; returns its URL.

        Saved to a temporary directory first (the card's loading snippet names
        ``repo_id``), then sent by :func:`push_folder`. ``token``: else
        ``HF_TOKEN`` or the stored login, as huggingface_hub resolves it.
        """
        with tempfile.TemporaryDirectory(prefix="hf-grasp-push-") as tmp:
            folder = Path(tmp) / "merged"
            self.save_pretrained(folder, model_card_kwargs={"repo_id": repo_id})
            return push_folder(folder, repo_id, private=private, revision=revision, create_pr=create_pr,
                               commit_message=commit_message, token=token)

    def save_pretrained(self, save_directory: str | Path, *, overwrite: bool = False, **kwargs) -> str | None:
        """Write everything to a temporary sibling directory, then rename it into place.

        The directory is checked and locked first
        (:func:`~hf_grasp.runtime.workspace.claim_output`: not a file, not one of the
        merge's inputs, writable, not being written by another run); an existing
        non-empty directory is refused unless ``overwrite``. A failure leaves
        nothing behind; the temporary sibling carries this process's PID, so a
        later save removes one a killed run left.
        """
        from .runtime.workspace import claim_output, staged

        inputs = [("source", s.path) for s in self.report.sources] + [("source", self.model_dir)]
        inputs += [("--base", self.report.base.path)] if self.report.base else []
        inputs += [("--target", self.report.target.name)]
        with claim_output(save_directory, inputs=inputs, overwrite=overwrite) as out:
            with staged(out) as tmp:
                try:
                    super().save_pretrained(tmp, **kwargs)
                except (OSError, SafetensorError) as e:  # a full disk, a quota: safetensors raises its own type
                    raise GraspError(f"output {out}: writing it failed ({first_line(e)}); free space or choose "
                                     "another --output (nothing was left behind)") from e
        return None
