"""The result's model card: what was merged, by which method, how well, and how to load it.

Rendered with ``huggingface_hub.ModelCard.from_template`` from :data:`TEMPLATE`
and the run's :class:`~hf_grasp.report.MergeReport`, for every method (the
ensemble included), so the card, the JSON report and the terminal summary all
tell the same story. The method section is the method's own: its name, paper,
description and parameters; GRASP's open points (granularity, buffers, model
modes, heads) appear only for GRASP and its gated variants. The YAML header
(``ModelCardData``) carries ``base_model`` (Hub sources only) with
``base_model_relation: merge``, the library, tags and the test accuracy as an
eval result.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

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

#: Jinja template (``ModelCard.from_template``); ``card_data`` is the YAML header.
TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ intro }}

## What was merged

| # | Source | Revision | Commit | Role | Weights (sha256) |
| --- | --- | --- | --- | --- | --- |
{% for s in source_rows -%}
| {{ s.index }} | {{ s.ref }} | {{ s.revision }} | {{ s.commit }} | {{ s.role }} | {{ s.files }} |
{% endfor %}
{% if base_row %}Task vectors are taken relative to the base `{{ base_row }}`.
{% endif %}
Target data: **{{ target_name }}**{% if target_domain %} (domain `{{ target_domain }}`){% endif %}{% if target_sizes %}; {{ target_sizes }}{% endif %}.
{% for note in target_notes %}
- {{ note }}
{%- endfor %}

## How it was merged

{{ method_link }} {{ method_description }}

{% if param_rows %}| Parameter | Value |
| --- | --- |
{% for key, value in param_rows -%}
| `{{ key }}` | {{ value }} |
{% endfor %}
{% endif %}
{% for line in how_lines -%}
- {{ line }}
{% endfor %}
{% if open_points %}
Points the paper leaves open, and what this run did:

{% for line in open_points -%}
- {{ line }}
{% endfor %}
{% endif %}
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

## How to use

{{ usage_intro }}

```python
{{ usage }}
```
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
    "timm": """import timm
import torch
from PIL import Image

model = timm.create_model("{timm_ref}", pretrained=True).eval()
config = timm.data.resolve_data_config({{}}, model=model)
transform = timm.data.create_transform(**config)
with torch.no_grad():
    label = model(transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)).argmax(-1).item()
print(label)""",
    "ensemble": """from PIL import Image
from hf_grasp.ensemble_model import EnsembleClassifier

clf = EnsembleClassifier.from_pretrained("{repo}")    # loads all {k} member models
out = clf(clf.preprocess([Image.open("image.jpg").convert("RGB")]))
out.probabilities                                    # (1, {num_labels}) averaged probabilities""",
}


def build_model_card(report: MergeReport, *, dataset: str | None = None, repo_id: str | None = None) -> ModelCard:
    """Build the card of a merge result from its report.

    Only Hub sources (a repo id and a resolved commit) end up in ``base_model``.
    ``dataset`` is the Hub id of the target dataset when it has one (by default
    the target's name when it has the ``org/name`` form). ``repo_id`` (where the
    result will be pushed) only fills in the loading snippet. Save with
    ``card.save(dir / "README.md")``.
    """
    from . import __version__

    method, target = report.method, report.target
    if dataset is None and target.name.count("/") == 1 and not target.name.startswith((".", "/", "~")):
        dataset = target.name
    test_accuracy = report.test_accuracy()
    is_ensemble = not method.parameter_space  # a predictor of K models (the ensemble), not one checkpoint
    model_name = repo_id or f"{method.name}-{report.architecture}-{target.name.replace('/', '-')}"
    eval_results = None
    if isinstance(test_accuracy, (int, float)):
        eval_results = [EvalResult(task_type="image-classification", dataset_type=dataset or target.name,
                                   dataset_name=target.name, dataset_split="test", metric_type="accuracy",
                                   metric_value=float(test_accuracy))]
    base_model = list(dict.fromkeys(s.repo_id for s in report.sources if s.is_hub)) or None
    card_data = ModelCardData(
        base_model=base_model,
        # the Hub's model tree then lists this repo as a merge of its base models
        base_model_relation="merge" if base_model else None,
        datasets=[dataset] if dataset else None,
        library_name="hf_grasp" if is_ensemble else report.family,
        pipeline_tag="image-classification",
        tags=TAGS + [method.name] + (["ensemble"] if is_ensemble else []),
        metrics=["accuracy"],
        model_name=model_name,
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        title=model_name,
        intro=_intro(report, is_ensemble),
        source_rows=_source_rows(report),
        base_row=report.base.ref if report.base else None,
        target_name=target.name,
        target_domain=target.domain,
        target_sizes=", ".join(f"{k}: {v}" for k, v in target.sizes.items()),
        target_notes=target.notes,
        method_link=f"[{method.pretty_name}]({method.paper})" if method.paper else f"**{method.pretty_name}**",
        method_description=method.description,
        param_rows=[(k, _cell(v)) for k, v in method.params.items()],
        how_lines=_training_lines(report),
        open_points=_grasp_open_points(report) if method.is_grasp else [],
        notes=report.notes,
        config_rows=[(k, _cell(v)) for k, v in report.options.items()],
        summary=summary_markdown(report),
        usage_intro=_usage_intro(report, is_ensemble),
        usage=_usage(report, repo_id, is_ensemble),
        citation=GRASP_CITATION if method.is_grasp else None,
        code_url=GRASP_CODE_URL if method.is_grasp else None,
        version=__version__,
    )


def _intro(report: MergeReport, is_ensemble: bool) -> str:
    what = ("An ensemble of" if is_ensemble else "A merge of")
    text = (f"{what} {len(report.sources)} `{report.architecture}` image classifiers ({report.family}) "
            f"for **{report.target.name}**, made with {report.method.label} by hf-grasp.")
    if is_ensemble:
        text += (" **This is an ensemble predictor, not a merged model:** it has no weights of its own and loading "
                 f"it loads all {len(report.sources)} members.")
    test = report.test_accuracy()
    if isinstance(test, (int, float)):
        text += f" Test accuracy: **{100 * test:.2f}%**."
    return text


def _source_rows(report: MergeReport) -> list[dict[str, Any]]:
    return [{
        "index": i,
        "ref": f"`{src.ref}`",
        "revision": f"`{src.revision}`" if src.revision else "–",
        "commit": f"`{src.commit}`" if src.commit else "local",
        "role": "initial model" if src.role == "init" else "source",
        "files": "<br>".join(f"`{name}` `{str(sha)[:12]}…`" for name, sha in src.files.items()) or "–",
    } for i, src in enumerate(report.sources, start=1)]


def _training_lines(report: MergeReport) -> list[str]:
    o = report.options
    if report.epochs_trained == 0:
        return ["No training: the result is the merge itself."]
    if report.method.is_grasp:
        return [f"Fine-tuning: {o['initial_epochs']} epoch(s) on the initial model ({o['init']}), "
                f"{o['finetune_epochs']} epoch(s) after each source; AdamW (lr {o['lr']}, weight decay "
                f"{o['weight_decay']}), {o['schedule']} schedule, best-validation epoch kept."]
    return [f"Fine-tuning: {report.epochs_trained} epoch(s) on the target training data (the budget GRASP would "
            f"spend); AdamW (weight decay {o['weight_decay']}), {o['schedule']} schedule, best-validation epoch kept."]


def _grasp_open_points(report: MergeReport) -> list[str]:
    p, o = report.method.params, report.options
    gran_text = {
        "tensor": "**tensor** — one score per named parameter tensor, as in the authors' released code",
        "row": "**row** — one score per output channel / row of a weight; bias entries follow their row",
        "element": "**element** — one score per scalar (sign agreement of the two gradients)",
    }[p["granularity"]]
    return [
        f"Threshold **τ = {p['tau']:g}**: a parameter moves when its alignment is > τ; alignment data: "
        f"{p['align_batches']} batch(es) of {o['batch_size']} target training images (never validation or test).",
        f"Granularity of a \"parameter\": {gran_text}.",
        "Buffers (BatchNorm running statistics): "
        + ("a module's buffers follow its transferred weight." if p["buffers"] == "follow"
           else "never transferred, as in the released code; they come from the initial model and fine-tuning."),
        "Model modes while taking gradients: both models in **eval** mode (deterministic, dropout-free, each "
        "with its own BatchNorm statistics; the released code puts the merged model in train mode).",
        "Classifier heads whose shape differs from the target's label count: "
        + ("skipped and reported." if o["skip_mismatched_heads"] else "an error."),
    ]


def _usage_intro(report: MergeReport, is_ensemble: bool) -> str:
    if is_ensemble:
        return ("The folder holds `ensemble.json` (the members' references and resolved commits) and the first "
                "member's preprocessing; hf_grasp rebuilds the ensemble from it, each member loaded by its own "
                "library.")
    return f"The result is a plain {report.family} checkpoint: hf_grasp is not needed to load it."


def _usage(report: MergeReport, repo_id: str | None, is_ensemble: bool) -> str:
    repo = repo_id or "path/to/this/model"
    if is_ensemble:
        return _USAGE["ensemble"].format(repo=repo, k=len(report.sources), num_labels=report.target.num_labels)
    timm_ref = f"hf-hub:{repo_id}" if repo_id else "local-dir:path/to/this/model"
    return _USAGE.get(report.family, _USAGE["transformers"]).format(repo=repo, timm_ref=timm_ref)


def _cell(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
