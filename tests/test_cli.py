"""The command line: help on every command (fast, torch-free), options arriving with their declared types
from the CLI and from recipes, every method's parameters in `merge --help`, the option table in docs/options.md."""

import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from conftest import last_json, run_python
from hf_grasp.apps.cli import build_parser
from hf_grasp.runtime.errors import GraspError
from hf_grasp.methods import METHODS
from hf_grasp.plan.options import Layer, MergeOptions, flag_name, option_table_markdown, options_from_args, parse_text, \
    resolve
from hf_grasp.inputs.recipes import load_recipe

COMMANDS = [[], ["merge"], ["make-sources"], ["demo"], ["prepare"], ["bench"]]


def _merge_help(capsys) -> str:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["merge", "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser([*command, "--help"]).parse_args([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hf-grasp" in out
    if command == ["merge"]:
        for flag in ("--tau", "--granularity", "--align-batches", "--batch-size", "--initial-epochs",
                     "--finetune-epochs", "--lr", "--weight-decay", "--init", "--order", "--seed", "--quiet",
                     "--progress"):
            assert flag in out


HELP_IMPORTS = """
import json, sys
from hf_grasp.apps.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "transformers", "datasets", "accelerate", "peft", "evaluate", "timm")
         if m in sys.modules]
print(json.dumps([code, heavy]))
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_no_model_library(command):
    code, heavy = last_json(run_python(HELP_IMPORTS, *command, "--help"))
    assert code == 0 and heavy == []


def test_version():
    code, heavy = last_json(run_python(HELP_IMPORTS, "--version"))
    assert code == 0 and heavy == []


def test_every_methods_parameters_are_in_merge_help(capsys):
    out = re.sub(r"-\n\s*", "-", _merge_help(capsys))  # argparse wraps lines after a hyphen
    for info in METHODS.values():
        assert info.name in out
        for name in info.params.model_fields:
            # under a heading that names the method
            heading = next(line for line in out.splitlines() if line.startswith("parameters of --method")
                           and info.name in line.split("--method", 1)[1].replace(",", " ").rstrip(":").split()
                           and flag_name(name) in out.split(line, 1)[1].split("\n\n", 1)[0])
            assert heading, (info.name, name)


def test_every_option_has_help_text():
    parser = build_parser()
    merge = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("merge"))
    for action in merge._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 10, action.dest


# --- options arrive with their declared types


def _every_option() -> list[tuple[str, str, object]]:
    """(method, option name, declared annotation) for every shared option and method parameter."""
    rows = [("grasp", name, f.annotation) for name, f in MergeOptions.model_fields.items()]
    rows += [(info.name, name, f.annotation) for info in METHODS.values() for name, f in info.params.model_fields.items()]
    return rows


def _typed_sample(annotation) -> tuple[str, object] | None:
    """A valid value of a non-text option: (its command-line text, the value it must arrive as)."""
    kinds = {t for t in typing.get_args(annotation) or (annotation,) if t is not type(None)}
    if kinds == {bool}:
        return None  # flags: --x / --no-x, checked below
    if typing.get_origin(annotation) is typing.Literal:
        value = typing.get_args(annotation)[-1]
        return value, value
    if kinds == {int}:
        return "3", 3
    if kinds == {float}:
        return "0.5", 0.5
    return None  # text options stay text


def test_scaling_arrives_as_a_float():
    argv = ["merge", "--sources", "a", "b", "--output", "o", "--method", "task-arithmetic", "--scaling", "0.5"]
    args = build_parser(argv).parse_args(argv)
    values = parse_text(args.method or "grasp", options_from_args(args, METHODS), methods=METHODS)
    assert values == {"scaling": 0.5} and type(values["scaling"]) is float


@pytest.mark.parametrize("method, name, annotation", _every_option(), ids=lambda x: str(x)[:30])
def test_every_option_arrives_with_its_type_from_cli_and_recipe(method, name, annotation, tmp_path):
    sample = _typed_sample(annotation)
    flag = flag_name(name)
    if sample is None and bool in (typing.get_args(annotation) or (annotation,)):
        for argv_flag, expected in ((flag, True), ("--no-" + flag[2:], False)):
            argv = ["merge", "--sources", "a", "--output", "o", "--method", method, argv_flag]
            args = build_parser(argv).parse_args(argv)
            values = parse_text(method, options_from_args(args, METHODS), methods=METHODS)
            assert values[name] is expected
        return
    if sample is None:
        return
    text, value = sample
    argv = ["merge", "--sources", "a", "--output", "o", "--method", method, flag, text]
    got = parse_text(method, options_from_args(build_parser(argv).parse_args(argv), METHODS), methods=METHODS)[name]
    assert got == value and type(got) is type(value)
    # the same value from a recipe: YAML's own type, validated
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: digits-eras\noptions:\n  {name}: {json.dumps(value)}\n")
    layer = load_recipe(str(recipe), methods=METHODS).options
    shared, own = resolve(method, [Layer(layer, "recipe", lenient=True)], methods=METHODS)
    got = getattr(shared if name in MergeOptions.model_fields else own, name)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("argv, culprit", [
    (["--lr", "-1"], "lr"), (["--tau", "nan"], "tau"), (["--batch-size", "0"], "batch_size"),
    (["--batch-size", "2.5"], "batch_size"), (["--density", "0.5"], "density"),
    (["--validation-fraction", "1.5"], "validation_fraction"), (["--order", "1,x"], "order"),
])
def test_bad_cli_values_name_the_option(argv, culprit):
    full = ["merge", "--sources", "a", "--output", "o", *argv]
    args = build_parser(full).parse_args(full)
    with pytest.raises(GraspError, match=culprit) as e:
        parse_text(args.method or "grasp", options_from_args(args, METHODS), methods=METHODS)
    assert "\n" not in str(e.value)


def test_a_recipe_may_carry_other_methods_parameters():
    # the paper's τ in a recipe does not stop a TIES merge; the same τ from the user does
    shared, params = resolve("ties", [Layer({"tau": 0.3}, "recipe", lenient=True)], methods=METHODS)
    assert params.to_dict() == {"scaling": 1.0, "density": 0.2}
    with pytest.raises(GraspError, match="tau.*grasp"):
        resolve("ties", [Layer({"tau": 0.3})], methods=METHODS)


def test_docs_option_table_matches_declarations():
    doc = (Path(__file__).parent.parent / "docs" / "options.md").read_text()
    assert option_table_markdown(METHODS) in doc, (
        "docs/options.md's option tables differ from the declarations; paste in the output of "
        "`python -c 'from hf_grasp.methods import METHODS; from hf_grasp.plan.options import "
        "option_table_markdown as t; print(t(METHODS))'`")


EARLY = """
import sys
from hf_grasp.apps.cli import main
code = main(sys.argv[1:])
assert 'torch' not in sys.modules, 'torch imported before the refusal'
print(code)
"""


@pytest.mark.parametrize("argv, message", [
    (["--order", "0,x"], "option order='0,x' (from the command line): use given, reverse, random or a comma list"),
    (["--order", "0,0"], "--order 0,0: must be a permutation of 0..1, one index per source"),
    (["--order", "0,5"], "--order 0,5: must be a permutation of 0..1, one index per source"),
    (["--license-name", "x"], "option license_name='x' applies only with license='other'"),
    (["--method", "task-arithmetic"], "method 'task-arithmetic' works on task vectors: pass --base"),
], ids=["form", "repeated-index", "index-past-K", "across-options", "method-rule"])
def test_bad_options_refused_before_torch_is_imported(argv, message, tmp_path):
    """Issue 24: every option's value, and every rule across the options the plan applies, is refused at parse
    time (about 0.5 s) rather than after the seconds of imports: the sources need not even exist yet."""
    proc = subprocess.run([sys.executable, "-c", EARLY, "merge", "--sources", "a", "b", "--target", "digits-eras",
                           "--output", str(tmp_path / "o"), *argv], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_bad_value_in_a_saved_merge_is_refused_before_torch_is_imported(tmp_path):
    """Issue 24: ``--from`` a folder whose grasp_config.json holds a value out of range failed only after the
    seconds of imports; the folder's plan is now read and checked at parse time, like the flags."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "grasp_config.json").write_text(json.dumps(
        {"method": "grasp", "sources": ["a", "b"], "target": "digits-eras", "recipe": None,
         "options": {"seed": 2 ** 40}, "params": {}, "version": "0.1.0", "schema": 1}))
    proc = subprocess.run([sys.executable, "-c", EARLY, "merge", "--from", "m", "--output", "o"],
                          capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "2", proc.stderr
    assert proc.stderr == "error: option seed=1099511627776 (from merge m): input should be less than 4294967296\n"
    assert not (tmp_path / "o").exists()
