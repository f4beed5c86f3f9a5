"""Every file read back is validated, and every option value is in range: saved configs (``grasp_config.json``),
reports and recipes of any content, and option values of any text or type, give a :class:`GraspError` (one line,
naming the file or the option) or a value that reads back with its meaning unchanged; never a traceback."""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hf_grasp.methods import METHODS
from hf_grasp.output.report import SCHEMA_VERSION as REPORT_SCHEMA
from hf_grasp.output.report import MergeReport
from hf_grasp.plan.options import MergeOptions, Layer, _leaf_types, parse_text, resolve
from hf_grasp.plan.plan import SAVED, SCHEMA_VERSION, MergePlan, withheld
from hf_grasp.inputs.recipes import load_recipe
from hf_grasp.runtime.errors import GraspError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
DEEP = 100_000


def _fields(method: str) -> dict[str, typing.Any]:
    return {**MergeOptions.model_fields, **METHODS[method].params.model_fields}


#: text options whose declared validator writes them one way: surrounding blanks dropped
STRIPPED = ("license", "license_name", "license_link")


def _same_meaning(given: typing.Any, got: typing.Any, name: str = "") -> bool:
    """Whether a value accepted as ``given`` reads back as ``got`` with the same meaning: equal, or converted only
    as the option's type converts (an int for a float, a number for a text option, a list for a tuple)."""
    if name in STRIPPED and isinstance(given, str):
        given = given.strip().lower() if name == "license" else given.strip()
    if isinstance(given, list):
        return isinstance(got, tuple) and len(given) == len(got) and all(map(_same_meaning, given, got))
    if isinstance(got, str) and not isinstance(given, str):
        return got == str(given)
    return given == got and (type(given) is type(got) or {type(given), type(got)} <= {int, float})


# --------------------------------------------------------------------------- the numbers the issue named


@pytest.mark.parametrize("name, text", [("seed", "4294967296"), ("batch_size", "9223372036854775808"),
                                        ("align_batches", str(10**21)), ("threads", str(10**21)),
                                        ("initial_epochs", str(10**21)), ("pearl_rank", str(2**63)),
                                        ("fisher_examples", str(-(10**21)))])
def test_a_huge_integer_is_refused_in_one_line_from_text_python_and_a_saved_config(name, text, tmp_path):
    method = next(m for m in METHODS if name in _fields(m))
    with pytest.raises(GraspError, match=rf"^option {name}='{text}' \(from the command line\): "):
        parse_text(method, {name: text}, methods=METHODS)
    with pytest.raises(GraspError, match=rf"^option {name}={text}: "):
        resolve(method, [Layer({name: int(text)})], methods=METHODS)
    plan = _plan_file(tmp_path, method=method, **{name: int(text)})
    with pytest.raises(GraspError, match=rf"^option {name}={text} \(from merge {tmp_path}\): "):
        _as_from_uses_it(MergePlan.load(plan), str(tmp_path))


def test_the_largest_seed_numpy_takes_is_accepted():
    assert parse_text("grasp", {"seed": str(2**32 - 1)}, methods=METHODS) == {"seed": 2**32 - 1}


def _plan_file(folder: Path, method: str = "grasp", **values) -> Path:
    fields = _fields(method)
    options = {k: v for k, v in values.items() if k in MergeOptions.model_fields}
    params = {k: v for k, v in values.items() if k not in options and k in fields}
    path = folder / "grasp_config.json"
    path.write_text(json.dumps({"method": method, "sources": ["a", "b"], "target": "t", "recipe": None,
                                "options": options, "params": params, "version": "0", "schema": 1}))
    return path


def _as_from_uses_it(plan: MergePlan, where: str):
    """The options and parameters of a saved plan resolved as ``--from`` resolves them."""
    values, _ = withheld(plan.options | plan.params, where, {})
    return resolve(plan.method, [Layer(values, origin=f"merge {where}", lenient=True)], methods=METHODS)


# --------------------------------------------------------------------------- schema and nesting, every loader


@pytest.mark.parametrize("schema", [SCHEMA_VERSION + 1, 99, "1", 1.0, True, None, -1, [1]])
def test_a_config_schema_this_version_cannot_read_is_refused_naming_both(tmp_path, schema):
    path = _plan_file(tmp_path)
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema": schema}))
    with pytest.raises(GraspError, match=rf"^{path}: .*schema.*{SCHEMA_VERSION}") as e:
        MergePlan.load(path)
    assert "\n" not in str(e.value)


def _report(tmp_path: Path) -> dict:
    """A real report's JSON, from the files a minimal 0-epoch merge writes."""
    from hf_grasp.output.report import MemoryRecord, MethodRecord, SourceRecord, TargetRecord

    report = MergeReport(method=MethodRecord("grasp", "GRASP", "GRASP", params={"tau": -math.inf}),
                         options={"seed": 0}, target=TargetRecord("t", sizes={"train": 3}), family="transformers",
                         architecture="X", sources=[SourceRecord("a", role="init"), SourceRecord("b")], steps=[],
                         final={"test": {"accuracy": 0.5, "loss": 1.0, "n": 2}, "validation": None},
                         epochs_trained=0, seconds=0.1, memory=MemoryRecord(1, 2, 3))
    return report.to_dict()


@pytest.mark.parametrize("change", [{"schema": REPORT_SCHEMA + 1}, {"schema": "6"}, {"schema": True},
                                    {"epochs_trained": "3"}, {"sources": {"a": 1}}, {"memory": None},
                                    {"final": {"test": {"accuracy": "high"}}}, {"steps": [{"kind": "nope"}]},
                                    {"target": {"name": 3}}, {"surprise": 1}, {"method": []}])
def test_a_report_not_as_written_is_refused_naming_the_file(tmp_path, change):
    path = tmp_path / "grasp_report.json"
    path.write_text(json.dumps(_report(tmp_path)))
    assert MergeReport.load(path).method.params["tau"] == -math.inf  # as written: read back
    path.write_text(json.dumps({**_report(tmp_path), **change}))
    with pytest.raises(GraspError, match=rf"^{path}: ") as e:
        MergeReport.load(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("loader", ["config", "report", "recipe"])
@pytest.mark.parametrize("where", ["top", "inside"])
def test_deep_nesting_is_one_line_for_every_loader(tmp_path, loader, where):
    deep = "[" * DEEP + "]" * DEEP
    text = deep if where == "top" else '{"method": "grasp", "options": {"x": ' + deep + "}}"
    name = {"config": "grasp_config.json", "report": "grasp_report.json", "recipe": "r.yaml"}[loader]
    path = tmp_path / name
    path.write_text(text if loader != "recipe" else text.replace('"method": "grasp"', '"dataset": "d"'))
    load = {"config": MergePlan.load, "report": MergeReport.load,
            "recipe": lambda p: load_recipe(str(p), methods=METHODS)}[loader]
    with pytest.raises(GraspError, match=rf"{path}.*nested too deeply") as e:
        load(path)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- fuzz: any grasp_config.json

_json = st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
                     | st.sampled_from(["inf", "-inf", "nan", "", "0", "1e400", "given", "0,1", "mit"]) | st.text(),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                  max_size=3),
                     max_leaves=8)
_any_name = st.sampled_from(sorted({n for m in METHODS for n in _fields(m)})) | st.text(max_size=8)


@st.composite
def _config(draw):
    """A grasp_config.json: a valid one with fields replaced, dropped or added, its values anything JSON holds,
    and now and then a value nested thousands deep."""
    data = {"method": draw(st.sampled_from(sorted(METHODS)) | st.text(max_size=5)), "sources": ["a", "b"],
            "target": "t", "recipe": None, "version": "0", "schema": 1,
            "options": draw(st.dictionaries(_any_name, _json, max_size=4)),
            "params": draw(st.dictionaries(_any_name, _json, max_size=3))}
    for name in draw(st.lists(st.sampled_from([*SAVED, "extra"]), max_size=2)):
        if draw(st.booleans()):
            data.pop(name, None)
        else:
            data[name] = draw(_json)
    text = json.dumps(data, allow_nan=True)
    if draw(st.integers(0, 9)) == 0:
        depth, name = draw(st.sampled_from([900, 3000, DEEP])), draw(_any_name)
        text = text.replace('"options": {', f'"options": {{{json.dumps(name)}: ' + "[" * depth + "]" * depth + ", ", 1)
    return text


def test_fuzzed_configs_load_and_resolve_to_a_grasp_error_or_their_meaning(tmp_path):
    path = tmp_path / "grasp_config.json"

    @FUZZ
    @given(text=_config())
    def run(text):
        path.write_text(text)
        try:
            plan = MergePlan.load(path)
            options, params = _as_from_uses_it(plan, str(path))
        except GraspError as e:
            assert "\n" not in str(e)
            return
        resolved = {**options.to_dict(), **params.to_dict()}
        for name, value in {**plan.options, **plan.params}.items():  # another method's parameter: ignored
            if value is not None and name in resolved and name not in ("trust_remote_code", "allow_pickle"):
                assert _same_meaning(value, resolved[name], name), (name, value, resolved[name])
        assert not (options.trust_remote_code or options.allow_pickle)  # a file never grants them

    run()


# --------------------------------------------------------------------------- fuzz: any option value, CLI or Python

_text = (st.text(max_size=12) | st.integers(-(2**70), 2**70).map(str) | st.floats().map(repr)
         | st.sampled_from(["inf", "-inf", "nan", "1e400", "-0", "0x10", "1_000", " 3 ", "true", "0,1", "1.5"]))


@st.composite
def _option(draw, typed: bool):
    method = draw(st.sampled_from(sorted(METHODS)))
    name = draw(st.sampled_from(sorted(_fields(method))))
    return method, name, draw(_json if typed else _text)


def test_fuzzed_option_values_are_refused_or_read_back_unchanged():
    @FUZZ
    @given(case=_option(typed=False) | _option(typed=True), kind=st.sampled_from(["text", "python"]))
    def run(case, kind):
        method, name, value = case
        if kind == "text" and not isinstance(value, str):
            value = json.dumps(value)
        try:
            if kind == "text":
                got = parse_text(method, {name: value}, methods=METHODS)[name]
            else:
                options, params = resolve(method, [Layer({name: value})], methods=METHODS, complete=False)
                got = getattr(options if name in MergeOptions.model_fields else params, name)
        except GraspError as e:
            assert "\n" not in str(e) and name in str(e)
            return
        if kind == "python" and value is not None:  # None: unset, the default
            assert _same_meaning(value, got, name), (name, value, got)
        # what was accepted is a value of the option, and it survives being given again, as Python and as saved
        again = resolve(method, [Layer({name: got})], methods=METHODS, complete=False)
        assert getattr(again[0] if name in MergeOptions.model_fields else again[1], name) == got

    run()


# --------------------------------------------------------------------------- every legal value survives a save


def _legal(annotation: typing.Any, info) -> st.SearchStrategy:
    """Values of a declared field's type, within its declared range (those beyond a validator's rule are skipped
    by the test)."""
    bounds = {k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    lo, hi = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    out = []
    for kind in _leaf_types(annotation):
        if typing.get_origin(annotation) is typing.Literal:
            return st.sampled_from(typing.get_args(annotation))
        if kind is bool:
            out.append(st.booleans())
        elif kind is int:
            out.append(st.integers(lo if lo is not None else -(2**31), hi if hi is not None else 2**31 - 1))
        elif kind is float:
            out.append(st.floats(lo, hi, allow_nan=False, allow_infinity=lo is None and hi is None))
        elif kind is str:
            out.append(st.text(max_size=10) | st.sampled_from(["inf", "-inf", "given", "random", "2,0,1", "mit"]))
        elif kind is type(None):
            out.append(st.none())
        elif typing.get_origin(kind) is tuple:
            out.append(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=4).map(tuple))
    return st.one_of(out)


@st.composite
def _legal_value(draw):
    method = draw(st.sampled_from(sorted(METHODS)))
    name, info = draw(st.sampled_from(sorted(_fields(method).items())))
    return method, name, draw(_legal(info.annotation, info))


def test_every_legal_value_of_every_option_survives_a_save_and_a_rebuild(tmp_path):
    path = tmp_path / "grasp_config.json"

    @FUZZ
    @given(case=_legal_value())
    def run(case):
        method, name, value = case
        base = {"base": "base"} if METHODS[method].needs_base and name != "base" else {}
        try:
            plan = MergePlan.build(METHODS[method], [Layer({**base, name: value})], methods=METHODS,
                                   sources=["a", "b"])
        except GraspError:  # a validator's rule beyond the type (an order of indices, a license id, ...)
            return
        plan.save(path)
        loaded = MergePlan.load(path)
        assert loaded.differences(plan) == []
        if name in ("trust_remote_code", "allow_pickle"):  # saved as run, never granted again by the file
            assert loaded.options[name] == value
            return
        options, params = _as_from_uses_it(loaded, str(path))
        assert options == plan.merge_options and params == plan.method_params, (name, value)

    run()
