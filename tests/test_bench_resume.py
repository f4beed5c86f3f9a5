"""``hf-grasp bench``'s output: ``--resume`` continues only a directory a bench wrote, and a bench never writes
into a merge's folder or a source (issue 24).

Every refusal is checked through the command (a subprocess: exit status 2, one ``error:`` line, no traceback,
nothing made or changed) and through the Python API (:func:`~hf_grasp.apps.bench.runner.bench`, with the merges
and source making replaced by fakes that record any call: a refusal trains nothing). The merge's folder and
the source are real: a tiny checkpoint as a Hub repo holds it, plus the plan a merge writes beside its weights.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import run_cli, tree_hashes
from hf_grasp.apps.bench import runner
from hf_grasp.apps.bench.results import RunResult, write_csv
from hf_grasp.apps.bench.runner import MARKER, BenchConfig, bench
from hf_grasp.methods import METHODS
from hf_grasp.plan.options import Layer, method_info
from hf_grasp.plan.plan import MergePlan
from hf_grasp.runtime.errors import GraspError

#: the smallest bench the flags make (the refusals come before any of it runs)
SMALL = ["--quick", "--methods", "grasp", "ensemble", "--taus", "0.3", "--orders", "1", "--source-epochs", "1",
         "--no-memory", "--max-sources", "2", "--domains", "1"]


def small() -> BenchConfig:
    return BenchConfig.quick(methods=["grasp", "ensemble"], taus=(0.3,), n_orders=1, memory_k=(), max_sources=2,
                             domains=[1], pretrain_epochs=1, source_epochs=1)


@pytest.fixture
def fake_runs(monkeypatch):
    """The merges and the source making replaced; returns the runs asked for (a refusal asks for none)."""
    calls = []

    def fake_sources(cfg, output, seed):
        calls.append(("sources", seed))
        return output / "sources" / f"seed{seed}"

    def fake_run(refs, domain, seed, method, cfg, *, base, tau=None, order="given", recal=False, variant=""):
        calls.append((method, domain))
        return RunResult(domain, seed, method, tau if method == "grasp" else None, order, recal, 0.5, 0.5, 2, 0.01,
                         variant)

    monkeypatch.setattr(runner, "_sources", fake_sources)
    monkeypatch.setattr(runner, "_run", fake_run)
    return calls


def _source(checkpoints, tmp_path) -> Path:
    """A copy of a real tiny checkpoint (config.json, model.safetensors)."""
    return Path(shutil.copytree(checkpoints("resnet", 1)[0], tmp_path / "source"))


def _merge_folder(checkpoints, tmp_path) -> Path:
    """A merge's folder: a model plus the grasp_config.json a merge writes beside it (its plan)."""
    folder = Path(shutil.copytree(checkpoints("resnet", 1)[0], tmp_path / "merged"))
    plan = MergePlan.build(method_info("grasp", METHODS), [Layer({})], methods=METHODS, sources=["a", "b"],
                           target="digits-eras")
    plan.save(folder / "grasp_config.json")
    return folder


def _results_without_config(tmp_path) -> Path:
    out = tmp_path / "rows"
    out.mkdir()
    write_csv([RunResult(1, 0, "grasp", 0.3, "given", False, 0.5, 0.5, 2, 1.0)], out / "results.csv")
    return out


def _file(tmp_path) -> Path:
    (tmp_path / "notes.txt").write_text("not a bench\n")
    return tmp_path / "notes.txt"


def _other_dir(tmp_path) -> Path:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine\n")
    return tmp_path / "mine"


# (case, how to make the output, resume?, what the message says: CLI, Python)
CASES = [
    ("merge folder, --resume", _merge_folder, True,
     r"^--resume: .*merged is a merge's folder \(it holds grasp_config.json\), not a directory a bench wrote; "
     r"pass the --output of the bench",
     r"^resume=True: .*merged is a merge's folder .* pass the output of the bench"),
    ("source, --resume", _source, True,
     r"^--resume: .*source is a model's folder \(it holds config.json\), not a directory a bench wrote",
     r"^resume=True: .*source is a model's folder"),
    ("file, --resume", lambda c, t: _file(t), True,
     r"^--resume: .*notes.txt is a file, not a directory a bench wrote", r"^resume=True: .*notes.txt is a file"),
    ("missing, --resume", lambda c, t: t / "missing", True,
     r"^--resume: .*missing does not exist, so there is no bench to resume; leave out --resume to start one there",
     r"^resume=True: .*missing does not exist, .*; leave out resume=True"),
    ("results.csv without config.json, --resume", lambda c, t: _results_without_config(t), True,
     r"^--resume: .*rows has results.csv but no bench config.json, so the settings its rows ran with are unknown; "
     r"start the bench in another --output",
     r"^resume=True: .*rows has results.csv but no bench config.json, .* another output$"),
    ("other directory, --resume", lambda c, t: _other_dir(t), True,
     r"^--resume: .*mine is not a directory a bench wrote \(no \.hf-grasp-bench, no results.csv and config.json\)",
     r"^resume=True: .*mine is not a directory a bench wrote"),
    ("merge folder", _merge_folder, False,
     r"^output .*merged is a merge's folder \(it holds grasp_config.json\); a bench writes into a new or empty "
     r"directory: choose another --output$",
     r"^output .*merged is a merge's folder .*: choose another output$"),
    ("source", _source, False,
     r"^output .*source is a model's folder \(it holds config.json\); .* choose another --output$",
     r"^output .*source is a model's folder"),
    ("other directory", lambda c, t: _other_dir(t), False,
     r"^output .*mine is a directory that is not empty and not a bench; .* choose another --output$",
     r"^output .*mine is a directory that is not empty and not a bench; .* choose another output$"),
]
IDS = [c[0] for c in CASES]


def _parent_state(output: Path) -> tuple[dict, list[str]]:
    """Every file under ``output``'s parent, and the names in it: what a refusal must leave as it was."""
    return tree_hashes(output.parent), sorted(p.name for p in output.parent.iterdir())


@pytest.mark.parametrize("case, make, resume, cli_message, _", CASES, ids=IDS)
def test_cli_refuses_what_is_not_a_bench_output(case, make, resume, cli_message, _, checkpoints, tmp_path):
    output = make(checkpoints, tmp_path)
    before = _parent_state(output)
    try:  # before the fix these trained sources for minutes (inside a merge's folder, too)
        proc = run_cli("bench", *SMALL, "--output", str(output), *(["--resume"] if resume else []),
                       env={"HF_HUB_OFFLINE": "1"}, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case}: the bench ran instead of refusing its output")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert re.search(cli_message, errors[0].removeprefix("error: ")), errors[0]
    assert _parent_state(output) == before  # nothing written, nothing made, no lock left


@pytest.mark.parametrize("case, make, resume, _, python_message", CASES, ids=IDS)
def test_python_api_refuses_what_is_not_a_bench_output(case, make, resume, _, python_message, checkpoints,
                                                       tmp_path, fake_runs):
    output = make(checkpoints, tmp_path)
    before = _parent_state(output)
    with pytest.raises(GraspError) as e:
        bench(small(), output, resume=resume)
    assert re.search(python_message, str(e.value)), str(e.value)
    assert "--" not in str(e.value)  # Python's spelling: resume=True, output
    assert fake_runs == [] and _parent_state(output) == before


def test_a_bench_marks_its_output_and_only_resume_continues_it(tmp_path, fake_runs):
    out = tmp_path / "bench"
    bench(small(), out)
    assert (out / MARKER).is_file() and (out / "results.csv").is_file()
    n = len(fake_runs)
    with pytest.raises(GraspError, match=r"results.csv exists: pass resume=True to continue that bench, or choose "
                                         r"another output$"):
        bench(small(), out)
    bench(replace(small(), domains=[1, 2]), out, resume=True)
    assert {d for what, d in fake_runs[n:] if what != "sources"} == {2}  # only the new domain ran


def test_resume_of_a_bench_killed_before_its_first_row(tmp_path, fake_runs):
    """The marker, written first, is what tells a bench that finished nothing from any other directory."""
    out = tmp_path / "bench"
    out.mkdir()
    (out / MARKER).write_text("")
    (out / "sources").mkdir()  # what it was making when killed
    with pytest.raises(GraspError, match=r"\.hf-grasp-bench exists: pass resume=True"):
        bench(small(), out)
    assert fake_runs == []
    bench(small(), out, resume=True)
    assert (out / "results.csv").is_file() and fake_runs


def test_resume_of_a_bench_older_than_the_marker(tmp_path, fake_runs):
    """A bench written before the marker existed: its config.json and results.csv are the shape --resume knows."""
    out = tmp_path / "bench"
    bench(small(), out)
    (out / MARKER).unlink()
    config = json.loads((out / "config.json").read_text())
    assert runner._is_bench(out) and config["recipe"] == "digits-eras"
    n = len(fake_runs)
    bench(small(), out, resume=True)  # nothing to add: the tables are drawn again
    assert len(fake_runs) == n
