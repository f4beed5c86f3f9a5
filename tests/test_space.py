"""The Space page works in a real headless browser (the exported Space folder: tests/test_packaging.py).

The browser test starts ``hf-grasp space`` on 127.0.0.1 (a free port, its own
HF_HOME, offline), drives it with Playwright through Debian's chromium, and
checks what the page shows against what the run wrote: the comparison table
against ``grasp_report.json`` from the zip the page hands out and the
comparison's reports beside it, the prediction against the downloaded model
loaded with plain transformers. Screenshots go to
the test's tmp directory (their paths are printed).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import merge_fails
from hf_grasp.apps.bench import compare
from hf_grasp.methods.catalog import RECOMMENDED_METHOD, RECOMMENDED_OPTIONS
from hf_grasp.output.report import MergeReport
from hf_grasp.runtime.errors import GraspError

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TOKEN = "hf_pageTestTokenNeverShown0123456789"


def test_space_without_gradio_is_one_error_line():
    code = "import sys; sys.modules['gradio'] = None; from hf_grasp.apps.cli import main; sys.exit(main(['space']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: the Space needs gradio, which the 'space' extra installs: pip install 'hf-grasp[space]'"]


# ------------------------------------------------------------------------------------------------ the browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def page_env(tmp_path: Path, **extra: str) -> dict:
    """The page's environment: its own HF_HOME, offline, no analytics, and torch's threads left to the page."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_DISABLE_TELEMETRY": "1", "TQDM_DISABLE": "1", **extra}
    env.pop("OMP_NUM_THREADS", None)  # the page's own thread setting, as a Space runs it
    return env


@contextlib.contextmanager
def served(argv: list, port: int, log: Path, *, env: dict, cwd: Path | None = None, wait: float = 120):
    """Start ``argv`` (a page serving on ``port`` of 127.0.0.1), wait until it answers, yield its URL; SIGTERM
    (then kill) at the end. Its output goes to ``log``, quoted when it dies or never answers."""
    with open(log, "w") as out:
        proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + wait
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "the page never answered:\n" + log.read_text()[-3000:]
                time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def space(tmp_path):
    """``hf-grasp space`` on a free port of 127.0.0.1 with its own HF_HOME and home; yields (url, home, log)."""
    port, home, log = _free_port(), tmp_path / "space-home", tmp_path / "space.log"
    argv = [sys.executable, "-m", "hf_grasp.apps.cli", "space", "--port", str(port), "--home", str(home)]
    with served(argv, port, log, env=page_env(tmp_path)) as url:
        yield url, home, log


def _builtin_label(ref: str) -> str:
    """How the page names a built-in source (``d3 (45°)``)."""
    from hf_grasp.apps.space.builtin import source_label

    return source_label(int(re.search(r"d(\d)$", ref)[1]))


def _rows(page, elem_id: str) -> list[list[str]]:
    """The body rows of a gr.Dataframe, as the page shows them (by ARIA role: its DOM also holds hidden copies
    of the cells, for sizing)."""
    return page.eval_on_selector_all(
        f"#{elem_id} [role=row]",
        "rows => rows.map(r => Array.from(r.querySelectorAll('[role=gridcell]')).map(c => c.innerText.trim()))"
        ".filter(cells => cells.length)")


def _digit_png(path: Path) -> Path:
    """A hand-drawn '7' on black, 28x28 RGB, like the benchmark's digits."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (28, 28))
    ImageDraw.Draw(im).line([(6, 7), (21, 7), (11, 23)], fill=(255, 255, 255), width=3)
    im.save(path)
    return path


def _plain_prediction(folder: Path, image: Path) -> tuple[str, float]:
    """Top class and probability of the downloaded model, loaded with plain transformers (no hf_grasp)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(images=[Image.open(image).convert("RGB")],
                                                          return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=pixels).logits, -1)[0]
    best = int(probs.argmax())
    return model.config.id2label[best], float(probs[best])


@pytest.mark.slow
def test_page_merges_shows_the_report_classifies_and_refuses_bad_input(space, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium: apt-get install chromium, which .ci/run does as root)")
    from playwright.sync_api import expect, sync_playwright

    url, home, log = space
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def shot(page, name):
        path = shots / f"{name}.png"
        page.screenshot(path=path, full_page=True)
        print(f"screenshot: {path}")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        page.goto(url)
        page.wait_for_selector("#merge")
        shot(page, "1-form")

        # the default run: built-in sources d0 d4 d1 d3 d5 onto domain 2, 2 + 1 epochs, the recommended method, and
        # beside it GRASP, the best source and the ensemble
        started = time.time()
        page.click("#merge")
        expect(page.locator("#verdict")).to_contain_text("Best single model on validation: ", timeout=240_000)
        print(f"default run, first use (sources made on the way): {time.time() - started:.1f} s")
        expect(page.locator("#heatmap img")).to_be_visible()
        expect(page.locator("#accuracy-chart img")).to_be_visible()
        shot(page, "2-results")

        # what the page shows is what the run wrote: the report inside the zip the page hands out, and the
        # comparison's reports beside it
        with page.expect_download() as info:
            page.locator("#download a").first.click()
        archive = tmp_path / "merged.zip"
        info.value.save_as(archive)
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp_path / "unzipped")
        folder = tmp_path / "unzipped" / "merged"
        report = json.loads((folder / "grasp_report.json").read_text())
        (page_runs,) = (home / "runs").iterdir()  # this server's folder; its runs inside
        (run,) = page_runs.iterdir()
        assert (run / "merged" / "grasp_report.json").read_text() == (folder / "grasp_report.json").read_text()
        assert report["method"]["name"] == RECOMMENDED_METHOD
        assert {k: report["options"][k] for k in RECOMMENDED_OPTIONS if k in report["options"]} == {
            k: v for k, v in RECOMMENDED_OPTIONS.items() if k in report["options"]}
        others = {role: json.loads((run / f"comparison-{role}.json").read_text())
                  for role in ("grasp", "best-source", "ensemble")}
        assert {r["method"]["name"] for r in others.values()} == {"grasp", "best-source", "ensemble"}

        # four rows: the recommended method (this run), GRASP, the best source, the ensemble; validation and test
        rows = _rows(page, "accuracy-table")
        assert len(rows) == 4, rows
        by_method = {"grasp": rows[0], RECOMMENDED_METHOD: rows[1], "best-source": rows[2], "ensemble": rows[3]}
        assert rows[0][0] == "grasp" and rows[1][0].startswith(RECOMMENDED_METHOD)
        assert rows[2][0].startswith("best-source: d") and rows[3][0] == "ensemble of 5"
        for method, r in by_method.items():
            saved = report if method == RECOMMENDED_METHOD else others[method]
            assert float(r[1]) == round(100 * saved["final"]["validation"]["accuracy"], 2), (method, r)
            assert float(r[2]) == round(100 * saved["final"]["test"]["accuracy"], 2), (method, r)
            assert r[3] == ("no (5 models)" if method == "ensemble" else "yes")
            assert all(saved["final"][split]["n"] == n for split, n in (("validation", 100), ("test", 300)))
        # the sentence under the table: made from these numbers, the single model best on validation named
        expected = compare.Comparison([compare._row(MergeReport.from_dict(saved), roles, _builtin_label)
                                       for saved, roles in ((others["grasp"], ("grasp",)),
                                                            (report, ("recommended",)),
                                                            (others["best-source"], ("best-source",)),
                                                            (others["ensemble"], ("ensemble",)))]).sentence
        expect(page.locator("#verdict")).to_have_text(expected)
        single = {r[0]: float(r[1]) for m, r in by_method.items() if m != "ensemble"}
        assert any(expected.startswith(f"Best single model on validation: {name}, ")
                   for name, val in single.items() if val == max(single.values())), expected

        # each source alone (the run's own measure, else the ensemble run's), and what moved: the GRASP run's
        moved = {r[0].split()[0]: r for r in _rows(page, "transfer-table")}
        alone = {s["ref"]: s["metrics_alone"] for s in [*others["ensemble"]["sources"], *report["sources"]]
                 if s["metrics_alone"]}
        for src in others["grasp"]["sources"]:
            row = moved[re.search(r"d\d$", src["ref"])[0]]
            assert float(row[2]) == round(100 * alone[src["ref"]]["accuracy"], 2)
            if src["role"] == "init":
                continue
            counts = src["transferred"]
            assert row[3] == f"{sum(1 for v in counts.values() if v)}/{len(counts)}"
            assert float(row[4]) == round(src["fraction_transferred"], 3)
        expect(page.locator("#transfer-table")).to_contain_text("the GRASP run beside it")
        assert [r[1] for r in _rows(page, "progress")] == ["done"] * 5

        # try it: a test image from the gallery, then an uploaded image checked against plain transformers
        page.locator("#examples button.thumbnail-item").first.click()
        expect(page.locator("#truth")).to_contain_text("true label:")
        expect(page.locator("#prediction")).to_contain_text("%")
        digit = _digit_png(tmp_path / "seven.png")
        page.locator("#try-image input[type=file]").set_input_files(str(digit))
        page.wait_for_timeout(500)
        page.click("#classify")
        expect(page.locator("#truth")).to_have_text("uploaded image")
        label, prob = _plain_prediction(folder, digit)
        top = page.locator("#prediction meter").first  # gr.Label: one meter per class, best first
        expect(top).to_have_attribute("aria-label", label)
        assert float(top.get_attribute("value")) == pytest.approx(prob, abs=1e-5)
        shot(page, "3-classified")

        # a second visitor sees none of it: the run is this session's state
        other = browser.new_context().new_page()
        other.goto(url)
        other.wait_for_selector("#merge")
        expect(other.locator("#accuracy-table")).to_be_hidden()
        expect(other.locator("#progress")).not_to_contain_text("done")
        other.context.close()

        # push: offline, it fails with the CLI's line; the token is cleared and never shown or logged
        page.fill("#push-repo textarea, #push-repo input", "me/merged")
        page.fill("#push-token input", TOKEN)
        page.click("#push")
        expect(page.locator("#push-result")).to_contain_text("error: pushing to Hub repo me/merged failed")
        expect(page.locator("#push-token input")).to_have_value("")
        assert TOKEN not in page.content() and TOKEN not in log.read_text()

        # bad input: the same one line the command line prints
        expected = merge_fails(tmp_path, ["nobody/no-such-model", "nobody/no-such-model-2"])
        page.get_by_label("Hub repo ids").check()
        page.fill("#repo-ids textarea", "nobody/no-such-model\nnobody/no-such-model-2")
        page.click("#merge")
        expect(page.locator("#error")).to_have_text(expected, timeout=60_000)
        expect(page.locator("#accuracy-table")).to_be_hidden()
        shot(page, "4-error")

        # a method's own parameters show while it is chosen; an out-of-range one is the CLI's line (naming the form)
        expect(page.locator("#param-fisher-fisher_examples")).to_be_hidden()
        page.locator("#method input").click()
        page.get_by_role("option", name="fisher", exact=True).click()
        expect(page.locator("#param-fisher-fisher_examples")).to_be_visible()
        expect(page.locator("#param-grasp-tau")).to_be_hidden()
        page.fill("#param-fisher-fisher_examples input", "0")
        page.click("#merge")
        cli = merge_fails(tmp_path, ["nobody/a", "nobody/b"], "--method", "fisher", "--fisher-examples", "0")
        expect(page.locator("#error")).to_have_text(
            cli.replace("option fisher_examples='0' (from the command line)", '"fisher_examples" (0)'))
        shot(page, "5-parameter-error")

        # the text benchmark beside the image one: its built-in sources (the page's prewarm makes them after the
        # digits'), its merge, a test text picked and a typed one classified as plain transformers does
        page.locator("#benchmark").get_by_label("tweet-eras: tweet sentiment, respelled (text)").check()
        page.locator("#source-kind").get_by_label("built-in sources", exact=True).check()
        expect(page.locator("#builtin-sources")).to_contain_text("d5 (100% of words in ROT13)")
        page.locator("#method input").click()
        page.get_by_role("option", name="grasp", exact=True).click()
        page.get_by_role("button", name="more").click()  # the advanced options, rendered once opened
        expect(page.locator("#keep-start input")).not_to_be_checked()  # GRASP as the paper defines it
        page.click("#merge")
        expect(page.locator("#verdict")).to_contain_text("Best single model on validation: ", timeout=300_000)
        expect(page.locator("#summary")).to_contain_text("on 300 texts")
        # GRASP is the run itself here (not run twice): still four rows
        assert [r[0] for r in _rows(page, "accuracy-table")][0] == "grasp"
        assert len(_rows(page, "accuracy-table")) == 4
        expect(page.locator("#examples")).to_be_hidden()
        page.locator("#text-examples input").click()
        page.get_by_role("option").first.click()
        expect(page.locator("#truth")).to_contain_text("true label:")
        expect(page.locator("#prediction")).to_contain_text("%")
        typed = "the flight was late and the crew was rude"
        page.fill("#try-text textarea", typed)
        page.wait_for_timeout(500)  # as for the upload above: the page hands the typed value over first
        page.click("#classify-text")
        expect(page.locator("#truth")).to_have_text("typed text")
        (text_run,) = [r for r in page_runs.iterdir() if (r / "merged" / "tokenizer.json").is_file()]
        from transformers import pipeline

        best = pipeline("text-classification", model=str(text_run / "merged"))([typed])[0]
        top = page.locator("#prediction meter").first
        expect(top).to_have_attribute("aria-label", best["label"])
        assert float(top.get_attribute("value")) == pytest.approx(best["score"], abs=1e-5)
        shot(page, "6-text")
        browser.close()


# ------------------------------------------------------------------------------------------------ without a browser


def test_the_form_passes_each_method_only_what_it_takes(tmp_path):
    pytest.importorskip("gradio")
    from hf_grasp.apps.space.builtin import sources_root
    from hf_grasp.apps.space.ui import BUILTIN, DATASET, BENCHMARK, REPO_IDS, spec_from_form

    # ticked d4 first: the merge order is still the list's (the recipe's: d0 before d4)
    form = dict(source_kind=BUILTIN, builtin_sources=["d4", "d0"], repo_ids=None, target_kind=BENCHMARK, domain=3,
                dataset=None, dataset_domain=None, image_column="image", label_column="label", method="grasp",
                initial_epochs=2, finetune_epochs=1, base=None, lr=None, seed=0, compare=True)
    # a cleared input (None) is unset: the recipe's or the method's default
    grasp = spec_from_form(tmp_path, **form, params={"tau": 0.5, "granularity": "row", "align_batches": None})
    root = sources_root(tmp_path)
    assert grasp.sources == (str(root / "d0"), str(root / "d4")) and grasp.target == "digits-eras"
    assert grasp.options == {"initial_epochs": 2, "finetune_epochs": 1, "seed": 0, "target_domain": "3"}
    assert grasp.params == {"tau": 0.5, "granularity": "row"}
    assert grasp.label(str(root / "d4")) == "d4 (60°)" and grasp.builtin_home == tmp_path
    # TIES gets its own parameters by name and works on task vectors: the built-ins' shared base
    ties = spec_from_form(tmp_path, **{**form, "method": "ties"}, params={"scaling": 0.5, "density": 0.3})
    assert ties.params == {"scaling": 0.5, "density": 0.3} and ties.options["base"] == str(root / "base")
    with pytest.raises(GraspError, match=r"^option tau \(from the form\) is a parameter of grasp, .*not of method"):
        spec_from_form(tmp_path, **{**form, "method": "ties"}, params={"tau": 0.5})
    # a text box holds text for pydantic to convert, as the command line does
    grid = spec_from_form(tmp_path, **{**form, "method": "sequential-ta"}, params={"ta_grid": " 0, 0.5 "})
    assert grid.params == {"ta_grid": (0.0, 0.5)}
    typed = spec_from_form(tmp_path, **{**form, "source_kind": REPO_IDS, "repo_ids": "org/a\norg/b@v1, ./c",
                                        "target_kind": DATASET, "dataset": " org/data ", "label_column": "y",
                                        "lr": 1e-3}, allow_local_paths=True)
    assert typed.sources == ("org/a", "org/b@v1", "./c") and typed.target == "org/data"
    assert typed.builtin_home is None and typed.options["label_column"] == "y" and typed.options["lr"] == 1e-3
    assert "target_domain" not in typed.options


def _page_inputs(demo) -> dict:
    """The built page's components by ``elem_id``."""
    return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}


def _handler(demo, name: str):
    """The page's event function named ``name`` (gradio's BlockFunction: its fn, inputs and outputs)."""
    (found,) = [f for f in demo.fns.values() if getattr(f.fn, "__name__", None) == name]  # a cancel's fn: None
    return found


def _inside(block) -> list:
    """Every block inside ``block`` (gradio wraps inputs in rows and forms)."""
    return [b for child in getattr(block, "children", []) for b in (child, *_inside(child))]


def _check_inputs(demo, method: str) -> None:
    """Every parameter of ``method`` has its input in the page, with the field's default, range or choices, in
    the method's box; the merge receives it; choosing the method shows that box alone."""
    import typing

    import gradio as gr

    from hf_grasp.apps.space.ui import DEFAULT_METHOD
    from hf_grasp.methods import METHODS

    page = _page_inputs(demo)
    merge = _handler(demo, "on_merge")
    assert merge.inputs_as_dict  # values reach the merge by component, never by position
    box = page[f"params-{method}"]
    assert box.visible is (method == DEFAULT_METHOD)
    for name, field in METHODS[method].params.model_fields.items():
        widget = page[f"param-{method}-{name}"]
        assert widget in merge.inputs and widget.label == name and field.description in widget.info
        assert widget in _inside(box), (method, name)
        bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
        if typing.get_origin(field.annotation) is typing.Literal:
            assert isinstance(widget, gr.Dropdown)
            assert [c[1] for c in widget.choices] == list(typing.get_args(field.annotation))
        elif field.annotation is bool:
            assert isinstance(widget, gr.Checkbox)
        elif field.annotation in (int, float) and len(bounds) == 2:
            assert isinstance(widget, gr.Slider)
            assert (widget.minimum, widget.maximum) == (bounds.get("ge", bounds.get("gt")),
                                                         bounds.get("le", bounds.get("lt")))
        elif field.annotation in (int, float):
            assert isinstance(widget, gr.Number) and widget.precision == (0 if field.annotation is int else None)
        else:
            assert isinstance(widget, gr.Textbox)
        if not isinstance(widget, gr.Textbox):
            assert widget.value == field.default
    shown = _handler(demo, "on_method").fn(method)
    assert {b.elem_id for b, update in shown.items() if isinstance(update, dict) and update.get("visible")} == {
        f"params-{method}"}


def test_every_registered_parameter_has_an_input(tmp_path):
    pytest.importorskip("gradio")
    from hf_grasp.apps.space.ui import build_demo
    from hf_grasp.methods import METHODS

    demo = build_demo(tmp_path)
    page = _page_inputs(demo)
    # the form starts on the recommended method, with its recommended options where the form has their input
    assert page["method"].value == RECOMMENDED_METHOD and [c[1] for c in page["method"].choices] == sorted(METHODS)
    assert page["keep-start"].value is bool(RECOMMENDED_OPTIONS.get("keep_start", False))
    assert page["compare"].value is True
    on_method = _handler(demo, "on_method").fn
    assert on_method("grasp")[page["keep-start"]]["value"] is False  # GRASP as the paper defines it
    assert on_method(RECOMMENDED_METHOD)[page["keep-start"]]["value"] is page["keep-start"].value
    for method, info in METHODS.items():
        if info.params.model_fields:
            _check_inputs(demo, method)
        else:
            assert f"params-{method}" not in page
    assert page["param-sequential-ta-ta_grid"].value == "0.0, 0.2, 0.4, 0.6, 0.8, 1.0"
    assert page["param-ties-scaling"].value == 1.0 and page["param-task-arithmetic-scaling"].value == 0.3


def _merge_error(demo, **changed) -> str:
    """The page's error line after a merge with the page's initial values, ``changed`` (by elem_id) set."""
    merge = _handler(demo, "on_merge")
    values = {c: c.value for c in merge.inputs}
    for elem_id, value in changed.items():
        (c,) = [c for c in merge.inputs if getattr(c, "elem_id", None) == elem_id]
        values[c] = value
    steps = list(merge.fn(values))
    (error,) = [update for step in steps for c, update in step.items() if c.elem_id == "error" and update["visible"]]
    return html.unescape(re.sub(r"<[^>]+>", "", error["value"]))


def test_an_out_of_range_parameter_is_the_clis_one_line(tmp_path):
    pytest.importorskip("gradio")
    from hf_grasp.apps.space.ui import build_demo

    demo = build_demo(tmp_path / "home")
    line = _merge_error(demo, method="ties", **{"param-ties-density": 1.5})
    cli = merge_fails(tmp_path, ["nobody/a", "nobody/b"], "--method", "ties", "--density", "1.5")
    # the same check and words; the page names the input as it labels it where the CLI names the option
    assert line == cli.replace("option density='1.5' (from the command line)", '"density" (1.5)')
    assert line == 'error: "density" (1.5): input should be less than or equal to 1'
    assert _merge_error(demo, method="grasp", **{"param-grasp-align_batches": 0}) == (
        'error: "align_batches" (0): input should be greater than or equal to 1')
    assert not list((tmp_path / "home" / "runs").glob("*/*"))  # refused before any work


def test_a_method_registered_from_outside_gets_its_inputs(tmp_path):
    pytest.importorskip("gradio")
    from typing import Literal

    from hf_grasp.apps.space.ui import BUILTIN, BENCHMARK, build_demo, spec_from_form
    from hf_grasp.methods import METHODS, register_method
    from hf_grasp.plan.options import MethodParams, option

    class ThrowawayParams(MethodParams):
        strength: float = option(0.5, "How hard to pull.", gt=0, le=2)
        steps: int = option(3, "How many times.", ge=1)
        mode: Literal["soft", "hard"] = option("soft", "Which way.")
        verbose: bool = option(False, "Say more.")
        weights: tuple[float, ...] = option((0.5, 0.5), "Per-source weights (comma-separated).")

    register_method("throwaway-test", params=ThrowawayParams)(lambda ctx: None)
    try:
        demo = build_demo(tmp_path)
        assert "throwaway-test" in [c[1] for c in _page_inputs(demo)["method"].choices]
        _check_inputs(demo, "throwaway-test")
        assert _page_inputs(demo)["param-throwaway-test-weights"].value == "0.5, 0.5"
        spec = spec_from_form(tmp_path, source_kind=BUILTIN, builtin_sources=["d0"], repo_ids=None,
                              target_kind=BENCHMARK, domain=2, dataset=None, dataset_domain=None, image_column="image",
                              label_column="label", method="throwaway-test", initial_epochs=0, finetune_epochs=0,
                              base=None, lr=None, seed=0, compare=False,
                              params={"strength": 2.0, "steps": 4, "mode": "hard", "verbose": True})
        assert spec.params == {"strength": 2.0, "steps": 4, "mode": "hard", "verbose": True}
        assert _merge_error(demo, method="throwaway-test", **{"param-throwaway-test-strength": 0}) == (
            'error: "strength" (0): input should be greater than 0')
    finally:
        METHODS.pop("throwaway-test", None)


def test_progress_per_source_reads_the_log_lines():
    from hf_grasp.apps.space.session import RunSpec, SourceBoard

    spec = RunSpec(sources=("/x/d1", "org/m1", "org/m10"), target="t", labels={"/x/d1": "d1"})
    board = SourceBoard(spec)
    board.feed("initial fine-tune (/x/d1) epoch 1/2: train loss 0.4, val acc 90.00%")
    assert board.rows()[0] == ["d1", "fine-tuning", "epoch 1/2"]
    board.feed("init (/x/d1): val 90.00%, test 85.00%, 1.0 s")
    board.feed("fine-tune after org/m10 epoch 1/1: train loss 0.3, val acc 91.00%")
    assert board.rows() == [["d1", "done", "val 90.00%, test 85.00%, 1.0 s"], ["org/m1", "waiting", ""],
                            ["org/m10", "fine-tuning", "epoch 1/1"]]
    assert board.done == 1 and board.lines[0].startswith("initial fine-tune (d1) epoch 1/2")



def test_a_cancelled_run_stops_its_worker_and_leaves_nothing(tmp_path, monkeypatch):
    """Cancel (or a visitor who leaves) closes the run's generator: its worker stops at its next log line (or
    before its next run: the comparison's are several) instead of merging on for nobody; its directory goes."""
    import threading

    from hf_grasp import merger as merger_module
    from hf_grasp.apps.space import session
    from hf_grasp.runtime.progress import log

    epochs = []

    class Slow:  # a merge that logs an epoch every 20 ms for 4 s unless stopped
        def merge(self):
            for i in range(200):
                epochs.append(i)
                log.info("fine-tune after org/b epoch %d/200: train loss 0.1, val acc 90.00%%", i + 1)
                time.sleep(0.02)
            raise AssertionError("the run was not stopped")

    monkeypatch.setattr(merger_module.GraspMerger, "from_pretrained", classmethod(lambda cls, *a, **k: Slow()))
    run_dir = tmp_path / "run"
    steps = session.run_merge(session.RunSpec(sources=("org/a", "org/b"), target="t"), run_dir)
    ticks = [next(steps) for _ in range(5)]  # loading, merging, then epochs as they come
    assert ticks[-1].rows[1] == ["org/b", "fine-tuning", "epoch 3/200"]
    steps.close()  # what gradio does to the page's generator on Cancel; on_merge closes this one with it
    deadline = time.time() + 10
    while (run_dir.exists() or any(t.name == "hf-grasp-space-merge" for t in threading.enumerate())) and \
            time.time() < deadline:
        time.sleep(0.05)
    assert not run_dir.exists() and len(epochs) < 50, len(epochs)
    assert not any(t.name == "hf-grasp-space-merge" for t in threading.enumerate())
    assert run_dir not in session._running


# ------------------------------------------------------------------------------------------------ a public page


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """The test's tmp directory as the current one, holding ``org/name`` (a repo id that is also a directory)."""
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("ref", ["/etc", "./org/name", "../x", "~/x", "file:///etc", "local-dir:/etc", "org/name",
                                 "hf-hub:../x"])
def test_a_local_path_is_refused_unless_the_page_allows_it(in_tmp, ref):
    pytest.importorskip("gradio")
    from hf_grasp.apps.space.ui import BUILTIN, DATASET, BENCHMARK, REPO_IDS, build_demo, spec_from_form

    demo = build_demo(in_tmp / "home")
    repo = {"source-kind": REPO_IDS, "repo-ids": f"org/a\n{ref}"}
    assert _merge_error(demo, **repo) == (
        f'error: "source repo ids" ({ref!r}): a path on the server; this page takes Hub repo ids only (org/name)')
    assert _merge_error(demo, **{"source-kind": REPO_IDS, "repo-ids": "org/a", "base": ref}).startswith(
        f'error: "base" ({ref!r}): a path on the server;')
    assert _merge_error(demo, **{"target-kind": DATASET, "dataset": ref}).startswith(
        f'error: "dataset" ({ref!r}): a path on the server; this page takes Hub dataset ids')
    assert not list((in_tmp / "home" / "runs").glob("*/*"))  # refused before any work
    # the page says what it takes, and offers no path
    inputs = _page_inputs(demo)
    assert "local paths" not in str(inputs["source-kind"].choices) + inputs["repo-ids"].info
    # started with local paths allowed, the same values are taken
    form = dict(source_kind=REPO_IDS, builtin_sources=[], repo_ids=f"org/a\n{ref}", target_kind=BENCHMARK, domain=2,
                dataset=None, dataset_domain=None, image_column="image", label_column="label", method="grasp",
                initial_epochs=0, finetune_epochs=0, base=None, lr=None, seed=0, compare=False)
    assert spec_from_form(in_tmp, **form, allow_local_paths=True).sources == ("org/a", ref)
    assert spec_from_form(in_tmp, **{**form, "source_kind": BUILTIN, "builtin_sources": ["d0"]}).sources == (
        str(in_tmp / "sources-resnet-seed0" / "d0"),)  # the page's own built-in sources are its business


def test_the_exported_space_never_allows_local_paths():
    import ast
    import inspect

    from hf_grasp.apps import space
    from hf_grasp.apps.cli import build_parser
    from hf_grasp.apps.space.export import _template

    tree = ast.parse(_template("app.py"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "launch"]
    assert [(c.args, c.keywords) for c in calls] == [([], [])]  # launch(): the defaults
    assert [n.module for n in tree.body if isinstance(n, ast.ImportFrom)] == ["hf_grasp.apps.space"]
    assert inspect.signature(space.launch).parameters["allow_local_paths"].default is False
    assert build_parser(["space"]).parse_args(["space", "--allow-local-paths"]).allow_local_paths is True
    with pytest.raises(GraspError, match=r"^--allow-local-paths applies to the served page only"):
        space.run_from_args(build_parser(["space"]).parse_args(["space", "--export", "x", "--allow-local-paths"]))


def test_every_input_is_refused_in_the_forms_words(tmp_path):
    pytest.importorskip("gradio")
    from hf_grasp.apps.space.ui import DATASET, REPO_IDS, build_demo

    demo = build_demo(tmp_path / "home")
    # values as a hand-made API call sends them: the merge takes them unprocessed and checks them itself
    cases = {
        "a text τ": ({"method": "grasp", "param-grasp-tau": "abc"},
                     'error: "tau" (\'abc\'): input should be a valid number, unable to parse string as a number'),
        "a text learning rate": ({"lr": "fast"}, ('error: "learning rate" (\'fast\'): input should be a valid '
                                                  'number, unable to parse string as a number')),
        "a text seed": ({"seed": "x"}, ('error: "seed" (\'x\'): input should be a valid integer, unable to parse '
                                        'string as an integer')),
        "epochs past the slider": ({"initial-epochs": 1000}, 'error: "initial epochs" (1000): the page takes 0 to 10'),
        "no source": ({"source-kind": REPO_IDS, "repo-ids": " \n "},
                      'error: "source repo ids": type at least one Hub repo id (org/name), one per line'),
        "no built-in source": ({"builtin-sources": []}, 'error: "built-in sources": tick at least one'),
        "the target's own domain": ({"builtin-sources": ["d2"]},
                                    'error: "built-in sources" (\'d2\'): choose one of d0, d4, d1, d3, d5'),
        "a bad target": ({"target-kind": DATASET, "dataset": "a/b/c"}, ('error: "dataset" (\'a/b/c\'): not a Hub '
                         'dataset id (name or org/name) nor a built-in benchmark (clear10, clear100, digits-eras, '
                         'tweet-eras, yearbook)')),
        "no target": ({"target-kind": DATASET, "dataset": ""},
                      'error: "dataset": type a Hub dataset id (name or org/name)'),
        "an unknown target kind": ({"target-kind": "s3"},
                                   'error: "target" (\'s3\'): choose one of the built-in benchmark, a dataset'),
        "an unknown benchmark": ({"benchmark": "mnist"},
                                 'error: "benchmark" (\'mnist\'): choose one of digits-eras, tweet-eras'),
        "a text column that is no text": ({"target-kind": DATASET, "dataset": "org/d", "text-column": ["t"]},
                                          'error: "text column" ([\'t\']): should be text'),
        "a bad domain": ({"domain": "2"}, 'error: "target domain" (\'2\'): choose one of 0, 1, 2, 3, 4, 5'),
        "a keep-start that is no tick": ({"keep-start": "yes"},
                                         'error: "keep the start" (\'yes\'): should be ticked or not (true or false)'),
    }
    for case, (changed, line) in cases.items():
        assert _merge_error(demo, **changed) == line, case
    assert not list((tmp_path / "home" / "runs").glob("*/*"))  # refused before any work


def test_library_lines_name_the_pages_inputs_never_a_flag():
    from hf_grasp.apps.space.guard import page_words

    assert page_words("option lr='x' (from the form): input should be a valid number") == (
        '"learning rate" (\'x\'): input should be a valid number')
    assert page_words("option tau (from the form) is a parameter of grasp, not of method 'ties'") == (
        '"tau" is a parameter of grasp, not of method \'ties\'')
    assert page_words("lower the learning rate (--lr, now 5), or leave it out of --sources; --target-domain 3") == (
        'lower the learning rate ("learning rate", now 5), or leave it out of "sources"; "target domain" 3')
    # a flag the page has no input for is the command line's; a repo id's dashes are no flag
    assert page_words("pass --init a checkpoint (org/a--b)") == (
        "pass init (a command-line option, not on this page) a checkpoint (org/a--b)")
    assert page_words("option density=1.5 (from recipe x.yaml): too big") == (
        "option density=1.5 (from recipe x.yaml): too big")  # the recipe's, not a field of the page


def test_run_directories_go_after_their_age_and_when_the_page_closes(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    import threading

    from hf_grasp.apps.space import session, ui

    def fake_run(spec, run_dir):  # a run that leaves its directory, as a finished one does
        (run_dir / "merged").mkdir(parents=True)
        return iter(())

    monkeypatch.setattr(ui, "run_merge", fake_run)
    demo = ui.build_demo(tmp_path / "home")
    merge = _handler(demo, "on_merge")
    list(merge.fn({c: c.value for c in merge.inputs}))
    (page,) = (tmp_path / "home" / "runs").iterdir()
    (first,) = page.iterdir()
    # past the age, unless its merge is under way; the sweep runs before every merge and every SWEEP_SECONDS
    old = time.time() - ui.SESSION_SECONDS - 1
    os.utime(first, (old, old))
    session._running.add(first)
    assert session.sweep_runs(page, ui.SESSION_SECONDS) == []
    session._running.discard(first)
    list(merge.fn({c: c.value for c in merge.inputs}))
    (second,) = page.iterdir()
    assert second != first and not first.exists()
    # a page killed before its close: its folder goes with the others' sweep, once past the age
    stale = tmp_path / "home" / "runs" / "killed" / "run"
    stale.mkdir(parents=True)
    os.utime(stale.parent, (old, old))
    assert session.sweep_runs(tmp_path / "home" / "runs", ui.SESSION_SECONDS) == [stale.parent]
    assert any(t.name == "hf-grasp-space-sweep" for t in threading.enumerate())
    demo.close()
    assert list((tmp_path / "home" / "runs").iterdir()) == []


def test_the_served_page_removes_its_runs_when_stopped(tmp_path):
    """SIGTERM (how a Space or a service manager stops it) closes the page, which removes its run folder."""
    pytest.importorskip("gradio")
    port, home, log = _free_port(), tmp_path / "space-home", tmp_path / "space.log"
    argv = [sys.executable, "-m", "hf_grasp.apps.cli", "space", "--port", str(port), "--home", str(home)]
    with served(argv, port, log, env=page_env(tmp_path)):
        (page,) = (home / "runs").iterdir()
        (page / "a-run" / "merged").mkdir(parents=True)  # what a finished run leaves (2.8 MB of it)
    assert not page.exists(), log.read_text()[-3000:]


def test_the_text_benchmark_merges_and_classifies_typed_text(tmp_path):
    """tweet-eras beside digits-eras: choosing it offers its eras and sources; its merge (and its ensemble) classify
    a test text and a typed one as plain transformers' pipeline does with the folder the page hands out."""
    pytest.importorskip("gradio")
    from PIL import Image
    from transformers import pipeline

    from hf_grasp.apps.bench.make_sources import make_sources
    from hf_grasp.apps.space import builtin, results
    from hf_grasp.apps.space.session import classify, run_merge
    from hf_grasp.apps.space.ui import BENCHMARK, BUILTIN, build_demo, spec_from_form

    home = tmp_path / "home"
    # the page makes them with the recipe on first use (about a minute); one epoch each is enough to merge here
    make_sources(builtin.sources_root(home, "tweet-eras"), benchmark="tweet-eras", target_domain=None,
                 source_epochs=1, seed=builtin.SEED)
    demo = build_demo(home)
    sources, domains = _handler(demo, "on_benchmark").fn("tweet-eras")
    assert sources["value"] == ["d0", "d4", "d1", "d3", "d5"] and "BERT" in sources["info"]
    assert domains["value"] == 2 and domains["choices"][5] == ("d5 (100% of words in ROT13)", 5)
    form = dict(benchmark="tweet-eras", source_kind=BUILTIN, builtin_sources=["d0", "d4", "d3"], repo_ids=None,
                target_kind=BENCHMARK, domain=2, dataset=None, dataset_domain=None, image_column="image",
                text_column=None, label_column="label", method="grasp", initial_epochs=1, finetune_epochs=1,
                base=None, lr=None, seed=0, compare=True)
    spec = spec_from_form(home, **form)
    assert spec.target == "tweet-eras" and spec.builtin_benchmark == "tweet-eras"
    assert spec.label(spec.sources[0]) == "d0 (0% of words in ROT13)"
    *_, outcome = run_merge(spec, tmp_path / "run")
    assert outcome.modality == "text" and outcome.report.target.modality == "text"
    # GRASP is this run (not run twice); beside it the recommended method, the best source (judged on validation
    # alone: BERT has no BatchNorm to re-estimate) and the ensemble, on the same texts
    rows = results.accuracy_rows(outcome)
    assert [r[0] for r in rows][:1] == ["grasp"] and len(rows) == 4, rows
    assert rows[1][0].startswith(RECOMMENDED_METHOD) and rows[2][0].startswith("best-source: d")
    assert rows[3][0] == "ensemble of 3" and [r[3] for r in rows] == ["yes"] * 3 + ["no (3 models)"]
    assert all(isinstance(r[1], float) and isinstance(r[2], float) for r in rows)
    assert {r.report.target.sizes["test"] for r in outcome.comparison.rows} == {300}
    pick, _, _ = compare.best_on_validation(outcome.comparison.rows)
    assert results.verdict(outcome).startswith(f"Best single model on validation: {pick.name}, ")
    assert 100 * pick.validation == pytest.approx(max(r[1] for r in rows[:3])) and outcome.chart.is_file()
    assert sorted(p.name for p in (tmp_path / "run").glob("comparison-*.json")) == [
        "comparison-best-source.json", "comparison-ensemble.json", "comparison-recommended.json"]
    assert all(isinstance(t, str) and t for t, _ in outcome.examples) and {y for _, y in outcome.examples} == {0, 1}
    assert outcome.ensemble is not None and outcome.ensemble.target.modality == "text"
    plain = pipeline("text-classification", model=str(outcome.folder), top_k=None)
    for text in (outcome.examples[0][0], "the flight was late and the staff were rude"):
        shown = classify(outcome, text)
        expected = {d["label"]: d["score"] for d in plain([text])[0]}
        assert shown.keys() == expected.keys() == {"negative", "positive"}
        assert all(shown[k] == pytest.approx(expected[k], abs=1e-5) for k in shown)
    with pytest.raises(GraspError, match="classifies texts"):
        classify(outcome, Image.new("RGB", (28, 28)))
    # the ensemble of the same sources is a method of its own too: it reloads from its folder and reads texts
    *_, ens = run_merge(spec_from_form(home, **{**form, "method": "ensemble", "compare": False}),
                        tmp_path / "run-ensemble")
    assert len(results.accuracy_rows(ens)) == 1 and ens.comparison is None and ens.chart is None
    probs = classify(ens, "thank you, a great crew")
    assert probs.keys() == {"negative", "positive"} and sum(probs.values()) == pytest.approx(1, abs=1e-5)
