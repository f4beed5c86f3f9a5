"""The page: a ``gr.Blocks`` over :mod:`.session` (running a merge) and :mod:`.results` (what it shows).

Layout, top to bottom: the form (sources, target, method and its knobs), the
merge button, live per-source progress, then the results — accuracy table and
chart, alignment heatmap, what moved from each source, trying the model on an
image, download and push. Each visitor's run is a ``gr.State`` (never shared),
and its files live in its own run directory, removed when the session's state
expires.
"""

from __future__ import annotations

import html
import re
import shutil
import types
import typing
import uuid
from pathlib import Path
from typing import Any, Literal, Mapping

import gradio as gr

from ..bench import digits_eras
from ...runtime.errors import GraspError, first_line
from ...methods import METHODS, find_method
from ...plan.options import Layer, resolve
from ...runtime.progress import log
from . import builtin, results
from .session import RunOutcome, RunSpec, Tick, classify, push, run_merge

BUILTIN, REPO_IDS = "built-in digits-eras sources", "repo ids or local paths"
DIGITS, DATASET = "digits-eras", "a dataset id or path"
#: the method the form starts on
DEFAULT_METHOD = "grasp"
#: where the form's values come from, as an error line names it ("option density=1.5 (from the form): ...")
FORM = "the form"
#: a session's results (and their files) are dropped this long after its last merge
SESSION_SECONDS = 2 * 3600
#: the test images are 28x28; shown 4x larger, nearest-neighbour so the pixels stay sharp
DISPLAY_SIZE = 112

INTRO = """# hf-grasp: merge image classifiers with GRASP
Pick fine-tuned classifiers that share one architecture and a target dataset. **GRASP** (Gradient-Aligned
Sequential Parameter Transfer) fine-tunes the first source on the target, then, source by source, copies the
parameter tensors whose loss gradient on target images points the same way as the merged model's (cosine above
τ) and fine-tunes again — one source in memory at a time. The page then compares the merged model with each
source alone and with their ensemble, on the same test images.

The built-in **digits-eras** benchmark (handwritten MNIST digits in six domains rotated 0°–75°) needs nothing
from the Hub: its sources are trained here once, on first use (under a minute)."""


def _domain_choices() -> list[tuple[str, int]]:
    return [(builtin.source_label(d), d) for d in range(digits_eras.NUM_DOMAINS)]


def _source_choices(target_domain: int) -> list[tuple[str, str]]:
    return [(builtin.source_label(d), f"d{d}") for d in builtin.source_domains(target_domain)]


def _refs(text: str) -> list[str]:
    """Repo ids or paths typed one per line (commas and spaces separate too)."""
    return [r for r in re.split(r"[\s,]+", text or "") if r]


def spec_from_form(home: Path, *, source_kind: str, builtin_sources: list[str], repo_ids: str, target_kind: str,
                   domain: int | None, dataset: str, dataset_domain: str, image_column: str, label_column: str,
                   method: str, initial_epochs: int, finetune_epochs: int, base: str, lr: float | None, seed: int,
                   ensemble: bool, params: Mapping[str, Any] | None = None) -> RunSpec:
    """The form's values as a :class:`RunSpec` (what ``GraspMerger.from_pretrained`` gets).

    ``params``: the chosen method's own parameters by name, as its inputs hold
    them (an empty one: the recipe's or the method's default). Only what the
    form sets is passed: everything else keeps the recipe's or the engine's
    default. Every value is validated here by the library's own models, so a
    bad one is refused with the CLI's line before any work.
    """
    info = find_method(method)
    options: dict[str, Any] = {"initial_epochs": int(initial_epochs), "finetune_epochs": int(finetune_epochs),
                               "seed": int(seed)}
    base, dataset, dataset_domain = (base or "").strip(), (dataset or "").strip(), (dataset_domain or "").strip()
    if lr:
        options["lr"] = float(lr)
    labels: dict[str, str] = {}
    home_for_builtin = None
    if source_kind == BUILTIN:
        root = builtin.sources_root(home)
        refs = []
        order = [f"d{d}" for d in builtin.domain_order()]
        # merge order is the list's (the recipe's), whatever order the boxes were ticked in
        for tag in sorted(builtin_sources or [], key=order.index):
            ref = str(root / tag)
            refs.append(ref)
            labels[ref] = builtin.source_label(int(tag[1:]))
        home_for_builtin = home
        if info.needs_base:
            options["base"] = str(root / "base")  # the shared starting point the built-in sources came from
    else:
        refs = _refs(repo_ids)
        if base:
            options["base"] = base
    if target_kind == DIGITS:
        target = digits_eras.DIGITS_ERAS
        options["target_domain"] = str(domain if domain is not None else digits_eras.RECIPE["target_domain"])
    else:
        target = dataset
        if not target:
            raise GraspError("type a dataset id or path as the target")
        if dataset_domain:
            options["target_domain"] = dataset_domain
        options["image_column"] = (image_column or "").strip() or "image"
        options["label_column"] = (label_column or "").strip() or "label"
    return RunSpec(sources=tuple(refs), target=target, method=method, options=options,
                   params=_checked_params(method, options, params or {}), labels=labels,
                   compare_ensemble=bool(ensemble), builtin_home=home_for_builtin)


def _checked_params(method: str, options: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` and ``method``'s ``params`` validated by :func:`hf_grasp.plan.options.resolve` (the CLI's
    checks and error line, naming the form); returns the parameters set, as validated (``"0, 0.5"`` -> a tuple).

    A text box's value is text for pydantic to convert, as the command line's is; an empty one (or a cleared
    number) is unset.
    """
    params = {n: (v.strip() or None) if isinstance(v, str) else v for n, v in params.items()}
    typed = {n: v for n, v in params.items() if not isinstance(v, str)}
    texts = {n: v for n, v in params.items() if isinstance(v, str)}
    # complete=False: rules across options (the license's) wait for the recipe's layer in from_pretrained
    _, own = resolve(method, [Layer(options, origin=FORM), Layer(typed, origin=FORM),
                              Layer(texts, origin=FORM, text=True)], methods=METHODS, complete=False)
    return {n: getattr(own, n) for n, v in params.items() if v is not None}


def _union(annotation: Any) -> list:
    """The parts of an annotation, ``None`` left out (``float | None`` -> ``[float]``)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [p for a in typing.get_args(annotation) for p in _union(a)]
    return [] if annotation is type(None) else [annotation]


def _range_text(field) -> tuple[float | None, float | None, str]:
    """A numeric parameter's bounds (``ge``/``gt``, ``le``/``lt`` in its pydantic metadata) and how the form says
    them (``> 0, ≤ 1``)."""
    marks = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤"}
    bounds = {k: getattr(m, k) for m in field.metadata for k in marks if getattr(m, k, None) is not None}
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    return low, high, ", ".join(f"{marks[k]} {v}" for k, v in bounds.items())


def param_input(method: str, name: str, field) -> gr.components.Component:
    """The form's input for parameter ``name`` of ``method`` (a pydantic field): a dropdown for a Literal, a
    checkbox for a bool, a slider for a number bounded on both sides, a number box for any other number, a text
    box for the rest (a tuple: comma-separated, as on the command line). Its default, help and range are the
    field's; its ``elem_id`` is ``param-<method>-<name>``."""
    parts, default = _union(field.annotation), field.get_default(call_default_factory=True)
    info, common = field.description or "", {"label": name, "elem_id": f"param-{method}-{name}"}
    choices = [c for p in parts if typing.get_origin(p) is Literal for c in typing.get_args(p)]
    if choices:
        return gr.Dropdown(choices, value=default, info=info, **common)
    if parts == [bool]:
        return gr.Checkbox(bool(default), info=info, **common)
    if parts and all(p in (int, float) for p in parts):
        whole = float not in parts
        low, high, bounds = _range_text(field)
        info = f"{info} ({bounds})" if bounds else info
        if low is not None and high is not None:
            return gr.Slider(low, high, value=default, step=1 if whole else (high - low) / 100, info=info, **common)
        # the range is told, not set as gradio's minimum/maximum: gradio would refuse a value outside it with
        # its own words, where the library's check gives the CLI's line
        return gr.Number(default, precision=0 if whole else None, info=info, **common)
    text = ", ".join(map(str, default)) if isinstance(default, (tuple, list)) else "" if default is None else default
    return gr.Textbox(str(text), info=info, **common)


def _method_text(name: str) -> str:
    """One line on the chosen method: its name, paper, and whether it takes parameters of its own."""
    info = find_method(name)
    paper = f" ([paper]({info.paper}))" if info.paper else ""
    note = "" if info.params.model_fields else " It takes no parameters of its own."
    return f"<small>{info.pretty_name}{paper}.{note}</small>"


def _forget(outcome: RunOutcome | None) -> None:
    """A session's state expired: its run directory goes with it."""
    if outcome is not None:
        shutil.rmtree(outcome.folder.parent, ignore_errors=True)


def _display(image):
    """A small image enlarged for the page (nearest-neighbour); larger ones as they are."""
    from PIL import Image

    if max(image.size) >= DISPLAY_SIZE:
        return image
    scale = DISPLAY_SIZE // max(image.size)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)


#: page styles (passed to ``launch``): an error line reads as one
CSS = ".error-line {color: var(--error-text-color); font-weight: 600}"


def _line(text: str, *, error: bool = False) -> str:
    """One line of text as HTML, escaped: a message quoting a path or a library's words shows as it is."""
    return f'<p class="{"error-line" if error else "info-line"}">{html.escape(text)}</p>'


def _error(e: GraspError) -> dict:
    """The CLI's one line (``error: ...``), shown in the page."""
    return gr.update(value=_line(f"error: {e}", error=True), visible=True)


def build_demo(home: str | Path) -> gr.Blocks:
    """The Space's page; ``home`` holds the built-in sources and every session's run directory."""
    home = Path(home)
    recipe_domain = digits_eras.RECIPE["target_domain"]
    # analytics off: the page reports nothing to gradio's servers about its visitors
    with gr.Blocks(title="hf-grasp: merge image classifiers with GRASP", analytics_enabled=False) as demo:
        run = gr.State(None, time_to_live=SESSION_SECONDS, delete_callback=_forget)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=2):
                source_kind = gr.Radio([BUILTIN, REPO_IDS], value=BUILTIN, label="sources", elem_id="source-kind")
                builtin_sources = gr.CheckboxGroup(
                    _source_choices(recipe_domain), value=[v for _, v in _source_choices(recipe_domain)],
                    label="built-in sources (merge order)", elem_id="builtin-sources",
                    info="one resnet per digits-eras domain, fine-tuned from one shared base")
                repo_ids = gr.Textbox(label="source repo ids or local paths, one per line, in merge order",
                                      placeholder="org/name\norg/name@revision\nhf-hub:org/name", lines=4,
                                      visible=False, elem_id="repo-ids")
                target_kind = gr.Radio([DIGITS, DATASET], value=DIGITS, label="target", elem_id="target-kind")
                domain = gr.Dropdown(_domain_choices(), value=recipe_domain, label="digits-eras target domain",
                                     elem_id="domain")
                with gr.Group(visible=False) as dataset_box:
                    dataset = gr.Textbox(label="dataset id or path (train and test splits)", elem_id="dataset")
                    dataset_domain = gr.Textbox(label="domain value (optional: keeps rows whose 'domain' is it)")
                    with gr.Row():
                        image_column = gr.Textbox("image", label="image column")
                        label_column = gr.Textbox("label", label="label column", elem_id="label-column")
                method = gr.Dropdown(sorted(METHODS), value=DEFAULT_METHOD, label="method", elem_id="method")
                method_info = gr.Markdown(_method_text(DEFAULT_METHOD))
                # every registered method's own parameters, from its pydantic model, shown while it is chosen;
                # one input per method and parameter (a parameter several take, such as scaling, keeps each
                # method's default and a value typed for one method never reaches another)
                param_inputs: dict[str, dict[str, Any]] = {}  # method -> parameter name -> its input
                param_boxes: dict[str, gr.Group] = {}
                for name in sorted(METHODS):
                    fields = METHODS[name].params.model_fields
                    if fields:
                        with gr.Group(visible=name == DEFAULT_METHOD, elem_id=f"params-{name}") as box, gr.Row():
                            param_inputs[name] = {p: param_input(name, p, f) for p, f in fields.items()}
                        param_boxes[name] = box
                with gr.Row():
                    initial_epochs = gr.Slider(0, 10, value=2, step=1, label="initial epochs", elem_id="initial-epochs")
                    finetune_epochs = gr.Slider(0, 10, value=1, step=1, label="epochs after each source",
                                                elem_id="finetune-epochs")
                with gr.Accordion("more", open=False):
                    ensemble = gr.Checkbox(True, label="also run the ensemble of the same sources, for comparison")
                    base = gr.Textbox(label="base (shared starting point; task-vector methods, repo-id sources)")
                    lr = gr.Number(None, label="learning rate (empty: the recipe's, else 5e-5)")
                    seed = gr.Number(0, precision=0, label="seed")
                merge_btn = gr.Button("Merge", variant="primary", elem_id="merge")
            with gr.Column(scale=3):
                error = gr.HTML(visible=False, elem_id="error")
                board = gr.Dataframe(headers=["source", "status", "detail"], label="progress per source",
                                     interactive=False, elem_id="progress", wrap=True)
                log_box = gr.Textbox(label="log (the lines the CLI prints)", lines=5, max_lines=12,
                                     interactive=False, elem_id="log")
                with gr.Column(visible=False) as result_box:
                    summary = gr.Markdown(elem_id="summary")
                    accuracy = gr.Dataframe(headers=results.ACCURACY_COLUMNS, label="accuracy on the target's test "
                                            "split", interactive=False, elem_id="accuracy-table", wrap=True)
                    chart = gr.BarPlot(x="model", y="test accuracy (%)", color="kind", y_lim=[0, 100],
                                       color_map=results.CHART_COLORS, label="test accuracy (%)",
                                       elem_id="accuracy-chart", x_label_angle=-20)
                    heatmap = gr.Image(label="alignment per tensor (rows: sources; ● transferred)", type="filepath",
                                       elem_id="heatmap", interactive=False)
                    transfer = gr.Dataframe(headers=results.TRANSFER_COLUMNS, label="what moved from each source",
                                            interactive=False, elem_id="transfer-table")
                    gr.Markdown("### Try the merged model")
                    with gr.Row():
                        examples = gr.Gallery(label="the target's test images (click one)", columns=6, height=240,
                                              allow_preview=False, elem_id="examples")
                        with gr.Column():
                            image = gr.Image(type="pil", label="or upload an image", sources=["upload", "clipboard"],
                                             height=180, elem_id="try-image")
                            classify_btn = gr.Button("Classify", elem_id="classify")
                    truth = gr.Markdown(elem_id="truth")
                    prediction = gr.Label(num_top_classes=5, label="top classes", elem_id="prediction")
                    gr.Markdown("### Take it with you")
                    download = gr.File(label="merged model folder (zip: weights, config, card, report, heatmap)",
                                       elem_id="download", interactive=False)
                    with gr.Row():
                        push_repo = gr.Textbox(label="Hub model repo id", placeholder="you/merged-model",
                                               elem_id="push-repo")
                        push_token = gr.Textbox(label="Hub token (write; used for this push only, never stored)",
                                                type="password", elem_id="push-token")
                    push_private = gr.Checkbox(False, label="private repo")
                    push_btn = gr.Button("Push to the Hub", elem_id="push")
                    push_result = gr.HTML(elem_id="push-result")

        # spec_from_form's arguments by name; the merge gets a set of inputs, so gradio hands it their values
        # keyed by component and nothing depends on an order
        form = {"source_kind": source_kind, "builtin_sources": builtin_sources, "repo_ids": repo_ids,
                "target_kind": target_kind, "domain": domain, "dataset": dataset, "dataset_domain": dataset_domain,
                "image_column": image_column, "label_column": label_column, "method": method,
                "initial_epochs": initial_epochs, "finetune_epochs": finetune_epochs, "base": base, "lr": lr,
                "seed": seed, "ensemble": ensemble}
        merge_inputs = {run, *form.values(), *(c for inputs in param_inputs.values() for c in inputs.values())}
        shown = [error, board, log_box, result_box, summary, accuracy, chart, heatmap, transfer, examples, image,
                 truth, prediction, download, push_result, run]

        def on_merge(values: dict, progress=gr.Progress()):
            _forget(values[run])  # this session's earlier run: its files go now
            yield {error: gr.update(visible=False), result_box: gr.update(visible=False), run: None,
                   board: [], log_box: ""}
            try:
                fields = {name: values[c] for name, c in form.items()}
                params = {name: values[c] for name, c in param_inputs.get(fields["method"], {}).items()}
                spec = spec_from_form(home, **fields, params=params)
                progress(0, desc="starting")
                for item in run_merge(spec, home / "runs" / uuid.uuid4().hex):
                    if isinstance(item, Tick):
                        progress(item.fraction, desc=item.desc)
                        yield {board: item.rows, log_box: "\n".join(item.lines)}
                    else:
                        yield _shown(item)
            except GraspError as e:
                yield {error: _error(e), board: []}
            except Exception as e:  # noqa: BLE001 - a bug, not bad input: one line here, the traceback in the log
                log.exception("the merge failed")
                yield {error: _error(GraspError(f"{type(e).__name__}: {first_line(e)} (an hf-grasp bug: the "
                                                "server's log has the traceback)")), board: []}

        def _shown(outcome: RunOutcome) -> dict:
            rows = results.accuracy_rows(outcome)
            return {result_box: gr.update(visible=True), summary: results.summary(outcome), accuracy: rows,
                    # bars in the table's order (merged, ensemble, sources), not alphabetical
                    chart: gr.update(value=results.chart_frame(rows), sort=[r[0] for r in rows]),
                    heatmap: str(outcome.heatmap) if outcome.heatmap else None,
                    transfer: results.transfer_rows(outcome),
                    examples: [(_display(im), f"label {outcome.label_names[y]}") for im, y in outcome.examples],
                    image: None, truth: "", prediction: None, download: str(outcome.zip_path), push_result: "",
                    run: outcome}

        def on_pick(outcome: RunOutcome | None, evt: gr.SelectData):
            if outcome is None:
                return gr.update(), "", None
            im, y = outcome.examples[evt.index]
            return _display(im), f"true label: **{outcome.label_names[y]}**", classify(outcome, im)

        def on_classify(outcome: RunOutcome | None, im):
            if outcome is None or im is None:
                return "error: merge first, then pick or upload an image", None
            return "uploaded image", classify(outcome, im)

        def on_push(outcome: RunOutcome | None, repo: str, token: str, private: bool):
            # the token lives in this call only: it is cleared from the page on return, whatever happens
            if outcome is None:
                return _line("error: merge first", error=True), ""
            try:
                return _line(f"pushed: {push(outcome, repo, token, private=private)}"), ""
            except GraspError as e:
                return _line(f"error: {e}", error=True), ""

        def on_method(name: str):
            return {**{box: gr.update(visible=m == name) for m, box in param_boxes.items()},
                    method_info: _method_text(name)}

        def on_domain(d: int):
            choices = _source_choices(int(d))
            return gr.update(choices=choices, value=[v for _, v in choices])

        source_kind.change(lambda k: (gr.update(visible=k == BUILTIN), gr.update(visible=k == REPO_IDS)),
                           source_kind, [builtin_sources, repo_ids], queue=False)
        target_kind.change(lambda k: (gr.update(visible=k == DIGITS), gr.update(visible=k == DATASET)),
                           target_kind, [domain, dataset_box], queue=False)
        domain.change(on_domain, domain, builtin_sources, queue=False)
        method.change(on_method, method, [*param_boxes.values(), method_info], queue=False)
        # one merge at a time in this process (the queue shows the others their place); a run is CPU-bound
        merge_btn.click(on_merge, merge_inputs, shown, concurrency_limit=1, concurrency_id="merge")
        examples.select(on_pick, run, [image, truth, prediction], concurrency_limit=4)
        classify_btn.click(on_classify, [run, image], [truth, prediction], concurrency_limit=4)
        push_btn.click(on_push, [run, push_repo, push_token, push_private], [push_result, push_token],
                       api_visibility="private")
    return demo
