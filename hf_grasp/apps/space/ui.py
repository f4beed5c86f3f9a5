"""The page: a ``gr.Blocks`` over :mod:`.session` (running a merge) and :mod:`.results` (what it shows).

Layout, top to bottom: the form (built-in benchmark, sources, target, method
and its knobs), the merge and cancel buttons, live per-source progress, then the results —
the comparison's table (GRASP, the recommended method, the best single source, the
ensemble: validation and test accuracy) with its chart and the sentence naming the
single model best on validation, alignment heatmap, each source alone and what moved from it,
trying the model on an image or a text, download and push. Each visitor's run is a ``gr.State`` (never shared),
and its files live in its own run directory, removed when the session's state
expires.
"""

from __future__ import annotations

import contextlib
import html
import re
import shutil
import threading
import types
import typing
import uuid
from pathlib import Path
from typing import Any, Literal, Mapping

import gradio as gr

from ...inputs.data import builtin_dataset_names
from ...inputs.recipes import BUILTIN_RECIPES
from ...runtime.errors import GraspError, first_line
from ...methods import METHODS, find_method
from ...methods.catalog import RECOMMENDED_METHOD, RECOMMENDED_OPTIONS
from ...plan.options import Layer, resolve
from ...runtime.progress import log
from . import builtin, results
from .guard import LABELS, check_dataset, check_model_ref, page_words, refused
from .session import RunOutcome, RunSpec, Tick, classify, push, run_merge, sweep_runs

# the choices of the sources and target radios (their values; what they show says whether paths are taken)
BUILTIN, REPO_IDS = "built-in sources", "repo ids"
BENCHMARK, DATASET = "the built-in benchmark", "a dataset"
#: the built-in benchmarks as the page offers them (value: the benchmark's name)
BENCHMARK_CHOICES = [("digits-eras: handwritten digits, rotated (images)", builtin.DIGITS),
                     ("tweet-eras: tweet sentiment, respelled (text)", builtin.TWEETS)]
#: what the built-in sources are, by benchmark
BUILTIN_INFO = {builtin.DIGITS: "merged in this order; one resnet per digits-eras domain, fine-tuned from one shared "
                                "base",
                builtin.TWEETS: "merged in this order; one tiny BERT per tweet-eras era, fine-tuned from one shared "
                                "init (one tokenizer)"}
#: the epoch sliders' range, which the merge holds a value to (a public page runs nobody's 1000-epoch merge)
MAX_EPOCHS = 10
#: the method the form starts on: the recommended one (its options set the form's inputs that hold them)
DEFAULT_METHOD = RECOMMENDED_METHOD
#: where the form's values come from, as an error line names it ("option density=1.5 (from the form): ...")
FORM = "the form"
#: a session's results (and their files) are dropped this long after its last merge; a run directory is
#: removed this long after its last change, whatever became of its session
SESSION_SECONDS = 2 * 3600
#: how often the page looks for run directories past that age (and gradio's cache for files past it)
SWEEP_SECONDS = 10 * 60
#: the test images are 28x28; shown 4x larger, nearest-neighbour so the pixels stay sharp
DISPLAY_SIZE = 112

INTRO = """# hf-grasp: merge image and text classifiers with GRASP
Pick fine-tuned classifiers that share one architecture and a target dataset. **GRASP** (Gradient-Aligned
Sequential Parameter Transfer) fine-tunes the first source on the target, then, source by source, copies the
parameter tensors whose loss gradient on the target points the same way as the merged model's (cosine above
τ) and fine-tunes again — one source in memory at a time. The form starts on the method the README recommends;
whichever you pick, the page then runs GRASP, the recommended method, the best single source and the ensemble on
the same sources, seed and splits, and shows them in one table (validation and test accuracy) with the single model
best on *validation* named.

Two built-in benchmarks need nothing from the Hub: **digits-eras** (handwritten MNIST digits in six domains rotated
0°–75°) and **tweet-eras** (negative/positive tweets in six eras of a drifting spelling, a growing share of the
words in ROT13). Their sources are trained here once, on first use (about a minute each)."""


def _domain_choices(benchmark: str = builtin.DIGITS) -> list[tuple[str, int]]:
    return [(builtin.source_label(d, benchmark), d) for d in range(builtin.BENCHMARKS[benchmark].NUM_DOMAINS)]


def _source_choices(target_domain: int, benchmark: str = builtin.DIGITS) -> list[tuple[str, str]]:
    return [(builtin.source_label(d, benchmark), f"d{d}") for d in builtin.source_domains(target_domain, benchmark)]


def _refs(text: str) -> list[str]:
    """Repo ids or paths typed one per line (commas and spaces separate too)."""
    return [r for r in re.split(r"[\s,]+", text or "") if r]


def _text(value: Any, field: str) -> str:
    """A text input's value, stripped (None: empty). The merge takes its inputs unprocessed (see build_demo), so a
    value sent past the page's widgets is checked here."""
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value).strip()
    raise refused(field, value, "should be text")


def _choice(value: Any, choices: list, field: str) -> Any:
    """``value`` if it is one of ``choices`` (what the input offers), else a refusal naming them."""
    if isinstance(value, bool) or not any(type(value) is type(c) and value == c for c in choices):
        raise refused(field, value, f"choose one of {', '.join(map(str, choices))}")
    return value


def spec_from_form(home: Path, *, source_kind: str, builtin_sources: list[str], repo_ids: str, target_kind: str,
                   domain: int | None, dataset: str, dataset_domain: str, image_column: str, label_column: str,
                   method: str, initial_epochs: int, finetune_epochs: int, base: str, lr: float | None, seed: int,
                   compare: bool, params: Mapping[str, Any] | None = None, benchmark: str = builtin.DIGITS,
                   text_column: str | None = None, keep_start: bool | None = None,
                   allow_local_paths: bool = False) -> RunSpec:
    """The form's values as a :class:`RunSpec` (what ``GraspMerger.from_pretrained`` gets).

    ``params``: the chosen method's own parameters by name, as its inputs hold
    them (an empty one: the recipe's or the method's default). ``compare``: also
    run GRASP, the recommended method, the best source and the ensemble.
    ``keep_start``: the shared option, for the chosen method (None: unset). Only what the
    form sets is passed: everything else keeps the recipe's or the engine's
    default. Every value is checked here before any work, whatever sent it (the
    page's widgets or a hand-made API call): a choice against the input's
    choices, a number by the library's own models (their line, naming the form:
    the page shows it in its words with :func:`.guard.page_words`), sources, base
    and dataset as Hub ids or built-in benchmarks, a local path only with
    ``allow_local_paths`` (the server's disk is not the visitor's).
    """
    benchmark = _choice(benchmark, list(builtin.BENCHMARKS), "benchmark")
    recipe = builtin.BENCHMARKS[benchmark].RECIPE
    source_kind = _choice(source_kind, [BUILTIN, REPO_IDS], "source_kind")
    target_kind = _choice(target_kind, [BENCHMARK, DATASET], "target_kind")
    method = _choice(method, sorted(METHODS), "method")
    info = find_method(method)
    for name, value in (("compare", compare), ("keep_start", keep_start)):
        if not isinstance(value, bool) and not (name == "keep_start" and value is None):
            raise refused(name, value, "should be ticked or not (true or false)")
    options: dict[str, Any] = {"initial_epochs": initial_epochs, "finetune_epochs": finetune_epochs, "seed": seed}
    if keep_start is not None:
        options["keep_start"] = keep_start
    base, dataset = _text(base, "base"), _text(dataset, "dataset")
    dataset_domain, text_column = _text(dataset_domain, "target_domain"), _text(text_column, "text_column")
    # an emptied learning rate is unset (a cleared number box sends None, an older page 0)
    if not (lr is None or lr == 0 or (isinstance(lr, str) and not lr.strip())):
        options["lr"] = lr
    if domain is not None:
        domain = _choice(domain, [d for _, d in _domain_choices(benchmark)], "domain")
    labels: dict[str, str] = {}
    home_for_builtin = None
    if source_kind == BUILTIN:
        target_domain = domain if domain is not None else recipe["target_domain"]
        offered = [tag for _, tag in _source_choices(target_domain, benchmark)]
        if not isinstance(builtin_sources, (list, tuple)):
            raise refused("builtin_sources", builtin_sources, f"tick some of {', '.join(offered)}")
        ticked = [_choice(tag, offered, "builtin_sources") for tag in builtin_sources]
        if not ticked:
            raise refused("builtin_sources", None, "tick at least one")
        root = builtin.sources_root(home, benchmark)
        refs = []
        # merge order is the list's (the recipe's), whatever order the boxes were ticked in
        for tag in sorted(set(ticked), key=offered.index):
            ref = str(root / tag)
            refs.append(ref)
            labels[ref] = builtin.source_label(int(tag[1:]), benchmark)
        home_for_builtin = home
        if info.needs_base:
            options["base"] = str(root / "base")  # the shared starting point the built-in sources came from
    else:
        refs = [check_model_ref(r, "repo_ids", allow_local=allow_local_paths) for r in _refs(_text(repo_ids,
                                                                                                  "repo_ids"))]
        if not refs:
            raise refused("repo_ids", None, "type at least one Hub repo id (org/name), one per line")
        if base:
            options["base"] = check_model_ref(base, "base", allow_local=allow_local_paths)
    if target_kind == BENCHMARK:
        target = benchmark
        options["target_domain"] = str(domain if domain is not None else recipe["target_domain"])
    else:
        if not dataset:
            raise refused("dataset", None, "type a Hub dataset id (name or org/name)")
        target = check_dataset(dataset, "dataset", allow_local=allow_local_paths,
                               builtins=sorted({*BUILTIN_RECIPES, *builtin_dataset_names()}))
        if dataset_domain:
            options["target_domain"] = dataset_domain
        if text_column:  # a text target: its texts' column instead of images'
            options["text_column"] = text_column
        else:
            options["image_column"] = _text(image_column, "image_column") or "image"
        options["label_column"] = _text(label_column, "label_column") or "label"
    options, params = _checked(method, options, params or {})
    for name in ("initial_epochs", "finetune_epochs"):
        if not 0 <= options[name] <= MAX_EPOCHS:
            raise refused(name, options[name], f"the page takes 0 to {MAX_EPOCHS}")
    return RunSpec(sources=tuple(refs), target=target, method=method, options=options, params=params,
                   labels=labels, compare=compare, builtin_home=home_for_builtin,
                   builtin_benchmark=benchmark)


def _checked(method: str, options: dict[str, Any],
             params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``options`` and ``method``'s ``params`` validated by :func:`hf_grasp.plan.options.resolve` (the CLI's
    checks and error line, naming the form); returns those set, as validated (``"0, 0.5"`` -> a tuple).

    A text value is text for pydantic to convert, as the command line's is (a number box's text sent past the
    page's widgets is refused by the same check); an empty one (or a cleared number) is unset.
    """
    params = {n: (v.strip() or None) if isinstance(v, str) else v for n, v in params.items()}
    given = {**options, **params}
    typed = {n: v for n, v in given.items() if not isinstance(v, str)}
    texts = {n: v for n, v in given.items() if isinstance(v, str)}
    # complete=False: rules across options (the license's) wait for the recipe's layer in from_pretrained
    shared, own = resolve(method, [Layer(typed, origin=FORM), Layer(texts, origin=FORM, text=True)],
                          methods=METHODS, complete=False)
    return ({n: getattr(shared, n) for n in options},
            {n: getattr(own, n) for n, v in params.items() if v is not None})


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


#: the checkbox of the shared option keep_start: the recommended method's value when it is chosen, else off
_KEEP_START_INFO = ("a fine-tuning round may end on the state it started from, when no epoch beats it on "
                    "validation (for the method chosen; the comparison's rows keep their own)")
HEATMAP_LABEL = "alignment per tensor (rows: sources; ● transferred)"
TRANSFER_LABEL = "each source: alone, and what moved from it"


def _keep_start(method: str) -> bool:
    """The keep_start box's value for ``method``: the recommended options' when it is the recommended method."""
    return bool(RECOMMENDED_OPTIONS.get("keep_start", False)) if method == RECOMMENDED_METHOD else False


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
    """The CLI's one line (``error: ...``) in the page's words (its inputs' labels, never a flag), shown."""
    return gr.update(value=_line(f"error: {page_words(str(e))}", error=True), visible=True)


def build_demo(home: str | Path, *, allow_local_paths: bool = False) -> gr.Blocks:
    """The Space's page; ``home`` holds the built-in sources and every session's run directory.

    ``allow_local_paths``: sources, base and dataset may be paths on the server's disk (a page for its own
    machine, ``hf-grasp space --allow-local-paths``); off, they are Hub ids or built-in benchmarks only.
    Run directories live under ``home/runs/<this page>/``: removed :data:`SESSION_SECONDS` after their last
    change (looked for every :data:`SWEEP_SECONDS`) and all of them when the page is closed (``demo.close()``,
    which :func:`hf_grasp.apps.space.launch` calls at shutdown).
    """
    home = Path(home)
    runs = home / "runs" / uuid.uuid4().hex  # this page's alone: another server on the same home keeps its own
    runs.mkdir(parents=True, exist_ok=True)
    recipe_domain = builtin.BENCHMARKS[builtin.DIGITS].RECIPE["target_domain"]
    paths = " or local paths" if allow_local_paths else ""
    # analytics off: the page reports nothing to gradio's servers about its visitors. delete_cache: the copies
    # gradio serves (the zip, the heatmap, uploads) go by the run directories' rule
    with gr.Blocks(title="hf-grasp: merge image and text classifiers with GRASP", analytics_enabled=False,
                   delete_cache=(SWEEP_SECONDS, SESSION_SECONDS)) as demo:
        run = gr.State(None, time_to_live=SESSION_SECONDS, delete_callback=_forget)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=2):
                benchmark = gr.Radio(BENCHMARK_CHOICES, value=builtin.DIGITS, label=LABELS["benchmark"],
                                     elem_id="benchmark", info="its built-in sources and target domains")
                source_kind = gr.Radio([(BUILTIN, BUILTIN), (f"Hub repo ids{paths}", REPO_IDS)], value=BUILTIN,
                                       label=LABELS["source_kind"], elem_id="source-kind")
                builtin_sources = gr.CheckboxGroup(
                    _source_choices(recipe_domain), value=[v for _, v in _source_choices(recipe_domain)],
                    label=LABELS["builtin_sources"], elem_id="builtin-sources",
                    info=BUILTIN_INFO[builtin.DIGITS])
                repo_ids = gr.Textbox(label=LABELS["repo_ids"], info=f"Hub repo ids{paths}, one per line, in merge "
                                      "order", placeholder="org/name\norg/name@revision\nhf-hub:org/name", lines=4,
                                      visible=False, elem_id="repo-ids")
                target_kind = gr.Radio([(BENCHMARK, BENCHMARK), (f"a Hub dataset{paths}", DATASET)],
                                       value=BENCHMARK,
                                       label=LABELS["target_kind"], elem_id="target-kind")
                domain = gr.Dropdown(_domain_choices(), value=recipe_domain, label=LABELS["domain"],
                                     info="the benchmark's domain to merge for", elem_id="domain")
                with gr.Group(visible=False) as dataset_box:
                    dataset = gr.Textbox(label=LABELS["dataset"], elem_id="dataset",
                                         info=f"a Hub dataset id{paths} (train and test splits), or a built-in "
                                              "benchmark's name")
                    dataset_domain = gr.Textbox(label=LABELS["target_domain"], elem_id="dataset-domain",
                                                info="optional: keeps the rows whose 'domain' column holds it")
                    with gr.Row():
                        image_column = gr.Textbox("image", label=LABELS["image_column"])
                        text_column = gr.Textbox("", label=LABELS["text_column"], elem_id="text-column",
                                                 info="a text target: its texts' column (then no image column)")
                        label_column = gr.Textbox("label", label=LABELS["label_column"], elem_id="label-column")
                method = gr.Dropdown(sorted(METHODS), value=DEFAULT_METHOD, label=LABELS["method"], elem_id="method")
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
                    initial_epochs = gr.Slider(0, MAX_EPOCHS, value=2, step=1, label=LABELS["initial_epochs"],
                                               elem_id="initial-epochs")
                    finetune_epochs = gr.Slider(0, MAX_EPOCHS, value=1, step=1, label=LABELS["finetune_epochs"],
                                                elem_id="finetune-epochs")
                with gr.Accordion("more", open=False):
                    compare = gr.Checkbox(True, label=LABELS["compare"], elem_id="compare",
                                          info="also run GRASP, the recommended method, the best single source and "
                                               "the ensemble on the same sources, seed and splits (the table's rows)")
                    keep_start = gr.Checkbox(_keep_start(DEFAULT_METHOD), label=LABELS["keep_start"],
                                             elem_id="keep-start", info=_KEEP_START_INFO)
                    base = gr.Textbox(label=LABELS["base"], elem_id="base", info="the sources' shared starting "
                                      f"point, a Hub repo id{paths} (task-vector methods, repo-id sources)")
                    lr = gr.Number(None, label=LABELS["lr"], info="empty: the recipe's, else 5e-5", elem_id="lr")
                    seed = gr.Number(0, precision=0, label=LABELS["seed"], elem_id="seed")
                with gr.Row():
                    merge_btn = gr.Button("Merge", variant="primary", elem_id="merge")
                    cancel_btn = gr.Button("Cancel", elem_id="cancel")
            with gr.Column(scale=3):
                error = gr.HTML(visible=False, elem_id="error")
                board = gr.Dataframe(headers=["source", "status", "detail"], label="progress per source",
                                     interactive=False, elem_id="progress", wrap=True)
                log_box = gr.Textbox(label="log (the lines the CLI prints)", lines=5, max_lines=12,
                                     interactive=False, elem_id="log")
                with gr.Column(visible=False) as result_box:
                    summary = gr.Markdown(elem_id="summary")
                    accuracy = gr.Dataframe(headers=results.ACCURACY_COLUMNS, label="same sources, seed and splits: "
                                            "accuracy on the target's validation and test splits", interactive=False,
                                            elem_id="accuracy-table", wrap=True,
                                            column_widths=["24%", "14%", "12%", "13%", "37%"])
                    verdict = gr.Markdown(elem_id="verdict")
                    chart = gr.Image(label="validation (hatched) and test accuracy", type="filepath",
                                     elem_id="accuracy-chart", interactive=False, show_label=False)
                    heatmap = gr.Image(label=HEATMAP_LABEL, type="filepath", elem_id="heatmap", interactive=False)
                    transfer = gr.Dataframe(headers=results.TRANSFER_COLUMNS, label=TRANSFER_LABEL,
                                            interactive=False, elem_id="transfer-table")
                    gr.Markdown("### Try the merged model")
                    with gr.Row() as image_try:
                        examples = gr.Gallery(label="the target's test images (click one)", columns=6, height=240,
                                              allow_preview=False, elem_id="examples")
                        with gr.Column():
                            image = gr.Image(type="pil", label="or upload an image", sources=["upload", "clipboard"],
                                             height=180, elem_id="try-image")
                            classify_btn = gr.Button("Classify", elem_id="classify")
                    with gr.Column(visible=False) as text_try:
                        text_examples = gr.Dropdown([], label="the target's test texts (pick one)",
                                                    elem_id="text-examples")
                        text_in = gr.Textbox(label="or type a text", lines=2, elem_id="try-text")
                        classify_text_btn = gr.Button("Classify the text", elem_id="classify-text")
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
        form = {"benchmark": benchmark, "text_column": text_column, "source_kind": source_kind,
                "builtin_sources": builtin_sources, "repo_ids": repo_ids,
                "target_kind": target_kind, "domain": domain, "dataset": dataset, "dataset_domain": dataset_domain,
                "image_column": image_column, "label_column": label_column, "method": method,
                "initial_epochs": initial_epochs, "finetune_epochs": finetune_epochs, "base": base, "lr": lr,
                "seed": seed, "compare": compare, "keep_start": keep_start}
        merge_inputs = {run, *form.values(), *(c for inputs in param_inputs.values() for c in inputs.values())}
        shown = [error, board, log_box, result_box, summary, accuracy, verdict, chart, heatmap, transfer, examples,
                 image, truth, prediction, download, push_result, run, image_try, text_try, text_examples, text_in]

        def on_merge(values: dict, progress=gr.Progress()):
            _forget(values[run])  # this session's earlier run: its files go now
            yield {error: gr.update(visible=False), result_box: gr.update(visible=False), run: None,
                   board: [], log_box: ""}
            try:
                fields = {name: values[c] for name, c in form.items()}
                params = {name: values[c] for name, c in param_inputs.get(fields["method"], {}).items()}
                spec = spec_from_form(home, **fields, params=params, allow_local_paths=allow_local_paths)
                progress(0, desc="starting")
                sweep_runs(runs, SESSION_SECONDS)
                # closed with on_merge when the visitor cancels or leaves (gradio closes this generator): the
                # run's worker then stops and its directory goes
                with contextlib.closing(run_merge(spec, runs / uuid.uuid4().hex)) as steps:
                    for item in steps:
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
            whose = results.scored_by(outcome)
            return {result_box: gr.update(visible=True), summary: results.summary(outcome),
                    accuracy: results.accuracy_rows(outcome), verdict: results.verdict(outcome),
                    chart: gr.update(value=str(outcome.chart) if outcome.chart else None,
                                     visible=outcome.chart is not None),
                    heatmap: gr.update(value=str(outcome.heatmap) if outcome.heatmap else None,
                                       label=f"{HEATMAP_LABEL}, of {whose}"),
                    transfer: gr.update(value=results.transfer_rows(outcome), label=f"{TRANSFER_LABEL}, in {whose}"),
                    **_try_area(outcome), truth: "", prediction: None, download: str(outcome.zip_path),
                    push_result: "", run: outcome}

        def _try_area(outcome: RunOutcome) -> dict:
            """The examples to try, as images or as texts: whichever the target holds."""
            text = outcome.modality == "text"
            picks = [(f"[{outcome.label_names[y]}] {t}", i) for i, (t, y) in enumerate(outcome.examples)] if text \
                else []
            return {image_try: gr.update(visible=not text), text_try: gr.update(visible=text),
                    examples: [] if text else [(_display(im), f"label {outcome.label_names[y]}")
                                               for im, y in outcome.examples],
                    image: None, text_examples: gr.update(choices=picks, value=None), text_in: ""}

        def on_pick(outcome: RunOutcome | None, evt: gr.SelectData):
            if outcome is None:
                return gr.update(), "", None
            im, y = outcome.examples[evt.index]
            return _display(im), f"true label: **{outcome.label_names[y]}**", classify(outcome, im)

        def on_classify(outcome: RunOutcome | None, im):
            if outcome is None or im is None:
                return "error: merge first, then pick or upload an image", None
            try:
                return "uploaded image", classify(outcome, im)
            except GraspError as e:  # a call past the page's widgets: an image for a text classifier
                return f"error: {e}", None

        def on_pick_text(outcome: RunOutcome | None, index: int | None):
            if outcome is None or index is None:
                return gr.update(), "", None
            text, y = outcome.examples[int(index)]
            return text, f"true label: **{outcome.label_names[y]}**", classify(outcome, text)

        def on_classify_text(outcome: RunOutcome | None, text: str):
            if outcome is None or not (text or "").strip():
                return "error: merge first, then pick or type a text", None
            try:
                return "typed text", classify(outcome, text)
            except GraspError as e:  # a call past the page's widgets: a text for an image classifier
                return f"error: {e}", None

        def on_cancel():
            return gr.update(value=_line("cancelled: the merge stops at its next step; nothing of it is kept"),
                             visible=True)

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
                    method_info: _method_text(name), keep_start: gr.update(value=_keep_start(name))}

        def on_domain(name: str, d: int):
            choices = _source_choices(int(d), name)
            return gr.update(choices=choices, value=[v for _, v in choices])

        def on_benchmark(name: str):
            start = builtin.BENCHMARKS[name].RECIPE["target_domain"]
            choices = _source_choices(start, name)
            return (gr.update(choices=choices, value=[v for _, v in choices], info=BUILTIN_INFO[name]),
                    gr.update(choices=_domain_choices(name), value=start))

        source_kind.change(lambda k: (gr.update(visible=k == BUILTIN), gr.update(visible=k == REPO_IDS)),
                           source_kind, [builtin_sources, repo_ids], queue=False)
        target_kind.change(lambda k: (gr.update(visible=k == BENCHMARK), gr.update(visible=k == DATASET)),
                           target_kind, [domain, dataset_box], queue=False)
        benchmark.input(on_benchmark, benchmark, [builtin_sources, domain], queue=False)
        domain.change(on_domain, [benchmark, domain], builtin_sources, queue=False)
        method.change(on_method, method, [*param_boxes.values(), method_info, keep_start], queue=False)
        # one merge at a time in this process (the queue shows the others their place); a run is CPU-bound.
        # preprocess=False: the values as sent, checked by spec_from_form in the page's words (gradio's own checks
        # fail on a text in a number input with a bare "Error", and name no input)
        merging = merge_btn.click(on_merge, merge_inputs, shown, concurrency_limit=1, concurrency_id="merge",
                                  preprocess=False)
        # gradio closes the merge's generator: on_merge closes run_merge's, which stops the worker (session.py)
        cancel_btn.click(on_cancel, None, [error], cancels=[merging], queue=False)
        examples.select(on_pick, run, [image, truth, prediction], concurrency_limit=4)
        classify_btn.click(on_classify, [run, image], [truth, prediction], concurrency_limit=4)
        text_examples.input(on_pick_text, [run, text_examples], [text_in, truth, prediction], concurrency_limit=4)
        classify_text_btn.click(on_classify_text, [run, text_in], [truth, prediction], concurrency_limit=4)
        push_btn.click(on_push, [run, push_repo, push_token, push_private], [push_result, push_token],
                       api_visibility="private")
    _sweep_while_open(demo, runs)
    return demo


def _sweep_while_open(demo: gr.Blocks, runs: Path) -> None:
    """Remove ``runs``' directories past :data:`SESSION_SECONDS` every :data:`SWEEP_SECONDS` while ``demo`` is
    open (and other pages' on the same home, past that age: a server killed before its close left them), and
    all of ``runs`` when it is closed (``demo.close()``)."""
    closed = threading.Event()

    def sweep() -> None:
        while True:
            sweep_runs(runs, SESSION_SECONDS)
            sweep_runs(runs.parent, SESSION_SECONDS)
            if closed.wait(SWEEP_SECONDS):
                return

    threading.Thread(target=sweep, name="hf-grasp-space-sweep", daemon=True).start()
    close = demo.close

    def close_and_remove(*args, **kwargs) -> None:
        close(*args, **kwargs)
        closed.set()
        shutil.rmtree(runs, ignore_errors=True)

    demo.close = close_and_remove  # an instance's method: gradio's own close, then this page's files
