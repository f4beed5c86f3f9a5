"""From the user's references to the checked, resolved inputs of one merge.

The step between the references a user types and a merge that can start:
order the sources, resolve the checkpoint that defines the architecture first,
check every other Hub source on its remote safetensors headers before any of
its weights are downloaded, then resolve the rest (deferred with
``--evict-sources``) and, before any training, check every input's headers
against the architecture and hash its weight files for the report.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .errors import GraspError, SourceError
from .families import family_for, read_config
from .families.base import ModelFamily
from .options import MergeOptions
from .sources import ResolvedSource, SourceRef, check_specs, expected_specs, hash_files, preflight, remote_header, \
    resolve


@dataclass
class MergeInputs:
    """Every checkpoint a merge reads, resolved: the sources in merge order, the explicit init and the base."""

    sources: list[ResolvedSource]
    init_source: ResolvedSource | None = None
    base_source: ResolvedSource | None = None

    @property
    def lead(self) -> ResolvedSource:
        """The checkpoint that defines the architecture (config, preprocessing)."""
        return self.init_source or self.sources[0]

    @property
    def everyone(self) -> list[ResolvedSource]:
        return [s for s in (self.init_source, self.base_source) if s] + self.sources


def ordered(items: list, order: str, seed: int) -> list:
    """``items`` in the order option's sense: given, reverse, random (seeded) or a permutation of indices."""
    if order == "given":
        return items
    if order == "reverse":
        return items[::-1]
    if order == "random":
        out = list(items)
        random.Random(seed).shuffle(out)
        return out
    idx = [int(i) for i in order.split(",")]  # the form is checked where the option is declared
    if sorted(idx) != list(range(len(items))):
        raise GraspError(f"option order={order!r}: must be a permutation of 0..{len(items) - 1}")
    return [items[i] for i in idx]


def resolve_inputs(references: list[str], options: MergeOptions, *, num_labels: int,
                   token: str | bool | None = None) -> MergeInputs:
    """Resolve the sources, ``--init`` and ``--base`` references; Hub sources are checked on their remote
    headers against the architecture before any of their weights are downloaded."""
    o = options
    refs = ordered([SourceRef.parse(s) for s in references], o.order, o.seed)
    init_ref = None if o.init in ("first", "random") else SourceRef.parse(o.init)
    base_ref = SourceRef.parse(o.base) if o.base else None
    lead = init_ref or refs[0]
    lead_source = resolve(lead, allow_pickle=o.allow_pickle, token=token)
    # with --evict-sources the others bring only their configs now, their headers read on the Hub already
    deferred = {id(r): resolve(r, allow_pickle=o.allow_pickle, token=token, defer_weights=True)
                for r in refs if r is not lead} if o.evict_sources else {}
    remote = {}
    for r in (*refs, base_ref):
        if r is not None and r is not lead:
            found = deferred[id(r)].remote_specs if id(r) in deferred else remote_header(r, token=token)
            if found is not None:
                remote[r.text] = found
    _check_hub_headers(remote, lead_source, num_labels, o)
    sources = [lead_source if r is lead else deferred[id(r)] if id(r) in deferred
               else resolve(r, allow_pickle=o.allow_pickle, token=token) for r in refs]
    base = resolve(base_ref, allow_pickle=o.allow_pickle, token=token) if base_ref else None
    return MergeInputs(sources, lead_source if init_ref else None, base)


def _check_hub_headers(remote: dict[str, dict], lead: ResolvedSource, num_labels: int, options: MergeOptions) -> None:
    """Pre-flight of Hub sources on the tensor specs read from their remote safetensors headers."""
    if not remote:
        return
    family = family_for(read_config(lead.path), source=lead.name)
    with torch.device("meta"):  # shapes and dtypes only: no memory, no init
        expected = expected_specs(family.build(lead.path, trust_remote_code=options.trust_remote_code).float())
    for name, found in remote.items():
        check_specs(name, found, expected, num_labels=num_labels,
                    skip_mismatched_heads=options.skip_mismatched_heads)


def check_family(inputs: MergeInputs) -> ModelFamily:
    """The model family every source shares; :class:`SourceError` naming a source of another family."""
    lead = inputs.lead
    family = family_for(read_config(lead.path), source=lead.name)
    for s in inputs.sources:
        other = family_for(read_config(s.path), source=s.name)
        if type(other) is not type(family):
            raise SourceError(f"source {s.name!r} is a {other.name} checkpoint but the target architecture is "
                              f"{family.name}; all sources must share one architecture")
    return family


def preflight_inputs(inputs: MergeInputs, expected: dict, *, num_labels: int,
                     skip_mismatched_heads: bool) -> dict[str, list[str]]:
    """Check every input's headers against ``expected`` and hash its weight files (recorded in the report).

    Returns source name -> head tensors not to read from it.
    """
    skips = {s.name: preflight(s, expected, num_labels=num_labels, skip_mismatched_heads=skip_mismatched_heads)
             for s in inputs.everyone}
    for s in inputs.everyone:
        hash_files(s)
    return skips
