"""The command line: help on every command, README option table in sync with the declarations."""

from pathlib import Path

import pytest

from hf_grasp.cli import build_parser
from hf_grasp.options import option_table_markdown


@pytest.mark.parametrize("command", [[], ["merge"], ["make-sources"], ["demo"], ["prepare"], ["bench"]])
def test_help_on_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hf-grasp" in out
    if command == ["merge"]:
        for flag in ("--tau", "--granularity", "--align-batches", "--batch-size", "--initial-epochs",
                     "--finetune-epochs", "--lr", "--weight-decay", "--init", "--order", "--seed"):
            assert flag in out


def test_every_option_has_help_text():
    parser = build_parser()
    merge = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("merge"))
    for action in merge._actions:
        if action.dest != "help":
            assert action.help and len(action.help) > 10, action.dest


def test_readme_option_table_matches_declarations():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert option_table_markdown() in readme
