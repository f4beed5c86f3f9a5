"""The ensemble baseline as a reloadable predictor (not a merged model).

An ensemble of K classifiers is K models at inference time: its prediction is
the uniform average of the members' softmax probabilities. Nothing is merged,
so there are no weights of its own to save. What is saved instead is what it
takes to rebuild it:

* ``ensemble.json``: the family, the label names and one entry per member (the
  reference it was given, Hub repo id, requested revision, resolved commit
  and the sha256 of its weight files; never a path of the machine that made
  it: a local member is found again by its reference);
* the first member's preprocessing (``preprocessor_config.json`` for
  transformers; timm's data config inside ``ensemble.json`` for timm);
* the model card every merge result gets (:mod:`hf_grasp.output.card`), which says
  plainly that this is a predictor of K models.

:class:`EnsembleSpec` is that description (the ``ensemble`` merge method leaves
one in ``ctx.artifact``); :class:`EnsembleClassifier` loads every member with
its own library (``AutoModelForImageClassification.from_pretrained`` /
``timm.create_model``) and holds all K of them::

    from hf_grasp.methods.ensemble_model import EnsembleClassifier
    clf = EnsembleClassifier.from_pretrained("path/to/ensemble")
    probs = clf(clf.preprocess(images)).probabilities      # a text ensemble: clf(**clf.preprocess(texts))
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from huggingface_hub import snapshot_download
from torch import nn
from transformers.utils import ModelOutput

from ..runtime.errors import GraspError, SourceError, first_line

SPEC_FILE = "ensemble.json"
FORMAT = "hf_grasp.ensemble"
PROCESSOR_FILE = "preprocessor_config.json"  # transformers' image processor
TOKENIZER_FILE = "tokenizer_config.json"  # a text ensemble's tokenizer


@dataclass
class EnsembleSpec:
    """What it takes to rebuild an ensemble: its members' references, family and preprocessing."""

    family: str                          # "transformers" | "timm"
    members: list[dict]                  # ResolvedSource.describe() of each member, in order
    num_labels: int
    labels: list[str] | None = None      # class names by index, when the checkpoint names them
    timm_data_config: dict | None = None  # timm's resolved data config (timm family only)
    processor_dir: Path | None = field(default=None, compare=False)  # where preprocessor_config.json is copied from
    modality: str = "image"               # "text": the members are sequence classifiers, the tokenizer is saved

    @classmethod
    def from_sources(cls, sources: Sequence[Any], family: Any, model_dir: Path,
                     labels: list[str] | None = None) -> "EnsembleSpec":
        """Spec of an ensemble of resolved ``sources`` whose preprocessing comes from ``model_dir``.

        ``labels``: the target's class names (else ``model_dir``'s). A member
        holding them in another order records ``label_rows``, the order its
        outputs are put in at inference (:mod:`hf_grasp.inputs.labels`).
        """
        from ..inputs.families import read_config

        config = read_config(model_dir)
        timm_data = None
        if family.name == "timm":
            from timm.data import resolve_data_config

            from ..inputs.families.timm import _parse

            timm_data = _jsonable(resolve_data_config(pretrained_cfg=_parse(model_dir)[0]))
        return cls(family=family.name, members=[_member(s) for s in sources],
                   num_labels=family.num_labels(model_dir), labels=labels or _labels(config),
                   timm_data_config=timm_data, processor_dir=Path(model_dir), modality=family.modality)

    # --- saving and loading the description

    def to_dict(self) -> dict:
        """The JSON ``ensemble.json`` holds: the members by reference and commit, without their local copies' paths
        (a Hub member's is a cache snapshot of this machine; a local one is its reference)."""
        d = asdict(self)
        d.pop("processor_dir")
        d["members"] = [{k: v for k, v in member.items() if k != "path"} for member in d["members"]]
        return {"format": FORMAT, "version": 1, "combine": "mean of the members' softmax probabilities", **d}

    def save_pretrained(self, save_directory: str | Path) -> None:
        """Write ``ensemble.json`` and the first member's preprocessing; no model weights.

        (The README is the merge result's model card, ``hf_grasp.output.card``, written beside them.)
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / SPEC_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        if self.modality == "text" and self.processor_dir is not None:
            from ..inputs.families.text import load_tokenizer

            load_tokenizer(self.processor_dir).save_pretrained(out)
        elif self.family == "transformers" and self.processor_dir is not None:
            processor = self.processor_dir / PROCESSOR_FILE
            if processor.is_file():
                shutil.copyfile(processor, out / PROCESSOR_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> "EnsembleSpec":
        """Read ``<directory>/ensemble.json``."""
        path = Path(directory) / SPEC_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GraspError(f"{path}: not found (not an hf_grasp ensemble directory)") from None
        except (OSError, ValueError) as e:
            raise GraspError(f"{path}: not valid JSON ({e})") from None
        if raw.get("format") != FORMAT:
            raise GraspError(f"{path}: format is {raw.get('format')!r}, expected {FORMAT!r}")
        modality = raw.get("modality", "image")
        processor = Path(directory) / (TOKENIZER_FILE if modality == "text" else PROCESSOR_FILE)
        return cls(family=raw["family"], members=raw["members"], num_labels=int(raw["num_labels"]),
                   labels=raw.get("labels"), timm_data_config=raw.get("timm_data_config"),
                   processor_dir=Path(directory) if processor.is_file() else None, modality=modality)


@dataclass
class EnsembleOutput(ModelOutput):
    """``probabilities``: the members' averaged softmax; ``logits``: their log (argmax is the same)."""

    logits: torch.Tensor | None = None
    probabilities: torch.Tensor | None = None


class EnsembleClassifier(nn.Module):
    """K classifiers whose softmax probabilities are averaged (an inference-time ensemble).

    It holds all K member models. Build it with :meth:`from_pretrained` on a
    folder written by :meth:`save_pretrained` (or by ``hf-grasp merge --method
    ensemble``).
    """

    def __init__(self, members: Sequence[nn.Module], family: str, *, spec: EnsembleSpec | None = None,
                 transform: Callable[[list], torch.Tensor] | None = None):
        super().__init__()
        if not members:
            raise GraspError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.family = family
        self.spec = spec
        # per member: its outputs' order in the target's classes, when it holds them in another order
        self.label_rows = [m.get("label_rows") for m in spec.members] if spec else [None] * len(members)
        self._transform = transform

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, *, revision: str | None = None,
                        token: str | bool | None = None) -> "EnsembleClassifier":
        """Load the ensemble described in ``path_or_repo`` (a folder, or a Hub repo holding it)."""
        directory = Path(path_or_repo)
        if not directory.is_dir():
            directory = Path(snapshot_download(str(path_or_repo), revision=revision, token=token,
                                               allow_patterns=["*.json", "*.md"]))
        spec = EnsembleSpec.load(directory)
        members = [load_member(m, spec.family, token=token, modality=spec.modality) for m in spec.members]
        return cls(members, spec.family, spec=spec, transform=_transform(spec))

    def save_pretrained(self, save_directory: str | Path) -> None:
        """Write ``ensemble.json`` and the preprocessing (the members are referenced, not copied)."""
        if self.spec is None:
            raise GraspError("this ensemble was built from modules, not references: it has nothing to save")
        self.spec.save_pretrained(save_directory)

    def member_logits(self, member: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.family == "transformers":
            return member(**inputs).logits
        return member(inputs["pixel_values"])

    def forward(self, pixel_values: torch.Tensor | None = None, **text_inputs: torch.Tensor) -> EnsembleOutput:
        """The averaged probabilities for ``pixel_values`` (images) or a tokenizer's ``input_ids``,
        ``attention_mask``, ... (texts: ``clf(**clf.preprocess(texts))``)."""
        inputs = {"pixel_values": pixel_values} if pixel_values is not None else text_inputs
        total = None
        for member, rows in zip(self.members, self.label_rows):
            logits = self.member_logits(member, inputs)
            p = (logits[:, rows] if rows else logits).float().softmax(dim=-1)
            total = p if total is None else total + p
        probs = total / len(self.members)
        return EnsembleOutput(logits=probs.clamp_min(torch.finfo(probs.dtype).tiny).log(), probabilities=probs)

    def preprocess(self, images: list) -> Any:
        """``pixel_values`` for a list of PIL images, with the first member's preprocessing; for a text ensemble,
        the tokenizer's padded tensors for a list of texts."""
        if self._transform is None:
            raise GraspError("this ensemble has no preprocessing (it was not loaded from a folder)")
        return self._transform(images)


def load_member(member: dict, family: str, *, token: str | bool | None = None,
                modality: str = "image") -> nn.Module:
    """One member, in eval mode and fp32, loaded by its own library from its Hub commit or local path."""
    repo, rev = member.get("repo_id"), member.get("commit") or member.get("revision")
    # a local member by its reference, as given; older ensemble.json files recorded its path
    path = member.get("path") or (None if repo else _local_path(member.get("ref")))
    if repo is None and (path is None or not Path(path).is_dir()):
        raise SourceError(f"ensemble member {member.get('ref')!r}: directory {path or member.get('ref')} does not "
                          "exist (an ensemble refers to its members, it does not contain them)")
    try:
        if family == "transformers":
            from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification

            auto = AutoModelForSequenceClassification if modality == "text" else AutoModelForImageClassification
            model = (auto.from_pretrained(repo, revision=rev, token=token, dtype=torch.float32)
                     if repo else auto.from_pretrained(path, dtype=torch.float32))
        elif family == "timm":
            import timm

            name = f"hf-hub:{repo}@{rev}" if repo and rev else f"hf-hub:{repo}" if repo else f"local-dir:{path}"
            model = timm.create_model(name, pretrained=True).float()
        else:
            raise GraspError(f"ensemble member {member.get('ref')!r}: unknown model family {family!r}")
    except (OSError, ValueError, RuntimeError) as e:
        raise SourceError(f"ensemble member {member.get('ref')!r}: cannot be loaded "
                          f"({first_line(e)})") from e
    return model.eval()


# --- helpers


def _transform(spec: EnsembleSpec) -> Callable[[list], Any] | None:
    if spec.modality == "text" and spec.processor_dir is not None:
        from ..inputs.families.text import load_tokenizer

        tokenizer = load_tokenizer(spec.processor_dir)
        return lambda texts: dict(tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt"))
    if spec.family == "timm" and spec.timm_data_config:
        from timm.data import create_transform

        cfg = dict(spec.timm_data_config)
        cfg["input_size"] = tuple(cfg["input_size"])
        tf = create_transform(**cfg, is_training=False)
        mode = {1: "L", 3: "RGB"}.get(cfg["input_size"][0], "RGB")
        return lambda images: torch.stack([tf(im if im.mode == mode else im.convert(mode)) for im in images])
    if spec.family == "transformers" and spec.processor_dir is not None:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(spec.processor_dir)
        return lambda images: processor(images=[im.convert("RGB") if im.mode != "RGB" else im for im in images],
                                        return_tensors="pt")["pixel_values"]
    return None


def _local_path(ref: str | None) -> Path | None:
    """The folder a local member's reference names (None for a Hub reference)."""
    from ..inputs.sources import SourceRef

    return SourceRef.parse(ref).local_path if ref else None


def _member(source: Any) -> dict:
    """A member's entry: its description, and ``label_rows`` when its head's rows were permuted into the
    target's order as it streamed (its own checkpoint, loaded at inference, still has them in its order)."""
    labels = getattr(source, "labels", None)
    rows = getattr(labels, "rows", None)
    return {**source.describe(), **({"label_rows": list(rows)} if rows is not None else {})}


def _labels(config: dict) -> list[str] | None:
    if isinstance(config.get("id2label"), dict):
        id2label = config["id2label"]
        return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(len(id2label))]
    names = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
    return [str(n) for n in names] if names else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


__all__ = ["EnsembleClassifier", "EnsembleOutput", "EnsembleSpec", "load_member"]
