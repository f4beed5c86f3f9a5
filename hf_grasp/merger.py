"""The public Python API: :class:`GraspMerger` and :class:`MergeResult`."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from accelerate.utils import set_seed
from huggingface_hub import ModelCard, ModelHubMixin
from torch import nn

from . import report as report_mod
from .card import build_model_card
from .data import TargetData, load_target
from .errors import GraspError, SourceError
from .families import family_for, read_config
from .families.base import ModelFamily
from .methods import MergeContext, get_method
from .options import MergeOptions
from .recipes import resolve_target
from .sources import (ResolvedSource, SourceRef, check_specs, expected_specs, hash_files, preflight, remote_header,
                      resolve)
from ._memory import frozen_heap
from .training import make_accelerator, recalibrate_batchnorm


def _ordered(items: list, order: str, seed: int) -> list:
    if order == "given":
        return items
    if order == "reverse":
        return items[::-1]
    if order == "random":
        out = list(items)
        random.Random(seed).shuffle(out)
        return out
    try:
        idx = [int(i) for i in order.split(",")]
    except ValueError:
        raise GraspError(f"option order={order!r}: use given, reverse, random or a comma list of indices") from None
    if sorted(idx) != list(range(len(items))):
        raise GraspError(f"option order={order!r}: must be a permutation of 0..{len(items) - 1}")
    return [items[i] for i in idx]


def _check_hub_headers(remote: dict[str, dict], lead: ResolvedSource, num_labels: int,
                       options: MergeOptions) -> None:
    """Pre-flight of Hub sources on the tensor specs read from their remote safetensors headers."""
    if not remote:
        return
    family = family_for(read_config(lead.path), source=lead.name)
    with torch.device("meta"):  # shapes and dtypes only: no memory, no init
        expected = expected_specs(family.build(lead.path, trust_remote_code=options.trust_remote_code).float())
    for name, found in remote.items():
        check_specs(name, found, expected, num_labels=num_labels,
                    skip_mismatched_heads=options.skip_mismatched_heads)


class GraspMerger:
    """Merges K same-architecture classifiers onto a target dataset, one source resident at a time.

    Build it with :meth:`from_pretrained`; call :meth:`merge`.
    """

    def __init__(self, sources: list[ResolvedSource], data: TargetData, options: MergeOptions, *,
                 method: str = "grasp", init_source: ResolvedSource | None = None,
                 base_source: ResolvedSource | None = None):
        self.sources, self.data, self.options = sources, data, options
        self.method = get_method(method)
        if self.method.needs_base and base_source is None:
            raise GraspError(f"method {method!r} works on task vectors: pass --base with the sources' shared "
                             "starting point")
        self.init_source, self.base_source = init_source, base_source
        self.model_dir = (init_source or sources[0]).path
        self.family: ModelFamily = family_for(read_config(self.model_dir), source=(init_source or sources[0]).name)
        for s in sources:
            fam = family_for(read_config(s.path), source=s.name)
            if type(fam) is not type(self.family):
                raise SourceError(f"source {s.name!r} is a {fam.name} checkpoint but the target architecture "
                                  f"is {self.family.name}; all sources must share one architecture")

    @classmethod
    def from_pretrained(
        cls,
        sources: Sequence[str],
        *,
        target: str | None = None,
        recipe: str | None = None,
        method: str = "grasp",
        token: str | bool | None = None,
        **options: Any,
    ) -> "GraspMerger":
        """Load the ``target`` dataset and resolve ``sources``.

        Hub sources are checked against the architecture on their remote
        safetensors headers before any of their weights are downloaded.

        Args:
            sources: references — ``org/name``, ``org/name@revision``, ``hf-hub:org/name``
                or a local directory — of checkpoints sharing one architecture.
                Resolved through the HF cache (HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN apply).
            target: a recipe name (``digits-eras``, ``yearbook``, ``clear10``, ``clear100``),
                a dataset id, or a local path that ``datasets`` reads (``save_to_disk``
                output, imagefolder, ...).
            recipe: a recipe name or YAML file (``recipes/``) whose options fill those
                you leave unset; with a ``target`` path, the recipe's settings apply to it.
            method: a registered merge method (``grasp``).
            token: Hub token, if not taken from the environment.
            **options: any field of :class:`~hf_grasp.options.MergeOptions`
                (``tau``, ``granularity``, ``align_batches``, ``batch_size``,
                ``initial_epochs``, ``finetune_epochs``, ``lr``, ``weight_decay``,
                ``schedule``, ``init``, ``order``, ``seed``, ``buffers``, ``target_domain``, ...).
                A recipe's values fill options you leave unset.
        """
        dataset, recipe_layer = resolve_target(target, recipe)
        opts = MergeOptions.build(recipe_layer, options)
        if len(sources) < 1:
            raise GraspError("no sources given")
        data = load_target(
            dataset, domain=opts.target_domain, domain_column=opts.domain_column,
            image_column=opts.image_column, label_column=opts.label_column,
            validation_fraction=opts.validation_fraction, seed=opts.seed,
            trust_remote_code=opts.trust_remote_code,
        )
        refs = _ordered([SourceRef.parse(s) for s in sources], opts.order, opts.seed)
        init_ref = None if opts.init in ("first", "random") else SourceRef.parse(opts.init)
        if opts.init == "first" and len(refs) < 2:
            raise GraspError("GRASP with init=first needs at least 2 sources")
        base_ref = SourceRef.parse(opts.base) if opts.base else None
        if opts.evict_sources and get_method(method).reads_across_sources:
            raise GraspError(f"--evict-sources: method {method!r} reads one tensor of every source at a time, so all "
                             "sources must be on disk together")
        # the checkpoint that defines the architecture comes first; every other Hub source's headers are
        # checked against it before any of their weights are downloaded
        lead = init_ref or refs[0]
        lead_source = resolve(lead, allow_pickle=opts.allow_pickle, token=token)
        # with --evict-sources the others bring only their configs now, their headers read on the Hub already
        deferred = {id(r): resolve(r, allow_pickle=opts.allow_pickle, token=token, defer_weights=True)
                    for r in refs if r is not lead} if opts.evict_sources else {}
        remote = {}
        for r in (*refs, base_ref):
            if r is not None and r is not lead:
                found = deferred[id(r)].remote_specs if id(r) in deferred else remote_header(r, token=token)
                if found is not None:
                    remote[r.text] = found
        _check_hub_headers(remote, lead_source, data.num_labels, opts)
        resolved = [lead_source if r is lead else deferred[id(r)] if id(r) in deferred
                    else resolve(r, allow_pickle=opts.allow_pickle, token=token) for r in refs]
        init_source = lead_source if init_ref else None
        base_source = resolve(base_ref, allow_pickle=opts.allow_pickle, token=token) if base_ref else None
        return cls(resolved, data, opts, method=method, init_source=init_source, base_source=base_source)

    def _build(self) -> nn.Module:
        return self.family.build(self.model_dir, trust_remote_code=self.options.trust_remote_code).float()

    @frozen_heap()  # the merge collects garbage between phases: skip what existed before it
    def merge(self) -> "MergeResult":
        """Run the merge; returns the merged model with its report."""
        o = self.options
        start = time.time()
        set_seed(o.seed)
        merged = self._build()  # seeded: this is the random init when init=random
        probe = self._build()
        expected = expected_specs(merged)
        arch_labels = self.family.num_labels(self.model_dir)
        if arch_labels != self.data.num_labels:
            raise SourceError(
                f"source {(self.init_source or self.sources[0]).name!r}: head has {arch_labels} outputs but target "
                f"{self.data.name!r} has {self.data.num_labels} labels"
            )
        everyone = [s for s in (self.init_source, self.base_source) if s] + self.sources
        skips = {s.name: preflight(s, expected, num_labels=self.data.num_labels,
                                   skip_mismatched_heads=o.skip_mismatched_heads) for s in everyone}
        for s in everyone:
            hash_files(s)
        accelerator = make_accelerator(cpu=o.cpu or None, mixed_precision=o.mixed_precision)
        merged.to(accelerator.device)
        probe.to(accelerator.device)
        ctx = MergeContext(
            options=o, family=self.family, model_dir=self.model_dir, sources=self.sources, skips=skips,
            init_source=self.init_source, base_source=self.base_source, merged=merged, probe=probe,
            data=self.data, accelerator=accelerator,
        )
        self.method.fn(ctx)
        if o.recalibrate_bn and self.method.parameter_space:
            recalibrate_batchnorm(merged, self.family.logits, ctx.train_loader, accelerator)
            ctx.record(step="recalibrate-bn", source=None, validation=ctx.evaluate(split="validation"),
                       test=ctx.evaluate(split="test"), seconds=0.0)
        del ctx.probe, probe
        accelerator.free_memory()
        rep = self._report(ctx, time.time() - start)
        return MergeResult(model=merged.cpu().eval(), family=self.family, model_dir=self.model_dir, report=rep,
                           artifact=ctx.artifact)

    def _report(self, ctx: MergeContext, seconds: float) -> dict:
        steps = [{"step": rec["step"], "ref": rec["source"], "val_accuracy": rec["validation"]["accuracy"],
                  "test_accuracy": rec["test"]["accuracy"]} for rec in ctx.records]
        sources = []
        # every input is listed, in merge order, whether or not the method recorded a step for it
        for src in ([self.init_source] if self.init_source else []) + self.sources:
            rec = next((r for r in ctx.records if r["source"] == src.name), {})
            transferred = rec.get("transferred")
            sources.append({
                **src.describe(),
                "role": "init" if rec.get("step") == "init" else "source",
                "scores": rec.get("scores"),
                "transferred": transferred,
                "fraction_transferred": (sum(transferred.values()) / len(transferred)) if transferred else None,
                "skipped": rec.get("skipped", []),
                "metrics_alone": rec.get("source_alone"),
                "metrics_after": {"validation": rec["validation"], "test": rec["test"]} if rec else None,
                "history": rec.get("history"),
                "seconds": rec.get("seconds"),
            })
        last = ctx.records[-1]
        param_bytes = sum(p.numel() * p.element_size() for p in ctx.merged.parameters())
        # what the saved result holds at inference: one model, or every member of an ensemble
        result_models = len(getattr(ctx.artifact, "members", None) or [None])
        return {
            "method": self.method.name,
            "method_pretty_name": self.method.pretty_name,
            "base": self.base_source.describe() if self.base_source else None,
            "config": self.options.to_dict(),
            "target": {"name": self.data.name, "domain": self.data.domain, "num_labels": self.data.num_labels,
                       "sizes": {k: len(v) for k, v in self.data.splits.items()}, "notes": self.data.notes},
            "family": self.family.name,
            "architecture": type(ctx.merged).__name__,
            "sources": sources,
            "steps": steps,
            "final": {"validation": last["validation"], "test": last["test"]},
            "epochs_trained": sum(len(rec.get("history") or []) for rec in ctx.records),
            "notes": [rec["note"] for rec in ctx.records if rec.get("note")],
            "baselines": {s["ref"]: {"test": s["metrics_alone"]} for s in sources if s.get("metrics_alone")},
            "timings": {"total_seconds": seconds},
            "memory": {"peak_rss_bytes": report_mod.peak_rss_bytes(), "param_bytes": param_bytes,
                       "result_param_bytes": result_models * param_bytes},
        }


class MergeResult(ModelHubMixin):
    """A merged model with its report; saves in the model library's native format.

    ``save_pretrained(dir)`` writes the model (loadable with plain transformers or
    timm), its preprocessing config, ``grasp_report.json``, an alignment heatmap
    and a model card; ``push_to_hub(repo_id)`` uploads the same folder.

    ``artifact``: a result that is not one model of the architecture (the
    ensemble's :class:`~hf_grasp.ensemble_model.EnsembleSpec`). When set, it is
    what gets saved (its own ``save_pretrained`` writes its files and README) and
    ``model`` is only the engine's working model, never written.
    """

    def __init__(self, model: nn.Module, family: ModelFamily, model_dir: Path, report: dict, artifact: Any = None):
        self.model, self.family, self.model_dir, self.report = model, family, Path(model_dir), report
        self.artifact = artifact
        # ModelHubMixin turns JSON-able __init__ arguments (the report, a dataclass artifact) into a
        # config.json it writes when _save_pretrained did not: never wanted here.
        self._hub_mixin_config = None

    def _save_pretrained(self, save_directory: Path) -> None:
        if self.artifact is not None:
            self.artifact.save_pretrained(save_directory, report=self.report)
        else:
            self.family.save(self.model, save_directory, like=self.model_dir)
        report_mod.write_json(self.report, save_directory / "grasp_report.json")
        if any(s.get("scores") for s in self.report["sources"]):
            report_mod.plot_alignment_heatmap(self.report, save_directory / "alignment.png")

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        base = [s["repo_id"] for s in self.report["sources"] if s.get("repo_id")]
        return build_model_card(self.report, base_models=base, library_name=self.family.name,
                                dataset=self.report["target"]["name"])

    def save_pretrained(self, save_directory: str | Path, *, overwrite: bool = False, **kwargs) -> str | None:
        """Write everything to a temporary sibling directory, then rename it into place.

        A failure leaves nothing behind; an existing non-empty directory is
        refused unless ``overwrite``.
        """
        out = Path(save_directory)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise GraspError(f"output {out} exists and is not empty; pass --overwrite to replace it")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            super().save_pretrained(tmp, **kwargs)
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                out.rename(old)
                tmp.rename(out)
                shutil.rmtree(old)
            else:
                tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return None
