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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

from accelerate.utils import set_seed
from huggingface_hub import ModelCard, ModelHubMixin, snapshot_download
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import httpx  # the HTTP library huggingface_hub itself uses
from safetensors import SafetensorError
from torch import nn

from .runtime.memory import frozen_heap
from .output.card import HEATMAP, build_model_card, for_publication, has_heatmap
from .inputs.data import TargetData, load_target, preprocess_target
from .runtime.errors import GraspError, SourceError, first_line, flag
from .inputs.families.base import ModelFamily
from .output.heatmap import plot_alignment_heatmap
from .output.publish import _redact, push_folder
from .inputs.labels import relabel_model, relabel_saved
from .runtime.launch import announce_processes
from .plan.config import CONFIG_NAME, REPORT_NAME
from .plan.plan import MergePlan, pinned_reference, withheld
from .inputs.saved_merge import find_merge_config
from .methods import METHODS, find_method
from .engine.context import MergeContext
from .engine.records import StepKind
from .plan.licenses import License, LicenseDecision, decide_license
from .plan.options import Layer, MergeOptions
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
    where = Path(os.path.abspath(Path(output).expanduser()))
    while not os.path.isdir(where):  # never raises (a name over the file system's limit is refused before)
        where = where.parent
    free = shutil.disk_usage(where).free
    if need and free < need * 1.1:  # weights plus config, card, report and heatmap
        raise GraspError(f"output {output}: {free / 2**20:.1f} MiB free on its file system, the merged model needs "
                         f"about {need / 2**20:.1f} MiB; free space or choose another {flag('output', None)}")


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
    plan: MergePlan

    def report(self, resolved) -> MergeReport:
        """Its ``grasp_report.json``, from the files ``resolved`` (the init source) brought."""
        path = Path(resolved.path) / REPORT_NAME
        if not path.is_file():
            raise SourceError(f"{flag('init', None)} {self.reference!r}: it has {CONFIG_NAME} but no "
                              f"{REPORT_NAME}, so its steps "
                              "cannot be carried on; re-save it with hf-grasp")
        return MergeReport.load(path)


def _merged_license(options: MergeOptions, inputs: MergeInputs) -> LicenseDecision:
    """The merged model's license: ``--license``, else the one the model card of every checkpoint its weights
    come from states (an earlier merge continued, a base, each source)."""
    given = License(options.license, options.license_name, options.license_link) if options.license else None
    return decide_license(given, {s.name: s.license for s in inputs.everyone})


def _continued_merge(init: str | None, info, token: str | bool | None,
                     granted: dict[str, Any]) -> _EarlierMerge | None:
    """The earlier merge ``init`` names, when method ``info`` can continue it (the plan's rule); else None
    (``init`` is then only the initial model). Its plan holds none of the permissions it was run with: only the
    caller's own arguments (``granted``) grant them (warned when it had one)."""
    if not init or init in ("first", "random") or not MergePlan.can_continue(info):
        return None
    found = find_merge_config(init, token=token)
    if found is None or not MergePlan.can_continue(info, find_method(found[0].method)):
        return None
    plan, folder = found
    options, warning = withheld(plan.options, str(Path(folder) / CONFIG_NAME), granted)
    if warning:
        log.warning(warning)
    return _EarlierMerge(init, replace(plan, options=options))


def _pinned(plan: MergePlan, inputs: MergeInputs, *, continued: bool) -> MergePlan:
    """``plan`` as ``grasp_config.json`` holds it: every input pinned to the files it resolved to."""
    pins = {s.name: pinned_reference(s.name, s.ref.repo_id, s.commit) for s in inputs.everyone}
    init, base = inputs.init_source, inputs.base_source
    return plan.pinned(pins, init=pins[init.name] if init else None, base=pins[base.name] if base else None,
                       continues=pins[init.name] if continued else None)


class GraspMerger:
    """Merges K same-architecture classifiers onto a target dataset, one source resident at a time.

    Build it with :meth:`from_pretrained`; call :meth:`merge`.
    """

    def __init__(self, plan: MergePlan, inputs: MergeInputs, data: TargetData, *, earlier: MergeReport | None = None,
                 clock: RunClock | None = None):
        """``plan``: what :meth:`MergePlan.build` made (its rules checked); ``inputs``: its sources resolved."""
        self._plan, self.inputs, self.data = plan, inputs, data
        self.options, self.params = plan.merge_options, plan.method_params  # as resolved: what the merge runs with
        # when the run started, for the report's wall time (the CLI sets the process's start)
        self.clock = clock or RunClock.now("the GraspMerger was made")
        self.method = plan.info.load()
        self.model_dir = inputs.lead.path
        self.family: ModelFamily = check_family(inputs, trust_remote_code=self.options.trust_remote_code)
        self.earlier = earlier  # the report of the merge this one continues (--init org/merged)
        self.license = _merged_license(self.options, inputs)
        if self.license.warning:  # now, before the merge's minutes: the user can stop and pass --license
            log.warning(self.license.warning)
        # decoded and preprocessed once here, with the data, rather than every epoch of the merge
        preprocess_target(data, self.family.transform(self.model_dir, max_length=self.options.max_length))

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
        chosen_target = target is not None or recipe is not None  # else a saved merge names them, not the caller
        if isinstance(sources, (str, os.PathLike)):  # one reference: a published merge to rebuild
            rebuilt, folder = find_merge_config(sources, token=token, required=True)
            # what it ran with, but never a permission (remote code, pickle): trust comes only from the caller
            values, warning = withheld(rebuilt.options | rebuilt.params, str(Path(folder) / CONFIG_NAME), options)
            if warning:
                log.warning(warning)
            saved = Layer(values, origin=f"merge {os.fspath(sources)}", lenient=True)
            sources, method = rebuilt.sources, method or rebuilt.method
            if target is None and recipe is None:
                target, recipe = rebuilt.target, rebuilt.recipe
        info = find_method(method or "grasp")
        info.require_extra()  # before any source is resolved or any data loaded
        sources = _references(sources)
        target = os.fspath(target) if target is not None else None
        earlier = _continued_merge(options.get("init") or (saved and saved.values.get("init")), info, token,
                                   options)
        if earlier is not None and target is None and recipe is None:
            target, recipe = earlier.plan.target, earlier.plan.recipe
        dataset, recipe_values = resolve_target(target, recipe, methods=METHODS)
        if not chosen_target:  # a recipe a saved merge names grants nothing either
            recipe_values, warning = withheld(recipe_values, f"recipe {recipe or target}", options)
            if warning:
                log.warning(warning)
        layers = [Layer(recipe_values, origin=f"recipe {recipe or target}", lenient=True)]
        if earlier is not None:
            layers.append(Layer(earlier.plan.inherited(), origin=f"earlier merge {earlier.reference}", lenient=True))
        # every rule combining the options with the method's abilities is the plan's: refused here, before any work
        plan = MergePlan.build(info, [*layers, *([saved] if saved else []), Layer(options)], methods=METHODS,
                               sources=sources, target=target, recipe=recipe)
        opts = plan.merge_options
        state = process_state(opts.cpu)  # the launch: one process, or accelerate launch / torchrun ranks
        announce_processes(state)
        plan.check_launch(state.num_processes)
        # several processes on one machine: the first downloads and caches, the others then read its files
        with state.main_process_first():
            data = load_target(
                dataset, domain=opts.target_domain, domain_column=opts.domain_column,
                image_column=opts.image_column, label_column=opts.label_column,
                validation_fraction=opts.validation_fraction, seed=opts.seed,
                trust_remote_code=opts.trust_remote_code, skip_bad_images=opts.skip_bad_images,
                text_column=opts.text_column, text_pair_column=opts.text_pair_column,
            )
            inputs = resolve_inputs(sources, opts, num_labels=data.num_labels, token=token,
                                    label_names=data.label_names, target=data)
        return cls(plan, inputs, data, earlier=earlier.report(inputs.init_source) if earlier else None, clock=clock)

    @property
    def plan(self) -> MergePlan:
        """This merge's plan, every input pinned (what ``grasp_config.json`` holds; local paths as given)."""
        return _pinned(self._plan, self.inputs, continued=self.earlier is not None)

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

        o, plan = self.options, self.plan
        if resume:
            plan.check_resume()
        checkpoint = (Checkpoint(checkpoint_dir, plan, resume=resume)
                      if checkpoint_dir is not None and plan.keeps_checkpoint else None)
        start = time.time()
        set_seed(o.seed)
        merged = self._build()  # seeded: this is the random init when init=random
        probe = self._build()
        if o.gradient_checkpointing:  # both: the alignment takes gradients of the merged model and of the source
            for model in (merged, probe):
                self.family.enable_gradient_checkpointing(model)
        if o.gradient_accumulation_steps > 1 and (o.initial_epochs or o.finetune_epochs) and any(
                isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm))
                for m in merged.modules()):
            raise GraspError(f"{flag('gradient_accumulation_steps', o.gradient_accumulation_steps)}: "
                             f"{type(merged).__name__} has BatchNorm, which in fine-tuning would normalise each "
                             "slice of a batch on its own and make another model; leave it out (or fine-tune "
                             "no epochs)")
        arch_labels = self.family.num_labels(self.model_dir)
        if arch_labels != self.data.num_labels:
            raise SourceError(
                f"source {self.inputs.lead.name!r}: head has {arch_labels} outputs but target {self.data.name!r} has "
                f"{self.data.num_labels} labels, and this checkpoint sets the architecture, head included "
                f"({flag('skip_mismatched_heads')} applies only to the others): "
                + ("" if self.inputs.init_source else f"put a source with a {self.data.num_labels}-output head "
                   f"first (reorder {flag('sources', None)} or use {flag('order', None)}), or ")
                + f"pass {flag('init', None)} a checkpoint of this architecture with a "
                  f"{self.data.num_labels}-output head, adding "
                f"{flag('skip_mismatched_heads')} for the sources whose heads differ")
        relabel_model(merged, self.data.label_names)  # its head ends in the target's class order, not the lead's
        skips = preflight_inputs(self.inputs, expected_specs(merged), num_labels=self.data.num_labels,
                                 skip_mismatched_heads=o.skip_mismatched_heads, naming=self.family.naming(merged),
                                 allow_duplicates=o.allow_duplicates)
        # the same processes from_pretrained's plan.check_launch judged (accelerate's state is one per process)
        accelerator = make_accelerator(cpu=o.cpu or None, mixed_precision=o.mixed_precision)
        merged.to(accelerator.device)
        probe.to(accelerator.device)
        ctx = MergeContext(
            options=o, params=self.params, family=self.family, model_dir=self.model_dir,
            sources=self.inputs.sources, skips=skips, init_source=self.inputs.init_source,
            base_source=self.inputs.base_source, merged=merged, probe=probe, data=self.data,
            accelerator=accelerator, earlier=self.earlier, checkpoint=checkpoint,
        )
        self.method.fn(ctx)
        if plan.recalibrates_bn:
            if self.method.sequential:  # the shuffling as if after one more step, resumed or not
                ctx.begin_step(ctx.first_step + len(ctx.records))
            recalibrate_batchnorm(merged, self.family.logits, ctx.train_loader, accelerator)
            ctx.record(kind=StepKind.RECALIBRATE_BN, validation=ctx.step_metrics("validation"),
                       test=ctx.step_metrics("test"), seconds=0.0)
        ctx.complete_last_record()
        ctx.check_finite()  # a NaN/inf model is never returned, so never saved
        del ctx.probe, probe
        accelerator.free_memory()
        report = build_report(ctx, self.method, seconds=time.time() - start, license=self.license, clock=self.clock)
        return MergeResult(model=merged.cpu().eval(), family=self.family, model_dir=self.model_dir, report=report,
                           artifact=ctx.artifact, merge_config=plan, clock=self.clock)


class MergeResult(ModelHubMixin):
    """A merged model with its report; saves in the model library's native format.

    ``save_pretrained(dir)`` writes the model (loadable with plain transformers or
    timm), its preprocessing config, ``grasp_report.json``, an alignment heatmap
    and a model card; ``push_to_hub(repo_id)`` uploads the same folder, and
    ``from_pretrained(repo_or_folder)`` loads it back: huggingface_hub's
    ``ModelHubMixin`` calls, with the mixin's arguments.

    ``artifact``: a result that is not one model of the architecture (the
    ensemble's :class:`~hf_grasp.methods.ensemble_model.EnsembleSpec`; once loaded back, its
    :class:`~hf_grasp.methods.ensemble_model.EnsembleClassifier`, which is ``model`` too). When set, it is
    what gets saved (its own ``save_pretrained`` writes its files and README) and
    ``model`` is only the engine's working model, never written.
    """

    def __init__(self, model: nn.Module, family: ModelFamily, model_dir: Path, report: MergeReport,
                 artifact: Any = None, merge_config: MergePlan | None = None, clock: RunClock | None = None):
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

    # --- ModelHubMixin's contract: its save_pretrained, push_to_hub and from_pretrained calls, as the mixin makes them

    #: push_to_hub's keyword arguments that save_pretrained(push_to_hub=True) passes on (the mixin's; ``revision``,
    #: hf-grasp's older name of ``branch``)
    _PUSH_ARGUMENTS = frozenset({"commit_message", "private", "token", "branch", "revision", "create_pr",
                                 "allow_patterns", "ignore_patterns", "delete_patterns"})

    def push_to_hub(self, repo_id: str, *, config: Any = None, commit_message: str | None = None,
                    private: bool | None = None, token: str | bool | None = None, branch: str | None = None,
                    create_pr: bool | None = None, allow_patterns: list[str] | str | None = None,
                    ignore_patterns: list[str] | str | None = None, delete_patterns: list[str] | str | None = None,
                    model_card_kwargs: dict[str, Any] | None = None, revision: str | None = None) -> str:
        """Upload what :meth:`save_pretrained` writes to ``repo_id`` as ONE commit; returns its URL.

        ModelHubMixin's arguments: saved to a temporary directory first (the
        card's loading snippet names ``repo_id``), then sent by
        :func:`~hf_grasp.output.publish.push_folder`. ``branch`` (or
        ``revision``, the same) is created if missing; ``create_pr`` opens a
        pull request instead; ``allow_patterns`` / ``ignore_patterns`` choose
        the files sent and ``delete_patterns`` the remote files deleted in the
        same commit. ``token``: else ``HF_TOKEN`` or the stored login, as
        huggingface_hub resolves it. ``config`` is refused and
        ``model_card_kwargs`` takes only ``repo_id``: the model's
        ``config.json`` is its library's, the card is built from the report.
        """
        with tempfile.TemporaryDirectory(prefix="hf-grasp-push-") as tmp:
            return self.save_pretrained(
                Path(tmp) / "merged", config=config, repo_id=repo_id, push_to_hub=True,
                model_card_kwargs=model_card_kwargs, commit_message=commit_message, private=private, token=token,
                branch=branch, revision=revision, create_pr=create_pr, allow_patterns=allow_patterns,
                ignore_patterns=ignore_patterns, delete_patterns=delete_patterns)

    def save_pretrained(self, save_directory: str | Path, *, overwrite: bool = False, config: Any = None,
                        repo_id: str | None = None, push_to_hub: bool = False,
                        model_card_kwargs: dict[str, Any] | None = None, **push_to_hub_kwargs: Any) -> str | None:
        """Write everything to a temporary sibling directory, then rename it into place.

        The directory is checked and locked first
        (:func:`~hf_grasp.runtime.workspace.claim_output`: not a file, not one of the
        merge's inputs, writable, not being written by another run); an existing
        non-empty directory is refused unless ``overwrite``. A failure leaves
        nothing behind; the temporary sibling carries this process's PID, so a
        later save removes one a killed run left.

        ``push_to_hub`` (ModelHubMixin's call): the folder, once in place and
        still locked, then goes to ``repo_id`` (by default the folder's name,
        as the mixin does) in one commit, byte for byte the local files, its
        card naming ``repo_id``; ``push_to_hub_kwargs`` are
        :meth:`push_to_hub`'s. Returns the commit's URL then, else None. A
        failed push raises :class:`GraspError` and leaves the folder saved.
        """
        from .runtime.workspace import claim_output, staged

        card_kwargs = self._card_kwargs(config, model_card_kwargs)
        unknown = sorted(set(push_to_hub_kwargs) - self._PUSH_ARGUMENTS)
        if unknown:
            raise GraspError(f"save_pretrained: unknown argument {', '.join(unknown)} (with push_to_hub=True it "
                             f"takes push_to_hub's: {', '.join(sorted(self._PUSH_ARGUMENTS))})")
        given = sorted(k for k, v in {"repo_id": repo_id, **push_to_hub_kwargs}.items() if v is not None)
        if given and not push_to_hub:  # ModelHubMixin would ignore them: a push the caller thinks happened
            raise GraspError(f"save_pretrained: {', '.join(given)} only apply with push_to_hub=True")
        if push_to_hub:
            repo_id = repo_id or Path(save_directory).name  # as ModelHubMixin does
            card_kwargs.setdefault("repo_id", repo_id)
            push = self._push_arguments(push_to_hub_kwargs)  # checked before anything is written
        inputs = [("source", s.path) for s in self.report.sources] + [("source", self.model_dir)]
        inputs += [("--base", self.report.base.path)] if self.report.base else []
        inputs += [("--target", self.report.target.name)]
        with claim_output(save_directory, inputs=inputs, overwrite=overwrite) as out:
            with staged(out) as tmp:
                try:
                    super().save_pretrained(tmp, model_card_kwargs=card_kwargs)
                except (OSError, SafetensorError) as e:  # a full disk, a quota: safetensors raises its own type
                    raise GraspError(f"output {out}: writing it failed ({first_line(e)}); free space or choose "
                                     f"another {flag('output', None)} (nothing was left behind)") from e
            if push_to_hub:  # the folder just renamed into place goes up, so the Hub holds exactly the local files
                return push_folder(out, repo_id, **push)
        return None

    @staticmethod
    def _card_kwargs(config: Any, model_card_kwargs: dict[str, Any] | None) -> dict[str, Any]:
        """ModelHubMixin's ``config`` and ``model_card_kwargs``, refused where they cannot apply to a merge."""
        if config is not None:
            raise GraspError("config: a merge's config.json is its model library's own (transformers, timm) and "
                             f"its configuration is {CONFIG_NAME}, both written from the merge itself; pass no config")
        card = dict(model_card_kwargs or {})
        if set(card) - {"repo_id"}:
            raise GraspError(f"model_card_kwargs {', '.join(sorted(set(card) - {'repo_id'}))}: the card is built "
                             "from the merge's report; only repo_id (the repo its loading snippet names) applies")
        return card

    @staticmethod
    def _push_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
        """:func:`~hf_grasp.output.publish.push_folder`'s arguments from :meth:`push_to_hub`'s."""
        push = dict(kwargs)
        branch, revision = push.pop("branch", None), push.pop("revision", None)
        if branch and revision and branch != revision:
            raise GraspError(f"branch {branch!r} and revision {revision!r} name two branches to push to; pass one "
                             "(branch is ModelHubMixin's name, revision hf-grasp's)")
        return {**push, "revision": branch or revision, "create_pr": bool(push.get("create_pr"))}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, force_download: bool = False,
                        token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, revision: str | None = None,
                        **model_kwargs: Any) -> "MergeResult":
        """A merge saved by :meth:`save_pretrained`, from its folder or Hub repo (``org/name[@revision]``).

        A repo comes through the HF cache (``snapshot_download``: its merge
        files first, then the whole commit they came from), so a repo that is
        not a merge is refused before any weights are downloaded. The model is
        rebuilt by its family from the saved folder and its weights streamed in
        as the merge engine loads a source; an ensemble's
        :class:`~hf_grasp.methods.ensemble_model.EnsembleClassifier` is
        ``artifact`` (and ``model``). ``report`` is its ``grasp_report.json``,
        ``merge_config`` its ``grasp_config.json`` (None if it has none).
        ``model_kwargs``: ``trust_remote_code`` only. Anything that is not a
        merge, or cannot be fetched, is a :class:`GraspError`.

        ModelHubMixin's own ``from_pretrained`` is not used: it reads
        ``config.json`` as the mixin's config and hands its keys to
        ``__init__``, but here that file is the model library's.
        """
        return cls._from_pretrained(model_id=os.fspath(pretrained_model_name_or_path), revision=revision,
                                    cache_dir=cache_dir, force_download=force_download,
                                    local_files_only=local_files_only, token=token, **model_kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | os.PathLike | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         trust_remote_code: bool = False, **model_kwargs: Any) -> "MergeResult":
        if model_kwargs:
            raise GraspError(f"MergeResult.from_pretrained: unknown argument {', '.join(sorted(model_kwargs))} (it "
                             "takes revision, token, cache_dir, force_download, local_files_only, trust_remote_code)")
        folder = cls._merge_folder(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                   local_files_only=local_files_only, token=token)
        return cls._load(folder, model_id, trust_remote_code=trust_remote_code, token=token)

    @staticmethod
    def _merge_folder(reference: str, *, revision: str | None, cache_dir: str | os.PathLike | None,
                      force_download: bool, local_files_only: bool, token: str | bool | None) -> Path:
        """The local folder of the merge ``reference`` names: itself, or the HF cache's snapshot of the repo."""
        from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

        from .inputs.sources import SourceRef
        from .methods.ensemble_model import SPEC_FILE

        ref = SourceRef.parse(reference)
        if ref.local_path is not None:
            if not ref.local_path.is_dir():
                raise GraspError(f"merge {reference!r}: directory {ref.local_path} does not exist")
            if revision:
                raise GraspError(f"merge {reference!r}: revision {revision!r} applies to a Hub repo, not a folder")
            return ref.local_path
        if revision and ref.revision and revision != ref.revision:
            raise GraspError(f"merge {reference!r}: it names revision {ref.revision!r}, revision= {revision!r}")

        def fetch(rev: str | None, patterns: list[str] | None) -> Path:
            try:
                return Path(snapshot_download(ref.repo_id, revision=rev, allow_patterns=patterns, token=token,
                                              cache_dir=cache_dir, force_download=force_download,
                                              local_files_only=local_files_only))
            except RepositoryNotFoundError:  # the Hub answers the same for a private or gated repo it hides
                raise GraspError(f"merge {reference!r}: no such model repo on the Hub, or this token cannot see "
                                 "it") from None
            except RevisionNotFoundError:
                raise GraspError(f"merge {reference!r}: revision {rev!r} not found") from None
            except (HfHubHTTPError, HFValidationError, OSError, httpx.HTTPError) as e:
                # OSError: not in the cache offline (LocalEntryNotFoundError); httpx: a dropped connection, unwrapped
                raise GraspError(f"merge {reference!r}: cannot be fetched ({_redact(first_line(e), token)})") from None

        # the small files first: a repo that is not a merge is refused before its weights are downloaded
        head = fetch(revision or ref.revision, [CONFIG_NAME, REPORT_NAME, SPEC_FILE])
        if not (head / REPORT_NAME).is_file():
            raise GraspError(f"{reference!r} holds no {REPORT_NAME}: it is not a merge saved by hf-grasp (a plain "
                             "checkpoint loads with its own library, transformers or timm)")
        # then the rest, of the very commit the report came from
        return fetch(head.name if head.parent.name == "snapshots" else revision or ref.revision, None)

    @classmethod
    def _load(cls, folder: Path, reference: str, *, trust_remote_code: bool,
              token: str | bool | None) -> "MergeResult":
        """The result a merge folder holds; its model rebuilt by its family as the engine builds and loads one."""
        from .inputs.families import FAMILIES, family_for, read_config
        from .inputs.sources import SourceRef, expected_specs, preflight, resolve, stream_into
        from .methods.ensemble_model import SPEC_FILE, EnsembleClassifier

        if not (folder / REPORT_NAME).is_file():
            raise GraspError(f"{reference!r} holds no {REPORT_NAME}: it is not a merge saved by hf-grasp (a plain "
                             "checkpoint loads with its own library, transformers or timm)")
        try:
            report = MergeReport.load(folder / REPORT_NAME)
        except (OSError, ValueError, TypeError, KeyError) as e:  # not JSON, or not a report's fields
            raise GraspError(f"{reference!r}: its {REPORT_NAME} is not a merge report ({first_line(e)})") from None
        merge_config = MergePlan.load(folder / CONFIG_NAME) if (folder / CONFIG_NAME).is_file() else None
        if (folder / SPEC_FILE).is_file():  # an ensemble: a predictor of its members, no weights of its own
            ensemble = EnsembleClassifier.from_pretrained(folder, token=token)
            family = next((f() for f in FAMILIES if f.name == ensemble.family), None)
            if family is None:
                raise GraspError(f"{reference!r}: its {SPEC_FILE} names model family {ensemble.family!r}, which "
                                 "is not registered here")
            return cls(model=ensemble, family=family, model_dir=folder, report=report, artifact=ensemble,
                       merge_config=merge_config)
        family = family_for(read_config(folder), source=reference)
        model = family.build(folder, trust_remote_code=trust_remote_code)
        naming = family.naming(model)
        saved = resolve(SourceRef(reference, local_path=folder))
        # every tensor of the architecture, none missing nor extra, before any is copied in
        preflight(saved, expected_specs(model), num_labels=family.num_labels(folder), naming=naming)
        stream_into(model, saved, naming=naming)
        return cls(model=model.eval(), family=family, model_dir=folder, report=report, merge_config=merge_config)
