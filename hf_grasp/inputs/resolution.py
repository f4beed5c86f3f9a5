"""From the user's references to the checked, resolved inputs of one merge.

The step between the references a user types and a merge that can start:
order the sources, resolve the checkpoint that defines the architecture first,
check every other Hub source on its remote safetensors headers before any of
its weights are downloaded, then resolve the rest (deferred with
``--evict-sources``) and, before any training, check every input's headers
against the architecture and hash its weight files for the report.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.utils import httpx  # the HTTP library huggingface_hub itself uses

from ..runtime.errors import DataError, GraspError, SourceError, flag
from .families import family_for, read_config
from .families.base import ModelFamily, TensorNaming
from .labels import after_preflight, match_config, match_sources
from ..plan.options import MergeOptions
from .sources import ResolvedSource, SourceRef, check_finite, check_specs, expected_specs, hash_files, preflight, \
    remote_header, resolve


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
    # a permutation of the sources' indices: MergePlan checked it with the options
    return [items[int(i)] for i in order.split(",")]


def resolve_inputs(references: list[str], options: MergeOptions, *, num_labels: int,
                   token: str | bool | None = None, label_names: list[str] | None = None,
                   target: Any = None) -> MergeInputs:
    """Resolve the sources, ``--init`` and ``--base`` references; Hub sources are checked on their remote
    headers against the architecture before any of their weights are downloaded. With ``target`` (the loaded
    target data) the first source's family must classify what it holds (images, texts).

    Every input's labels are matched by name with the target's ``label_names``
    (:mod:`hf_grasp.inputs.labels`), from its config alone: a Hub source's before its
    weights are downloaded, and each resolved input then carries how its head
    lines up (``labels``: as the target, permuted, positional, left out).
    """
    o = options
    refs = ordered([SourceRef.parse(s) for s in references], o.order, o.seed)
    if not o.allow_duplicates:  # before anything is fetched: the same path, the same Hub id and revision
        _refuse_duplicates([(r, _ref_identity(r)) for r in refs])
    init_ref = None if o.init in ("first", "random") else SourceRef.parse(o.init)
    base_ref = SourceRef.parse(o.base) if o.base else None
    lead = init_ref or refs[0]
    lead_source = resolve(lead, allow_pickle=o.allow_pickle, token=token)
    if not o.trust_remote_code:  # before its config builds anything
        check_no_custom_code(lead_source.name, read_config(lead_source.path), lead_source.path)
    if target is not None:  # images for image classifiers, texts for text ones: before any other source is read
        check_modality(family_for(read_config(lead_source.path), source=lead_source.name), target)
    # with --evict-sources the others bring only their configs now, their headers read on the Hub already
    deferred = {id(r): resolve(r, allow_pickle=o.allow_pickle, token=token, defer_weights=True)
                for r in refs if r is not lead} if o.evict_sources else {}
    remote = {}  # Hub reference -> the tensor specs its remote headers give
    for r in (*refs, base_ref):
        if r is not None and r is not lead:
            found = deferred[id(r)].remote_specs if id(r) in deferred else remote_header(r, token=token)
            if found is not None:
                remote[r] = found
    _check_hub_headers(remote, lead_source, num_labels, o,
                       config_of=lambda r: _hub_config(r, token, deferred.get(id(r))))
    for r in remote if not o.trust_remote_code else ():  # on the Hub's config, before any weights come
        if (config := _hub_config(r, token, deferred.get(id(r)))) is not None:
            check_no_custom_code(r.text, config)
    for r in remote if label_names else ():  # labels that differ are refused on the config, before the weights come
        match_config(r.text, _hub_config(r, token, deferred.get(id(r))), label_names,
                     skip_mismatched_heads=o.skip_mismatched_heads)
    sources = [lead_source if r is lead else deferred[id(r)] if id(r) in deferred
               else resolve(r, allow_pickle=o.allow_pickle, token=token) for r in refs]
    base = resolve(base_ref, allow_pickle=o.allow_pickle, token=token) if base_ref else None
    if not o.allow_duplicates:  # the same files under other names (the same bytes: preflight_inputs, once the
        _refuse_duplicates([(s.ref, _resolved_identity(s)) for s in sources])  # architecture is known to be fit)
    inputs = MergeInputs(sources, lead_source if init_ref else None, base)
    for s in inputs.everyone if not o.trust_remote_code else ():
        check_no_custom_code(s.name, read_config(s.path), s.path)
    match_sources(inputs.everyone, label_names, model_dir=lead_source.path, num_labels=num_labels,
                  skip_mismatched_heads=o.skip_mismatched_heads, trust_remote_code=o.trust_remote_code)
    return inputs


def _refuse_duplicates(identities: list[tuple[SourceRef, tuple[str, str] | None]]) -> None:
    """Refuse two sources with the same identity ``(what it is, said as a message says it)``: merging a
    checkpoint with itself counts it twice, rarely what was meant. None: nothing known, never equal."""
    seen: dict[str, SourceRef] = {}
    for ref, identity in identities:
        if identity is None:
            continue
        if identity[0] in seen:
            raise GraspError(f"sources {seen[identity[0]].text!r} and {ref.text!r} are the same checkpoint "
                             f"({identity[1]}), which the merge would count twice: drop one, or pass "
                             f"{flag('allow_duplicates')} if that is meant")
        seen[identity[0]] = ref


def _ref_identity(ref: SourceRef) -> tuple[str, str]:
    """What a reference names before resolution: a directory's real path (symbolic links, ``..`` followed), or
    a Hub id and the revision asked for."""
    if ref.local_path is not None:
        real = os.path.realpath(ref.local_path)
        return f"path:{real}", f"the same directory {real}"
    return f"hub:{ref.repo_id}@{ref.revision or 'main'}", f"the same Hub repo {ref.repo_id} at {ref.revision or 'main'}"


def _resolved_identity(source: ResolvedSource) -> tuple[str, str]:
    """Where a resolved source's files are: a Hub source's snapshot is one per repo and commit."""
    real = os.path.realpath(source.path)
    if source.commit and source.ref.repo_id:
        return f"path:{real}", f"the same repo and commit {source.ref.repo_id}@{source.commit[:12]}"
    return f"path:{real}", f"the same directory {real}"


def _by_sizes(sources: list[ResolvedSource]) -> dict[tuple[int, ...], list[ResolvedSource]]:
    """Sources with weights on disk grouped by the sizes of their weight files: only sources of one group can
    hold the same bytes (a deferred source's weights are not on disk yet: left out)."""
    groups: dict[tuple[int, ...], list[ResolvedSource]] = {}
    for s in sources:
        if s.weight_files:
            groups.setdefault(tuple(sorted(f.stat().st_size for f in s.weight_files)), []).append(s)
    return groups


def _content_identity(source: ResolvedSource, sizes: tuple[int, ...]) -> tuple[str, str]:
    """The sha256 of each weight file, read and hashed once (:func:`preflight_inputs` reuses the hashes, and a file
    of the HF cache is verified against the sha256 the Hub gave it on the way). Called only for sources whose
    file sizes equal another's, so a merge without such sources reads nothing more."""
    digests = sorted(hash_files(source).values())
    return f"sha256:{','.join(digests)}", f"byte-identical weight files, sha256 {digests[0][:12]}..."


def _check_hub_headers(remote: dict[SourceRef, dict], lead: ResolvedSource, num_labels: int, options: MergeOptions,
                       *, config_of: Callable[[SourceRef], dict[str, Any] | None]) -> None:
    """Pre-flight of Hub sources on the tensor specs read from their remote safetensors headers.

    A source whose tensor names (as its library loads them) differ from the
    architecture's is first checked for being another architecture altogether
    (its config, from ``config_of``), which says more than the first tensor it lacks.
    """
    if not remote:
        return
    lead_config = read_config(lead.path)
    family = family_for(lead_config, source=lead.name)
    with torch.device("meta"):  # shapes and dtypes only: no memory, no init
        model = family.build(lead.path, trust_remote_code=options.trust_remote_code).float()
    expected, naming = expected_specs(model), family.naming(model)
    for ref, found in remote.items():
        if _loads_as(found, naming, ref.text) != expected.keys() and (config := config_of(ref)) is not None:
            check_same_architecture(lead.name, lead_config, ref.text, config)
        check_specs(ref.text, found, expected, num_labels=num_labels,
                    skip_mismatched_heads=options.skip_mismatched_heads, naming=naming)


def _loads_as(found: dict, naming: TensorNaming, source: str) -> set[str] | None:
    """The model names a checkpoint holding the tensors ``found`` loads into (None: it cannot be read so)."""
    try:
        return {target for read in naming.reads(found, source=source) for target in read.targets}
    except GraspError:
        return None


def _hub_config(ref: SourceRef, token: str | bool | None, on_disk: ResolvedSource | None) -> dict[str, Any] | None:
    """A Hub source's parsed config.json: the one already on disk, else a download of that small file alone;
    None when there is none to be had (the tensor check then speaks for itself)."""
    try:
        path = on_disk.path if on_disk else Path(hf_hub_download(ref.repo_id, "config.json", revision=ref.revision,
                                                                 token=token)).parent
        return read_config(path)
    except (GraspError, OSError, ValueError, httpx.HTTPError):
        return None


def check_family(inputs: MergeInputs, *, trust_remote_code: bool = False) -> ModelFamily:
    """The model family every input shares; :class:`SourceError` naming an input of another family or
    architecture (which pre-flight would only report as a tensor it lacks), or of other preprocessing where the
    merge needs the same (a text family's tokenizer). ``trust_remote_code``: the family may run the sources' own
    code (their tokenizer's)."""
    lead = inputs.lead
    lead_config = read_config(lead.path)
    family = family_for(lead_config, source=lead.name, trust_remote_code=trust_remote_code)
    for s in inputs.everyone:
        if s is not lead:
            check_same_architecture(lead.name, lead_config, s.name, read_config(s.path))
            family.check_same_inputs(lead.name, lead.path, s.name, s.path)  # a text family: the same tokenizer
    return family


def check_modality(family: ModelFamily, target: Any) -> None:
    """:class:`DataError` when the sources classify images and ``target`` (a loaded
    :class:`~hf_grasp.inputs.data.TargetData`) holds texts, or the other way round."""
    if family.modality != target.modality:
        how = f": pass {flag('text_column', None)} naming its text column" if family.modality == "text" else ""
        raise DataError(f"the sources are {family.modality} classifiers but target {target.name!r} holds "
                        f"{target.modality}s{how}")


def check_no_custom_code(name: str, config: dict[str, Any], folder: Path | None = None) -> None:
    """:class:`SourceError` when ``config`` (or the ``tokenizer_config.json`` in ``folder``) names code of its
    repository (``auto_map``), whatever else it says: beside a ``model_type`` transformers knows, the library
    would quietly build its own class instead of the one the repository meant, and the merged config would name
    code it does not hold."""
    tokenizer = folder / "tokenizer_config.json" if folder is not None else None
    for file, values in (("config.json", config),
                         ("tokenizer_config.json", _json(tokenizer) if tokenizer and tokenizer.is_file() else {})):
        auto_map = values.get("auto_map") if isinstance(values, dict) else None
        if auto_map:
            named = (", ".join(f"{k}: {v}" for k, v in auto_map.items()) if isinstance(auto_map, dict)
                     else str(auto_map))
            raise SourceError(f"source {name!r}: {file} asks for custom code of its repository (auto_map "
                              f"{named[:200]}); read that code, and pass {flag('trust_remote_code')} only if you "
                              "trust it")


def _json(path: Path) -> Any:
    """``path`` parsed, or None when it is not JSON (the library reading it says what is wrong)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def check_same_architecture(lead: str, lead_config: dict[str, Any], name: str, config: dict[str, Any]) -> None:
    """:class:`SourceError` naming both architectures unless source ``name``'s ``config`` is of the one
    ``lead``'s sets: the same family and the same timm ``architecture`` or transformers ``model_type``."""
    same_family = type(family_for(config, source=name)) is type(family_for(lead_config, source=lead))
    if same_family and _architecture_key(config) == _architecture_key(lead_config):
        return
    raise SourceError(f"source {name!r} is a {_architecture(config)} checkpoint but the target architecture, set by "
                      f"{lead!r}, is {_architecture(lead_config)}: all sources must share one architecture, so merge "
                      "only fine-tunes of the same model")


def _architecture_key(config: dict[str, Any]) -> Any:
    """What must agree for two checkpoints' tensors to line up (sizes aside): timm's ``architecture``, else
    transformers' ``model_type``."""
    return config.get("architecture", config.get("model_type"))


def _architecture(config: dict[str, Any]) -> str:
    """A config's architecture as a message names it: ``timm resnet10t``, ``resnet (ResNetForImageClassification)``."""
    if "architecture" in config:
        return f"timm {config['architecture']}"
    classes = config.get("architectures")
    named = f" ({', '.join(map(str, classes))})" if isinstance(classes, list) and classes else ""
    return f"{config.get('model_type')}{named}"


def preflight_inputs(inputs: MergeInputs, expected: dict, *, num_labels: int,
                     skip_mismatched_heads: bool, naming: TensorNaming | None = None,
                     allow_duplicates: bool = False) -> dict[str, list[str]]:
    """Check every input's headers against ``expected`` and hash its weight files (recorded in the report);
    sources with the same weight bytes are refused unless ``allow_duplicates``.
    ``naming``: how the checkpoints name the model's tensors (the family's; model names by default).

    Returns source name -> head tensors not to read from it: of another size,
    or holding other labels (``--skip-mismatched-heads``, :mod:`hf_grasp.inputs.labels`).
    """
    if not allow_duplicates:
        _refuse_duplicates([(s.ref, _content_identity(s, sizes)) for sizes, group in _by_sizes(inputs.sources).items()
                            if len(group) > 1 for s in group])
    skips = {}
    for s in inputs.everyone:
        if {f.name for f in s.weight_files} != s.hashes.keys():  # hashed already by the duplicate check
            hash_files(s)  # first: a corrupt file of the HF cache is refused as such, not as a header it cannot read
        skipped = preflight(s, expected, num_labels=num_labels, skip_mismatched_heads=skip_mismatched_heads,
                            naming=naming)
        check_finite(s)
        s.labels, skips[s.name] = after_preflight(s.labels, skipped)
    return skips
