"""The merged model's card: what was merged, how, how well, and how to load it.

Rendered with ``huggingface_hub.ModelCard.from_template`` from :data:`TEMPLATE`
and the run's report, so the card, the JSON report and the terminal summary all
tell the same story. The YAML header (``ModelCardData``) carries ``base_model``
(Hub sources only), the library, tags and the test accuracy as an eval result.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .report import split_accuracy, summary_markdown

PAPER_TITLE = "GRASP: Gradient-Aligned Sequential Parameter Transfer for Memory-Efficient Multi-Source Learning"
PAPER_ARXIV = "2606.14900"
PAPER_URL = f"https://arxiv.org/abs/{PAPER_ARXIV}"
CODE_URL = "https://github.com/Sekeh-Lab/grasp-multisource-transfer"

TAGS = ["hf-grasp", "merge", "grasp", "model-merging"]

CITATION = f"""@misc{{grasp2026,
  title         = {{{PAPER_TITLE}}},
  year          = {{2026}},
  eprint        = {{{PAPER_ARXIV}}},
  archivePrefix = {{arXiv}},
  url           = {{{PAPER_URL}}}
}}"""

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
Target data: **{{ target_name }}**{% if target_domain %} (domain `{{ target_domain }}`){% endif %}{% if target_sizes %}; {{ target_sizes }}{% endif %}.
{% for note in target_notes %}
- {{ note }}
{%- endfor %}

## How it was merged

[GRASP]({{ paper_url }}) (Gradient-Aligned Sequential Parameter Transfer) merges the sources one at a time, so
only the merged model and one source are ever in memory. For each source it takes, on the same batches of target
*training* data, the gradient of the loss with respect to every parameter of the merged model and of the source,
and copies a parameter from the source into the merged model only where the cosine of the two gradients is
strictly greater than the threshold τ; the merged model is then fine-tuned on the target training data and the
best-validation epoch kept.

{% for line in how_lines -%}
- {{ line }}
{% endfor %}
Points the paper leaves open, and what this run did:

{% for line in open_points -%}
- {{ line }}
{% endfor %}
{% if config_rows %}
<details>
<summary>Full configuration</summary>

| Option | Value |
| --- | --- |
{% for key, value in config_rows -%}
| `{{ key }}` | {{ value }} |
{% endfor %}
</details>
{% endif %}

## Results

{{ summary }}

## How to use

The merged model is a plain {{ library_label }} checkpoint: hf_grasp is not needed to load it.

```python
{{ usage }}
```

## Citation

```bibtex
{{ citation }}
```

Merged with hf-grasp; the authors' reference code is at {{ code_url }}.
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
}


def build_model_card(
    report: dict,
    *,
    base_models: list[str],
    library_name: str,
    pipeline_tag: str = "image-classification",
    dataset: str | None,
    repo_id: str | None = None,
) -> ModelCard:
    """Build the model card of a merge from its report.

    ``base_models`` are the sources' references; only Hub repo ids end up in the
    ``base_model`` metadata (local paths and ``@revision`` tails are dropped).
    ``library_name`` is ``"transformers"`` or ``"timm"``; ``dataset`` is the Hub id
    of the target dataset when it has one. ``repo_id`` (where the merge will be
    pushed) only fills in the loading snippet. Save with ``card.save(dir / "README.md")``.
    """
    config = report.get("config") or {}
    target = report.get("target") or {}
    test_accuracy = split_accuracy(report.get("final") or {}, "test")
    hub_bases = _hub_repo_ids(base_models, report)
    model_name = repo_id or _default_name(report)

    eval_results = None
    if isinstance(test_accuracy, (int, float)):
        eval_results = [
            EvalResult(
                task_type=pipeline_tag,
                dataset_type=dataset or str(target.get("name", "target")),
                dataset_name=str(target.get("name", dataset or "target")),
                dataset_split="test",
                metric_type="accuracy",
                metric_value=float(test_accuracy),
            )
        ]
    card_data = ModelCardData(
        base_model=hub_bases or None,
        datasets=[dataset] if dataset else None,
        library_name=library_name,
        pipeline_tag=pipeline_tag,
        tags=list(TAGS),
        metrics=["accuracy"],
        model_name=model_name,
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        title=model_name,
        intro=_intro(report, library_name),
        source_rows=_source_rows(report),
        target_name=target.get("name", "?"),
        target_domain=target.get("domain"),
        target_sizes=", ".join(f"{k}: {v}" for k, v in (target.get("sizes") or {}).items()),
        target_notes=list(target.get("notes") or []),
        paper_url=PAPER_URL,
        how_lines=_how_lines(config),
        open_points=_open_points(config),
        config_rows=[(k, _cell(v)) for k, v in config.items()],
        summary=summary_markdown(report),
        library_label=library_name,
        usage=_usage(library_name, repo_id),
        citation=CITATION,
        code_url=CODE_URL,
    )


def _hub_repo_ids(refs: list[str], report: dict) -> list[str]:
    """Hub repo ids among source references (no local paths, no revisions)."""
    local = {
        key
        for src in report.get("sources") or []
        if not src.get("commit")  # the report records no commit for a local directory
        for key in (src.get("ref"), src.get("path"))
        if key
    }
    out: list[str] = []
    for ref in refs:
        if ref in local:
            continue
        repo = ref.removeprefix("hf-hub:").split("@", 1)[0]
        if repo.startswith(("/", ".", "~", "local-dir:")) or "/" not in repo:
            continue
        try:
            validate_repo_id(repo)
        except HFValidationError:
            continue
        if repo not in out:
            out.append(repo)
    return out


def _default_name(report: dict) -> str:
    target = (report.get("target") or {}).get("name", "target")
    arch = report.get("architecture", "model")
    return f"grasp-{arch}-{target}"


def _intro(report: dict, library_name: str) -> str:
    sources = report.get("sources") or []
    target = report.get("target") or {}
    test = split_accuracy(report.get("final") or {}, "test")
    text = (
        f"A merge of {len(sources)} `{report.get('architecture', '?')}` image classifiers ({library_name}) "
        f"into one model for **{target.get('name', '?')}**, made with GRASP by hf-grasp."
    )
    if isinstance(test, (int, float)):
        text += f" Test accuracy of the merged model: **{100 * test:.2f}%**."
    return text


def _source_rows(report: dict) -> list[dict[str, Any]]:
    rows = []
    for i, src in enumerate(report.get("sources") or [], start=1):
        files = src.get("files") or {}
        rows.append(
            {
                "index": i,
                "ref": f"`{src.get('ref', '?')}`",
                "revision": f"`{src['revision']}`" if src.get("revision") else "–",
                "commit": f"`{src['commit']}`" if src.get("commit") else "local",
                "role": "initial model" if src.get("role") == "init" else "source",
                "files": "<br>".join(f"`{name}` `{str(sha)[:12]}…`" for name, sha in files.items()) or "–",
            }
        )
    return rows


def _how_lines(config: dict) -> list[str]:
    # option names are those of hf_grasp.options.MergeOptions, declared once
    lines = [f"Threshold **τ = {config['tau']:g}**: a parameter moves when its alignment is > τ.",
             f"Alignment data: {config['align_batches']} batch(es) of {config['batch_size']} target training "
             "images (never validation or test)."]
    lines.append(
        f"Fine-tuning: {config['initial_epochs']} epoch(s) on the initial model ({config['init']}), "
        f"{config['finetune_epochs']} epoch(s) after each source; AdamW (lr {config['lr']}, weight decay "
        f"{config['weight_decay']}), {config['schedule']} schedule, best-validation epoch kept."
    )
    return lines


def _open_points(config: dict) -> list[str]:
    granularity = config["granularity"]
    gran_text = {
        "tensor": "**tensor** — one score per named parameter tensor, as in the authors' released code",
        "row": "**row** — one score per output channel / row of a weight; bias entries follow their row",
        "element": "**element** — one score per scalar (sign agreement of the two gradients)",
    }[granularity]
    return [
        f"Granularity of a \"parameter\": {gran_text}.",
        "Buffers (BatchNorm running statistics): "
        + (
            "a module's buffers follow its transferred weight."
            if config["buffers"] == "follow"
            else "never transferred, as in the released code; they come from the initial model and fine-tuning."
        ),
        "Model modes while taking gradients: both models in **eval** mode (deterministic, dropout-free, each "
        "with its own BatchNorm statistics; the released code puts the merged model in train mode).",
        "Classifier heads whose shape differs from the target's label count: "
        + ("skipped and reported." if config["skip_mismatched_heads"] else "an error."),
    ]


def _usage(library_name: str, repo_id: str | None) -> str:
    repo = repo_id or "path/to/this/model"
    timm_ref = f"hf-hub:{repo_id}" if repo_id else "local-dir:path/to/this/model"
    template = _USAGE.get(library_name, _USAGE["transformers"])
    return template.format(repo=repo, timm_ref=timm_ref)


def _cell(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
