"""An error's advice names options as its caller writes them (issue 24): ``--resume`` on the command line,
``resume=True`` from Python. Only ``hf-grasp``'s entry point switches to flags, for its own run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from conftest import run_cli
from hf_grasp.apps.bench.results import RunResult, write_csv
from hf_grasp.apps.bench.runner import BenchConfig, bench
from hf_grasp.apps.cli import main
from hf_grasp.runtime.errors import GraspError, NonFiniteSourceError, called_from_cli, flag


def test_flag_spells_options_for_python_by_default_and_for_the_cli_within_its_run():
    assert (flag("overwrite"), flag("order", "0,1"), flag("sources", None), flag("output", Path("o"))) == (
        "overwrite=True", "order='0,1'", "sources", "output='o'")
    with called_from_cli():
        assert (flag("overwrite"), flag("order", "0,1"), flag("sources", None), flag("target_domain", 3)) == (
            "--overwrite", "--order 0,1", "--sources", "--target-domain 3")
    assert flag("overwrite") == "overwrite=True"  # the block ended: Python again


def _finished_bench(tmp_path: Path) -> Path:
    """An output an earlier bench finished (its config and one row): running it again needs resuming."""
    out = tmp_path / "bench"
    out.mkdir()
    cfg = BenchConfig.quick(methods=["grasp"], taus=(0.3,), n_orders=1, memory_k=(), max_sources=2, domains=[1])
    (out / "config.json").write_text(json.dumps(asdict(cfg)))
    write_csv([RunResult(1, 0, "grasp", 0.3, "given", False, 0.5, 0.5, 2, 1.0)], out / "results.csv")
    return out


def test_bench_advice_from_python_then_from_the_cli_then_python_again(tmp_path, capsys):
    out = _finished_bench(tmp_path)
    cfg = BenchConfig.quick(methods=["grasp"], taus=(0.3,), n_orders=1, memory_k=(), max_sources=2, domains=[1])
    try:
        bench(cfg, out)
    except GraspError as e:
        assert str(e).endswith("results.csv exists: pass resume=True to continue that bench, or choose another output")
    else:
        raise AssertionError("a finished bench's output was written again")
    # the CLI in this process: its advice is flags...
    argv = ["bench", "--quick", "--methods", "grasp", "--taus", "0.3", "--orders", "1", "--no-memory",
            "--max-sources", "2", "--domains", "1", "--output", str(out)]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().endswith(
        "results.csv exists: pass --resume to continue that bench, or choose another --output")
    # ...for its run only: the library called from Python afterwards speaks Python again
    try:
        bench(cfg, out)
    except GraspError as e:
        assert "pass resume=True" in str(e)


def test_bench_advice_through_the_command_in_a_subprocess(tmp_path):
    out = _finished_bench(tmp_path)
    proc = run_cli("bench", "--quick", "--methods", "grasp", "--taus", "0.3", "--orders", "1", "--no-memory",
                   "--max-sources", "2", "--domains", "1", "--output", str(out), "--recipe", "yearbook",
                   env={"HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: bench --recipe yearbook: only digits-eras and tweet-eras make their own sources offline so far"]


def test_bench_recipe_advice_from_python(tmp_path):
    cfg = BenchConfig.quick(recipe="yearbook")
    try:
        bench(cfg, tmp_path / "b")
    except GraspError as e:
        assert str(e) == "bench recipe='yearbook': only digits-eras and tweet-eras make their own sources offline so far"
    assert not (tmp_path / "b").exists()


def test_corrupt_source_advice_names_the_argument_of_the_caller():
    tensor = torch.tensor([1.0, float("nan")])
    assert str(NonFiniteSourceError.of("s", "w", tensor)).endswith("re-export it, or leave it out of sources")
    with called_from_cli():
        assert str(NonFiniteSourceError.of("s", "w", tensor)).endswith("re-export it, or leave it out of --sources")



def test_the_tools_beside_merge_speak_python_when_called_from_python(tmp_path):
    """Issue 24: make-sources, the Space's export and the CLEAR converter named CLI flags to a Python caller."""
    from hf_grasp.apps.bench.make_sources import make_sources
    from hf_grasp.apps.space.export import export_space
    from hf_grasp.inputs.converters.clear import select_classes

    calls = [(lambda: make_sources(tmp_path / "s", target_domain=99), "target_domain=99: digits-eras has domains"),
             (lambda: export_space(tmp_path / "e", hardware="tpu"), "hardware='tpu' is not one of"),
             (lambda: export_space(tmp_path / "e", wheel=tmp_path / "x.whl"), "wheel="),
             (lambda: select_classes(["a", "b"], "clear10", ["a"], 1), "give classes or num_classes, not both")]
    for call, message in calls:
        try:
            call()
        except GraspError as e:
            assert str(e).startswith(message) and "--" not in str(e), str(e)
        else:
            raise AssertionError(f"no error: {message}")
    assert not any(tmp_path.iterdir())
