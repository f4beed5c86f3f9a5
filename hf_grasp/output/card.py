"""The result's model card: what was merged, by which method, how well, and how to load it.

Rendered with ``huggingface_hub.ModelCard.from_template`` from :data:`TEMPLATE`
and the run's :class:`~hf_grasp.output.report.MergeReport`, for every method (the
ensemble included), so the card, the JSON report and the terminal summary all
tell the same story. The method section is the method's own: its name, paper and
description, then the run's settings, each stated by the sentence its declaration
gives (``option(card=...)`` in :mod:`hf_grasp.plan.options` and the methods'
parameters in :mod:`hf_grasp.methods.catalog`): the method's parameters, then
the shared options (those declared ``card_skip`` are left out, the full
configuration table lists every value). The YAML header
(``ModelCardData``) carries ``base_model`` (Hub sources only) with
``base_model_relation: merge``, the library, tags, the license (given, or the one
every source's card states; ``license_name``/``license_link`` for ``other``),
the target's Hub dataset and the test accuracy as an eval result
(``model-index``). The body shows the alignment heatmap (``alignment.png``,
saved beside it), how to load the model without hf_grasp, how to reproduce or
extend the merge with it, and where its license came from.

The card is meant to be published: it names local folders (sources, base,
target) by their last path parts, never by the absolute path of the machine
that made the merge (``grasp_report.json`` and ``grasp_config.json`` keep them as the user gave them, and
no path the tool derived, such as a cache snapshot).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path, PurePath
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..methods import METHODS
from ..plan.licenses import License
from ..plan.config import CONFIG_NAME
from ..plan.options import MergeOptions
from .report import MergeReport
from .summary import summary_markdown

GRASP_PAPER_TITLE = ("GRASP: Gradient-Aligned Sequential Parameter Transfer for Memory-Efficient Multi-Source "
                     "Learning")
GRASP_ARXIV = "2606.14900"
GRASP_CODE_URL = "https://github.com/Sekeh-Lab/grasp-multisource-transfer"
GRASP_CITATION = f"""@misc{{grasp2026,
  title         = {{{GRASP_PAPER_TITLE}}},
  year          = {{2026}},
  eprint        = {{{GRASP_ARXIV}}},
  archivePrefix = {{arXiv}},
  url           = {{https://arxiv.org/abs/{GRASP_ARXIV}}}
}}"""

TAGS = ["hf-grasp", "merge", "model-merging"]
#: the alignment heatmap, a file of the result's folder (and repo) that the card shows
HEATMAP = "alignment.png"
#: what the snippets load when the card does not know the repo the result goes to
FOLDER = "path/to/this/folder"

#: Jinja template (``ModelCard.from_template``); ``card_data`` is the YAML header.
TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ intro }}

## What was merged

| # | Source | Revision | Commit | Role | License | Weights (sha256) |
| --- | --- | --- | --- | --- | --- | --- |
{% for s in source_rows -%}
| {{ s.index }} | {{ s.ref }} | {{ s.revision }} | {{ s.commit }} | {{ s.role }} | {{ s.license }} | {{ s.files }} |
{% endfor %}
{% if base_row %}Task vectors are taken relative to the base `{{ base_row }}`.
{% endif %}
Target data: **{{ target_name }}**{% if target_domain %} (domain `{{ target_domain }}`){% endif %}{% if target_sizes %}; {{ target_sizes }}{% endif %}.
{% for note in target_notes %}
- {{ note }}
{%- endfor %}

## How it was merged

{{ method_link }} {{ method_description }}

{{ training }}
{% if open_points %}
{{ open_points }}
{% endif %}
{% for title, lines in settings %}
**{{ title }}**

{% for line in lines -%}
- {{ line }}
{% endfor %}
{% endfor %}
{% for note in notes -%}
> {{ note }}

{% endfor %}
<details>
<summary>Full configuration</summary>

| Option | Value |
| --- | --- |
{% for key, value in config_rows -%}
| `{{ key }}` | {{ value }} |
{% endfor %}
</details>

## Results

{{ summary }}
{% if heatmap %}
![Alignment of each source with the merged model, per tensor]({{ heatmap }})

{{ heatmap_caption }}
{% endif %}
## How to use

{{ usage_intro }}

```python
{{ usage }}
```

{% if reproduce_intro %}## Reproduce or extend this merge

{{ reproduce_intro }}

```python
from hf_grasp import GraspMerger

result = GraspMerger.from_pretrained("{{ repo }}").merge()
```

```bash
hf-grasp merge --from {{ repo }} --output out/
{% if extend %}# one more source: a single alignment + transfer + fine-tune step on top of this merge
hf-grasp merge --init {{ repo }} --sources NEW_SOURCE --output out/
{% endif %}```
{% for line in reproduce_notes %}
{{ line }}
{% endfor %}
{% endif %}
## License

{{ license_text }}

{% if citation %}
## Citation

```bibtex
{{ citation }}
```
{% endif %}
Made with hf-grasp {{ version }}{% if code_url %}; the GRASP authors' reference code is at {{ code_url }}{% endif %}.
"""

_USAGE = {
    "transformers": """import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained("{repo}")
model = AutoModelForImageClassification.from_pretrained("{repo}").eval()
inputs = processor(images=Image.open("image.jpg").convert("RGB"), return_tensors="pt")
with torch.no_grad():
    label = model(**inputs).logits.argmax(-1).item()
print(model.config.id2label[label])""",
    "transformers-text": """from transformers import pipeline

classify = pipeline("text-classification", model="{repo}")
print(classify("A text to classify."))""",
    "timm": """import timm
import torch
from PIL import Image

model = timm.create_model("{timm_ref}", pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)
with torch.no_grad():
    label = model(transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)).argmax(-1).item()
print(label)
# transformers loads it too (TimmWrapper): AutoModelForImageClassification.from_pretrained("{repo}")""",
    "ensemble": """from PIL import Image
from hf_grasp.methods.ensemble_model import EnsembleClassifier

clf = EnsembleClassifier.from_pretrained("{repo}")    # loads all {k} member models
out = clf(clf.preprocess([Image.open("image.jpg").convert("RGB")]))
out.probabilities                                    # (1, {num_labels}) averaged probabilities""",
    "ensemble-text": """from hf_grasp.methods.ensemble_model import EnsembleClassifier

clf = EnsembleClassifier.from_pretrained("{repo}")    # loads all {k} member models
out = clf(**clf.preprocess(["A text to classify."]))
out.probabilities                                    # (1, {num_labels}) averaged probabilities""",
}


def build_model_card(report: MergeReport, *, dataset: str | None = None, repo_id: str | None = None,
                     reproducible: bool = True) -> ModelCard:
    """Build the card of a merge result from its report.

    Only Hub sources (a repo id and a resolved commit) end up in ``base_model``.
    ``dataset`` is the Hub id of the target dataset when it has one (by default
    the target's name when it names a Hub dataset: not a built-in, not a local
    path). ``repo_id`` (where the result will be pushed) fills in the loading
    and reproducing snippets; without it they name the folder. ``reproducible``:
    the folder holds the merge configuration
    (:data:`~hf_grasp.plan.config.CONFIG_NAME`); without it the card has no
    "Reproduce or extend" section. Save with ``card.save(dir / "README.md")``.
    """
    from hf_grasp import __version__

    if dataset is None:
        dataset = hub_dataset_id(report.target.name)
    report = for_publication(report)
    method, target = report.method, report.target
    test_accuracy = report.test_accuracy()
    is_ensemble = not method.parameter_space  # a predictor of K models (the ensemble), not one checkpoint
    model_name = repo_id or f"{method.name}-{report.architecture}-{target.name.replace('/', '-')}"
    eval_results = None
    if isinstance(test_accuracy, (int, float)):
        domain = f" (domain {target.domain})" if target.domain is not None else ""
        eval_results = [EvalResult(task_type=_task(report), dataset_type=dataset or target.name,
                                   dataset_name=f"{target.name}{domain}", dataset_split="test",
                                   metric_type="accuracy", metric_value=float(test_accuracy))]
    base_model = list(dict.fromkeys(s.repo_id for s in report.sources if s.is_hub)) or None
    card_data = ModelCardData(
        base_model=base_model,
        # the Hub's model tree then lists this repo as a merge of its base models
        base_model_relation="merge" if base_model else None,
        datasets=[dataset] if dataset else None,
        library_name="hf_grasp" if is_ensemble else report.family,
        pipeline_tag=_task(report),
        # the Hub's inference widget: an example from the target itself
        widget=[{"text": target.example}] if target.modality == "text" and target.example else None,
        tags=TAGS + [method.name] + (["ensemble"] if is_ensemble else []),
        metrics=["accuracy"],
        model_name=model_name,
        eval_results=eval_results,
        # the Hub's license fields: an id of its list, and for "other" the license's name and a link to its text
        license=report.license.id if report.license else None,
        license_name=report.license.name if report.license else None,
        license_link=report.license.link if report.license else None,
    )
    repo = repo_id or FOLDER
    card = ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        title=model_name,
        intro=_intro(report, is_ensemble),
        source_rows=_source_rows(report),
        base_row=report.base.ref if report.base else None,
        target_name=target.name,
        target_domain=target.domain,
        target_sizes=", ".join(f"{k}: {v}" for k, v in target.sizes.items()),
        target_notes=[*target.notes, *_label_lines(report)],
        method_link=f"[{method.pretty_name}]({method.paper})" if method.paper else f"**{method.pretty_name}**",
        method_description=method.description,
        training=_training_text(report),
        open_points=GRASP_OPEN_POINTS if method.is_grasp else None,
        settings=settings(report),
        notes=report.notes,
        config_rows=[(k, _cell(v)) for k, v in [*report.options.items(), *method.params.items()]],
        summary=summary_markdown(report),
        heatmap=HEATMAP if has_heatmap(report) else None,
        heatmap_caption=_heatmap_caption(report),
        usage_intro=_usage_intro(report, is_ensemble),
        usage=_usage(report, repo, is_ensemble),
        repo=repo,
        reproduce_intro=_reproduce_intro(repo_id) if reproducible else None,
        extend=method.is_grasp,
        reproduce_notes=_reproduce_notes(report),
        license_text=_license_text(report),
        citation=GRASP_CITATION if method.is_grasp else None,
        code_url=GRASP_CODE_URL if method.is_grasp else None,
        version=__version__,
    )
    card.content = re.sub(r"\n{3,}", "\n\n", card.content)  # the template's optional parts leave blank runs
    return card


def has_heatmap(report: MergeReport) -> bool:
    """Whether the merge scored any tensor, so that its folder holds :data:`HEATMAP`."""
    return any(s.scores for s in report.sources)


def hub_dataset_id(target: str) -> str | None:
    """``target`` when it names a Hub dataset, decided as :func:`hf_grasp.inputs.data.load_target` resolves it: a
    built-in name first, then a local path (one that exists here, or has a path's form), else a Hub id."""
    from ..inputs.data import builtin_dataset

    if not target or builtin_dataset(target) is not None or _is_local_target(target):
        return None
    return target


def for_publication(report: MergeReport) -> MergeReport:
    """The report as the card shows it: local folders (sources, base, a local target) named by their last path
    parts instead of the paths of the machine that made the merge; everything else unchanged.

    (The heatmap could be drawn from it too: it labels its rows with the sources' references.)
    """
    names = _local_names([s.ref for s in (*report.sources, report.base, report.continued_from)
                          if s is not None and not s.is_hub])
    target = report.target
    if _is_local_target(target.name):
        shown = _local_names([target.name])[target.name]
        target = dataclasses.replace(target, name=shown, notes=[n.replace(target.name, shown) for n in target.notes])
    names = {ref: name for ref, name in names.items() if ref != name}

    def source(s):
        return dataclasses.replace(s, ref=names.get(s.ref, s.ref)) if s is not None and not s.is_hub else s

    return dataclasses.replace(
        report,
        sources=[source(s) for s in report.sources],
        base=source(report.base),
        continued_from=source(report.continued_from),
        steps=[dataclasses.replace(s, ref=names.get(s.ref, s.ref)) for s in report.steps],
        options={k: names.get(v, v) if isinstance(v, str) else v for k, v in report.options.items()},  # init, base
        target=target,
    )


def _is_local_target(name: str) -> bool:
    from ..inputs.data import _looks_like_path, builtin_dataset

    if builtin_dataset(name) is not None:
        return False
    return _looks_like_path(name) or Path(name).expanduser().exists()


def _local_names(refs: list[str]) -> dict[str, str]:
    """Each local reference -> its shortest tail of path parts that no other reference shares."""
    refs = list(dict.fromkeys(refs))
    parts = {ref: PurePath(ref.removeprefix("local-dir:")).parts or (ref,) for ref in refs}
    depth = 1
    while True:
        names = {ref: "/".join(parts[ref][-depth:]).lstrip("/") or ref for ref in refs}
        if len(set(names.values())) == len(refs) or depth > max((len(p) for p in parts.values()), default=0):
            return names
        depth += 1


def _intro(report: MergeReport, is_ensemble: bool) -> str:
    what = ("An ensemble of" if is_ensemble else "A merge of")
    text = (f"{what} {len(report.sources)} `{report.architecture}` {report.target.modality} classifiers "
            f"({report.family}) "
            f"for **{report.target.name}**, made with {report.method.label} by hf-grasp.")
    earlier = report.continued_from
    if earlier is not None:
        pinned = f"@{earlier.commit[:12]}" if earlier.commit else ""
        text += (f" It continues the earlier merge `{earlier.ref}`{pinned}: that merge's steps come first in the "
                 "tables below, then this one's.")
    if is_ensemble:
        text += (" **This is an ensemble predictor, not a merged model:** it has no weights of its own and loading "
                 f"it loads all {len(report.sources)} members.")
    test = report.test_accuracy()
    if isinstance(test, (int, float)):
        text += f" Test accuracy: **{100 * test:.2f}%**."
    return text


def _label_lines(report: MergeReport) -> list[str]:
    """A line per input whose labels did not line up with the target's as they were (labels match by name)."""
    said = {
        "permuted": "holds the target's labels in another order: its classifier head's rows were put in the "
                    "target's order as it was read",
        "left out": "does not hold the target's labels: its classifier head was left out",
    }
    inputs = [*report.sources, *([report.base] if report.base else [])]
    return [f"`{s.ref}` {said[s.label_order]}." for s in inputs if s.label_order in said]


def _source_rows(report: MergeReport) -> list[dict[str, Any]]:
    return [{
        "index": i,
        "ref": f"`{src.ref}`",
        "revision": f"`{src.revision}`" if src.revision else "–",
        "commit": f"`{src.commit}`" if src.commit else "local",
        "role": "initial model" if src.role == "init" else "source",
        "license": _license_cell(src.license),
        "files": "<br>".join(f"`{name}` `{str(sha)[:12]}…`" for name, sha in src.files.items()) or "–",
    } for i, src in enumerate(report.sources, start=1)]


def _license_cell(lic: License | None) -> str:
    """A license as the card shows it: its id, or for ``other`` its name linked to its text."""
    if lic is None:
        return "–"
    if lic.id == "other" and lic.name and lic.link:
        return f"other: [{_cell(lic.name)}]({_cell(lic.link)})"
    return f"`{lic.id}`"


def _license_text(report: MergeReport) -> str:
    """Which license the merged model has, and where it came from: given for the merge, or the one every
    input's card states; or why it has none."""
    lic = report.license
    if lic is None:
        why = ("the sources' model cards do not all state the same license (the table above shows each one's)"
               if any(s.license for s in report.sources) else "no source's model card states a license")
        return (f"None stated: {why}, and none was given for this merge, so this card states none. Check each "
                "source's terms before using or sharing this model.")
    if report.license_origin == "sources":
        return (f"{_license_cell(lic)}: the license every source's model card states (none was given for this "
                "merge).")
    return f"{_license_cell(lic)}: the license given for this merge."


def _training_text(report: MergeReport) -> str:
    if report.epochs_trained == 0:
        return "No training: the result is the merge itself (so no fine-tuning option applied)."
    budget = "" if report.method.is_grasp else " (the budget GRASP would spend)"
    return f"Fine-tuning: {report.epochs_trained} epoch(s) in all on the target training data{budget}."


GRASP_OPEN_POINTS = ("The paper leaves open the threshold τ, what a \"parameter\" is, the buffers, the models' modes "
                     "while taking gradients and classifier heads of another shape: the settings below say what this "
                     "run did.")

#: the card's titles of the shared options' help groups
GROUP_TITLES = {"data": "Target data", "training": "Training", "runtime": "Loading and runtime", "card": "Card"}
#: options that shape fine-tuning only: not stated when the run trained nothing
FINE_TUNING_OPTIONS = ("initial_epochs", "finetune_epochs", "lr", "weight_decay", "schedule", "schedule_per",
                       "keep_start", "augment")
#: options only GRASP and its gated variants read (the alignment's gradients)
GRASP_OPTIONS = ("align_mode",)
#: options only a target of one modality reads: not stated for the other
MODALITY_OPTIONS = {"image": ("image_column", "skip_bad_images", "augment"),
                    "text": ("text_column", "text_pair_column", "max_length")}
#: how the JSON report saves a non-finite float (``"inf"``), read back as the float
_NON_FINITE = ("inf", "-inf", "nan")


def settings(report: MergeReport) -> list[tuple[str, list[str]]]:
    """The run's settings as the card states them: ``(title, sentences)`` for the method's parameters, then for
    each group of shared options, each sentence the one its declaration gives for the value the run used.

    An option the report lacks (a report older than it) reads as its default, which is what that run did; a
    value neither MergeOptions nor the method's parameters declare (a method registered from outside, or gone)
    is stated as ``name = value``, so the card never omits a parameter.
    """
    info = METHODS.get(report.method.name)
    fields = info.params.model_fields if info is not None else {}
    out = []
    params = [_statement(name, value, fields.get(name)) for name, value in report.method.params.items()]
    if params := [line for line in params if line]:
        out.append((f"Parameters of {report.method.label}", params))
    groups: dict[str, list[str]] = {}
    left_out = {*(FINE_TUNING_OPTIONS if report.epochs_trained == 0 else ()),
                *(GRASP_OPTIONS if not report.method.is_grasp else ()),
                *(o for modality, names in MODALITY_OPTIONS.items() if modality != report.target.modality
                  for o in names)}
    given = {**{name: f.default for name, f in MergeOptions.model_fields.items()}, **report.options}
    for name, value in given.items():
        field = MergeOptions.model_fields.get(name)
        line = None if name in left_out else _statement(name, value, field)
        if line:
            group = (field.json_schema_extra or {}).get("group", "other") if field is not None else "other"
            groups.setdefault(group, []).append(line)
    return out + [(GROUP_TITLES.get(group, "Other options"), lines) for group, lines in groups.items()]


def _statement(name: str, value: Any, field: Any) -> str | None:
    """The sentence stating ``value`` of option ``name`` as its field declares (None: declared ``card_skip``)."""
    extra = (field.json_schema_extra if field is not None else None) or {}
    if "card_skip" in extra:
        return None
    value = _number(value)
    if isinstance(value, (list, tuple)):
        value = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in map(_number, value))
    card = extra.get("card")
    if isinstance(card, dict):
        try:
            card = card[value] if value in card else card.get(...)
        except TypeError:  # an unhashable value
            card = card.get(...)
    try:
        if card is not None:
            return _cell(card.format(value=value))
    except (ValueError, TypeError):  # a value of another type than declared (a report made by other code)
        pass
    return f"`{name}` = {_cell(value)}"


def _number(value: Any) -> Any:
    """A non-finite float the JSON report saved as text (``"inf"``) as the float again; any other value as is."""
    return float(value) if isinstance(value, str) and value in _NON_FINITE else value


def _usage_intro(report: MergeReport, is_ensemble: bool) -> str:
    if is_ensemble:
        return ("The folder holds `ensemble.json` (the members' references and resolved commits) and the first "
                "member's preprocessing; hf_grasp rebuilds the ensemble from it, each member loaded by its own "
                "library.")
    return f"The result is a plain {report.family} checkpoint: hf_grasp is not needed to load it."


def _usage(report: MergeReport, repo: str, is_ensemble: bool) -> str:
    if is_ensemble:
        key = "ensemble-text" if report.target.modality == "text" else "ensemble"
        return _USAGE[key].format(repo=repo, k=len(report.sources), num_labels=report.target.num_labels)
    timm_ref = f"local-dir:{repo}" if repo == FOLDER else f"hf-hub:{repo}"
    key = "transformers-text" if report.target.modality == "text" else report.family
    return _USAGE.get(key, _USAGE["transformers"]).format(repo=repo, timm_ref=timm_ref)


def _task(report: MergeReport) -> str:
    """The Hub's pipeline tag (and model-index task) of the merged model."""
    return f"{report.target.modality}-classification"


def _heatmap_caption(report: MergeReport) -> str:
    tau = _number(report.method.params.get("tau"))
    line = f" (the black line on the colour bar is τ = {tau:g})" if isinstance(tau, (int, float)) else ""
    return (f"`{HEATMAP}`: one row per source merged onto the initial model, one column per parameter tensor; the "
            f"colour is the gradient alignment (cosine) of the source with the merged model on target training "
            f"data{line}; a black dot marks a tensor taken from that source.")


def _reproduce_intro(repo_id: str | None) -> str:
    where = "This repo" if repo_id else "This folder"
    return (f"{where} holds `{CONFIG_NAME}`, the merge configuration (the sources pinned to their commits, the "
            "target, the method, every option and the seed): hf-grasp reads it to run the same merge again (the "
            "same weights at the same thread count on CPU) or to continue it with more sources.")


def _reproduce_notes(report: MergeReport) -> list[str]:
    local = [s.ref for s in report.sources if not s.is_hub] + ([report.base.ref] if report.base and
                                                                  not report.base.is_hub else [])
    if not local:
        return []
    return [f"Local sources ({', '.join(f'`{r}`' for r in local)}) were folders of the machine that made this "
            "merge: running it again needs them at the paths the configuration records."]


def _cell(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
