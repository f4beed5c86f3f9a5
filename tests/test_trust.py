"""Trust comes only from the caller: a saved merge (``--from``, ``GraspMerger.from_pretrained(DIR)``) or an earlier
one (``--init``) never turns on remote code or pickle files; and τ = ±inf survives a save and a rebuild exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import _run_main

from hf_grasp import GraspError, GraspMerger

CUSTOM = {"AutoConfig": "configuration_x.XConfig", "AutoModelForImageClassification": "modeling_x.XModel"}


def _with_remote_code(folder: Path, marker: Path) -> Path:
    """``folder`` (a checkpoint) made to ask for custom code that would create ``marker`` if it ever ran."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": CUSTOM}))
    code = (f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n\n\n"
            "class XConfig(PretrainedConfig):\n    model_type = 'resnet'\n")
    for name in ("configuration_x.py", "modeling_x.py"):
        (folder / name).write_text(code)
    return folder


def _granting(folder: Path, **config: object) -> Path:
    """``folder``'s ``grasp_config.json`` rewritten to turn on remote code and pickle files (and ``config``)."""
    path = folder / "grasp_config.json"
    data = json.loads(path.read_text())
    data["options"].update(trust_remote_code=True, allow_pickle=True)
    path.write_text(json.dumps({**data, **config}))
    return path


@pytest.fixture
def hostile_saved(checkpoints, tmp_path):
    """A saved merge whose two sources ask for remote code (transformers' own class builds them without it), its
    grasp_config.json granting it; and the marker that code would write."""
    marker = tmp_path / "MARKER"
    sources = []
    for i, good in enumerate(checkpoints("resnet", 2)):
        sources.append(_with_remote_code(Path(shutil.copytree(good, tmp_path / f"custom{i}")), marker))
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "grasp_config.json").write_text(json.dumps(
        {"method": "grasp", "sources": [str(s) for s in sources], "target": "digits-eras", "recipe": None,
         "options": {"initial_epochs": 0, "finetune_epochs": 0, "eval_sources": False, "eval_steps": False},
         "params": {},
         "version": "0.1.0", "schema": 1}))
    return _granting(saved), marker


def _warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "warning: " in line and "grasp_config.json sets" in line]


def test_from_a_saved_merge_never_turns_on_remote_code_on_the_cli(hostile_saved, tmp_path):
    config, marker = hostile_saved
    code, _, stderr = _run_main(["merge", "--from", str(config.parent), "--output", str(tmp_path / "out")])
    # the grant ignored: the sources' custom code is refused as on a plain --sources run, and none of it ran
    assert code == 2 and not marker.exists() and not (tmp_path / "out").exists(), stderr
    [warning] = _warnings(stderr)  # one line, naming the file and the flags the user would pass now
    assert str(config) in warning and "trust_remote_code=True, allow_pickle=True" in warning
    assert "--trust-remote-code --allow-pickle" in warning
    assert stderr.strip().splitlines()[-1].startswith("error: source ") and "auto_map" in stderr


def test_custom_code_is_refused_whatever_model_type_the_config_names(checkpoints, tmp_path):
    """Issue 24: an ``auto_map`` beside a ``model_type`` transformers knows was ignored (transformers' own class
    built, the dangling ``auto_map`` copied into the merge's config); now it is refused like any other, by name."""
    marker = tmp_path / "MARKER"
    good = checkpoints("resnet", 2)
    custom = _with_remote_code(Path(shutil.copytree(good[1], tmp_path / "custom")), marker)
    exotic = Path(shutil.copytree(custom, tmp_path / "exotic"))
    config = json.loads((exotic / "config.json").read_text())
    (exotic / "config.json").write_text(json.dumps({**config, "model_type": "custom-xyz"}))
    for source in (custom, exotic):
        code, _, stderr = _run_main(["merge", "--sources", str(good[0]), str(source), "--target", "digits-eras",
                                     "--initial-epochs", "0", "--finetune-epochs", "0", "--output",
                                     str(tmp_path / "out")])
        assert code == 2 and not marker.exists() and not (tmp_path / "out").exists(), stderr
        [error] = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert error.startswith(f"error: source {str(source)!r}: config.json asks for custom code of its repository "
                                "(auto_map AutoConfig: configuration_x.XConfig") and "--trust-remote-code" in error


def test_from_pretrained_of_a_saved_merge_never_turns_on_remote_code(hostile_saved, capsys):
    config, marker = hostile_saved
    with pytest.raises(GraspError, match=r"auto_map .*pass trust_remote_code=True only if you trust it"):
        GraspMerger.from_pretrained(config.parent)
    assert not marker.exists()
    [warning] = _warnings(capsys.readouterr().err)
    assert str(config) in warning and "trust_remote_code=True, allow_pickle=True" in warning
    # the caller's own word is the only one: set either way now, nothing to warn about
    with pytest.raises(GraspError, match="auto_map"):
        GraspMerger.from_pretrained(config.parent, trust_remote_code=False, allow_pickle=False)
    assert _warnings(capsys.readouterr().err) == [] and not marker.exists()


@pytest.mark.slow
def test_init_never_inherits_remote_code_from_the_earlier_merge(checkpoints, tmp_path):
    srcs = checkpoints("resnet", 3)
    earlier = tmp_path / "earlier"
    GraspMerger.from_pretrained(srcs[:2], target="digits-eras", initial_epochs=0, finetune_epochs=0,
                                eval_sources=False, eval_steps=False).merge().save_pretrained(earlier)
    marker = tmp_path / "MARKER"
    config = _granting(_with_remote_code(earlier, marker))
    quick = ["--initial-epochs", "0", "--finetune-epochs", "0", "--no-eval-sources", "--no-eval-steps"]
    code, _, stderr = _run_main(["merge", "--sources", str(srcs[2]), "--init", str(earlier), "--target",
                                 "digits-eras", *quick, "--output", str(tmp_path / "more")])
    assert code == 2 and not marker.exists() and not (tmp_path / "more").exists(), stderr
    [warning] = _warnings(stderr)
    assert str(config) in warning and "--trust-remote-code --allow-pickle" in warning
    assert f"error: source {str(earlier)!r}: config.json asks for custom code of its repository" in stderr
    with pytest.raises(GraspError, match="auto_map"):
        GraspMerger.from_pretrained([srcs[2]], target="digits-eras", init=str(earlier), initial_epochs=0,
                                    finetune_epochs=0)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("tau, moved", [("-inf", 1.0), ("inf", 0.0)])
def test_an_infinite_tau_survives_save_from_and_init_exactly(checkpoints, tmp_path, tau, moved):
    srcs = checkpoints("resnet", 3)
    quick = ["--target", "digits-eras", "--initial-epochs", "0", "--finetune-epochs", "0", "--no-eval-sources",
             "--no-eval-steps"]
    first, again, more = tmp_path / "first", tmp_path / "again", tmp_path / "more"
    runs = [["--sources", *map(str, srcs[:2]), f"--tau={tau}", *quick, "--output", str(first)],
            ["--from", str(first), "--output", str(again)],  # rebuilt from its grasp_config.json alone
            ["--sources", str(srcs[2]), "--init", str(first), *quick, "--output", str(more)]]  # τ inherited
    for argv in runs:
        code, _, stderr = _run_main(["merge", *argv])
        assert code == 0, stderr
    for out in (first, again, more):
        assert json.loads((out / "grasp_config.json").read_text())["params"]["tau"] == tau
        report = json.loads((out / "grasp_report.json").read_text())
        assert report["method"]["params"]["tau"] == tau
        merged = [s for s in report["sources"] if s["role"] == "source" and s["transferred"] is not None]
        assert merged and {s["fraction_transferred"] for s in merged} == {moved}  # every tensor, or none
