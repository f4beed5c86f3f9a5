"""Every ``hf-grasp ...`` command the README and docs/*.md show is one the command line accepts today.

Each command line in a fenced shell block (backslash continuations joined, leading ``VAR=value`` assignments
dropped, ``python -m hf_grasp.apps.cli`` under a launcher included) is parsed in-process by the parser the CLI builds,
with long-option abbreviations off, then checked as ``merge`` checks it before any work: an unknown, renamed or
misspelled flag, a missing required argument, a bad choice, a value its option refuses or another method's
parameter fails here. ``--help`` appended alone would not catch those (argparse prints the help and
exits 0 before it looks at the other flags), so it is checked as well, not instead. Placeholders become concrete:
an optional ``[--flag VALUE]`` group is kept without its brackets (so its flags are checked too), the first of
``[a|b]`` alternatives is taken, ``<commit>`` becomes a commit-like string.

A few of them also run through the installed ``hf-grasp`` console script with ``--help`` (one per command), to
check the real entry point. docs/layout.md is checked to name every module of the package.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from hf_grasp.apps.cli import _check_push_flags, build_parser
from hf_grasp.runtime.errors import GraspError
from hf_grasp.plan.options import options_from_args, parse_text
from hf_grasp.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER = re.compile(r"<[^<>]+>")
SEPARATORS = {"&&", "||", ";", "|"}


def _shell_lines(text: str):
    """``(line number, logical line)`` of every fenced shell block, continuations joined."""
    in_block, shell, pending, start = False, False, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence:
            in_block, shell = (not in_block), fence.group(2).lower() in SHELL_BLOCKS
            pending = ""
            continue
        if not (in_block and shell):
            continue
        if not pending:
            start = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def _concrete(tokens: list[str]) -> list[str]:
    """Placeholders made concrete: ``[--flag VALUE]`` kept without brackets (first of ``a|b``), ``<x>`` filled."""
    out, group = [], None
    for tok in tokens:
        if group is None and tok.startswith("["):
            group, tok = [], tok[1:]
        if group is None:
            out.append(tok)
            continue
        closes = tok.endswith("]")
        group.append(tok[:-1] if closes else tok)
        if closes:
            out += [t for t in " ".join(group).split("|")[0].split() if t]
            group = None
    return [PLACEHOLDER.sub("0123456789abcdef", t) for t in out]


def _hf_grasp_argv(segment: list[str]) -> list[str] | None:
    """The arguments after ``hf-grasp`` (or ``-m hf_grasp.apps.cli``) in one shell command, if it runs hf-grasp."""
    while segment and ENV_ASSIGNMENT.match(segment[0]):
        segment = segment[1:]
    if segment[:1] == ["hf-grasp"]:
        return segment[1:]
    for i in range(len(segment) - 1):
        if segment[i] == "-m" and segment[i + 1] == "hf_grasp.apps.cli":
            return segment[i + 2:]
    return None


def doc_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` for every hf-grasp command line shown in the README and docs/*.md."""
    found = []
    for path in DOC_FILES:
        for n, line in _shell_lines(path.read_text(encoding="utf-8")):
            tokens = shlex.split(line, comments=True)
            segments, current = [], []
            for tok in tokens:
                if tok in SEPARATORS:
                    segments.append(current)
                    current = []
                else:
                    current.append(tok)
            segments.append(current)
            for segment in segments:
                argv = _hf_grasp_argv(segment) if segment else None
                if argv is not None:
                    found.append((f"{path.relative_to(ROOT)}:{n}", _concrete(argv)))
    return found


COMMANDS = doc_commands()


def _strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser and its subparsers without long-option abbreviations: ``--target-dom`` is not ``--target-domain``
    in a doc, even though argparse would take it."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _strict(sub)
    return parser


def parse_problems(argv: list[str]) -> str | None:
    """Why the command line refuses ``argv`` before any work, or None: unknown arguments or argparse's own error;
    for ``merge`` also what it checks next, torch-free (each option's value, a method parameter given to another
    method, a publish flag without ``--push-to-hub``, sources and ``--from`` both or neither)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args, unknown = _strict(build_parser(argv)).parse_known_args(argv)
    except SystemExit as e:
        return f"argparse exited {e.code}: {err.getvalue().strip().splitlines()[-1:]}"
    if unknown:
        return f"unrecognised arguments: {unknown}"
    if args.command != "merge":
        return None
    if bool(args.sources) == bool(args.from_merge):
        return "pass --sources or --from, not both or neither"
    try:
        _check_push_flags(args)
        parse_text(args.method or "grasp", options_from_args(args, METHODS), methods=METHODS)
    except GraspError as e:
        return str(e)
    return None


def help_exit_code(argv: list[str]) -> int:
    full = [*argv, "--help"]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            build_parser(full).parse_args(full)
    except SystemExit as e:
        return e.code or 0
    return 0


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20, COMMANDS
    shown = {argv[0] for _, argv in COMMANDS if argv}
    assert {"merge", "make-sources", "bench", "prepare", "space"} <= shown, shown


@pytest.mark.parametrize("argv", [c[1] for c in COMMANDS], ids=[f"{w} {' '.join(a)}"[:100] for w, a in COMMANDS])
def test_doc_command_parses(argv):
    assert help_exit_code(argv) == 0
    if "--help" in argv or "-h" in argv:
        return
    problem = parse_problems(argv)
    assert problem is None, f"`hf-grasp {shlex.join(argv)}`: {problem}"


def test_a_misspelled_or_renamed_flag_fails():
    # what the test above relies on: --help alone would pass all of these
    merge = ["merge", "--target", "digits-eras", "--sources", "a", "b", "--output", "merged/"]
    assert parse_problems(merge) is None
    for bad in (["--taget-domain", "2"],        # misspelled
                ["--target-dom", "2"],          # an abbreviation argparse would accept
                ["--push-to-hub", "me/m", "--privat"],
                ["--tau", "high"],              # not a number
                ["--method", "ties", "--tau", "0.3"],   # another method's parameter
                ["--private"]):                 # without --push-to-hub
        assert help_exit_code([*merge, *bad]) == 0
        assert parse_problems([*merge, *bad]) is not None, bad
    assert parse_problems(["bench", "--recipe", "digits-eras", "--seed", "5"]) is not None
    assert parse_problems(["make-sources", "digits-eras", "--target-domain", "2"]) is not None  # --output required
    assert parse_problems(["prepare", "yearbook", "--from", "raw/", "--output", "d/", "--varient", "clear10"])


def test_placeholders_become_concrete():
    line = "hf-grasp merge --sources demo/m@<commit> --output o/ --push-to-hub me/m [--private] [--revision BRANCH]"
    (argv,) = [_hf_grasp_argv(shlex.split(line))]
    assert _concrete(argv) == ["merge", "--sources", "demo/m@0123456789abcdef", "--output", "o/", "--push-to-hub",
                               "me/m", "--private", "--revision", "BRANCH"]
    assert _concrete(["space", "[--share|--port", "8000]"]) == ["space", "--share"]
    assert _hf_grasp_argv(shlex.split("HF_HUB_OFFLINE=1 hf-grasp demo")) == ["demo"]
    assert _hf_grasp_argv(shlex.split("torchrun --standalone -m hf_grasp.apps.cli merge --output o")) == [
        "merge", "--output", "o"]


def _first_per_command() -> list[list[str]]:
    seen, out = set(), []
    for _, argv in COMMANDS:
        if argv and argv[0] not in seen:
            seen.add(argv[0])
            out.append(argv)
    return out


@pytest.mark.parametrize("argv", _first_per_command(), ids=lambda a: a[0])
def test_doc_command_help_through_the_console_script(argv):
    script = Path(sys.executable).with_name("hf-grasp")
    if not script.exists():
        pytest.skip(f"no hf-grasp console script beside {sys.executable} (pip install -e .)")
    proc = subprocess.run([str(script), *argv, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage: hf-grasp" in proc.stdout


def test_layout_names_every_module():
    layout = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    package = ROOT / "hf_grasp"
    modules = sorted(p.relative_to(package).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts)
    missing = [m for m in modules if f"`{m}`" not in layout]
    assert not missing, f"docs/layout.md does not describe {missing}: add one line each"
