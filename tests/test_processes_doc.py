"""docs/processes.md runs as written: every command of its ```bash blocks is executed here, on a tiny merge.

The launch commands must start two ranks (each says so in its first log line) that make the single process's
model byte for byte (fine-tuning off, as in tests/test_scale_out.py); the pitfalls must do what the page says:
one refused by accelerate, one running alone with exactly one warning saying so. Only ``hf-grasp
make-sources`` is not run: ``sources/`` is filled with the session's small checkpoints instead (a minute saved).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "processes.md"
#: what the doc's commands expect in their working directory, filled by the fixture
SOURCES = ("d0", "d1", "d3")


def doc_commands() -> dict[str, list[str]]:
    """The commands of the page's ```bash blocks, by the title of the section holding them (a command's
    continuation lines joined; comments and blank lines left out)."""
    sections: dict[str, list[str]] = {}
    title, block = "", None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if block is None and line.startswith("## "):
            title = line[3:].strip()
        elif block is None and line.strip() == "```bash":
            block = []
        elif block is not None and line.strip() == "```":
            text = "\n".join(x for x in block if not x.lstrip().startswith("#")).replace("\\\n", " ")
            sections.setdefault(title, []).extend(c.strip() for c in text.splitlines() if c.strip())
            block = None
        elif block is not None:
            block.append(line)
    return sections


def doc_text_lines() -> list[str]:
    """The lines of the page's ```text blocks (the log lines it shows)."""
    return re.findall(r"^(hf-grasp: .*)$", "\n".join(re.findall(r"```text\n(.*?)```", DOC.read_text(), re.S)), re.M)


@pytest.fixture(scope="module")
def workdir(checkpoints, tmp_path_factory) -> Path:
    """A directory holding ``sources/d0``, ``d1``, ``d3``, as ``hf-grasp make-sources`` would leave them."""
    work = tmp_path_factory.mktemp("processes-doc")
    for name, ckpt in zip(SOURCES, checkpoints("resnet", len(SOURCES), seed0=120)):
        shutil.copytree(ckpt, work / "sources" / name)
    return work


def _env(**extra: str) -> dict[str, str]:
    """This environment, offline, with the venv's console scripts (hf-grasp, torchrun, accelerate) on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": path, **extra}


def _start(command: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run(command: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    proc = _start(command, cwd, env or _env())
    stdout, stderr = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


def _ranks(stderr: str) -> list[str]:
    """The ranks whose first log line is in ``stderr``, as "0 of 2", ..., or "alone" for a single process."""
    found = re.findall(r"^hf-grasp: version \S+ on (?:1 process|2 processes \(rank (\d of 2), gloo)", stderr, re.M)
    return sorted(r or "alone" for r in found)


def _model(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.mark.slow
def test_one_machine_commands_run_as_written(workdir):
    commands = [c for c in doc_commands()["Try it on one machine"] if not c.startswith("hf-grasp make-sources")]
    launchers = [c for c in commands if c.startswith(("torchrun", "accelerate launch"))]
    assert len(launchers) == 2 and sum(c.startswith("cmp ") for c in commands) == 2
    for command in commands:  # in the page's order: the comparisons come last
        proc = _run(command, workdir)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        if command in launchers:
            assert _ranks(proc.stderr) == ["0 of 2", "1 of 2"], proc.stderr[-3000:]
            assert proc.stdout.count("merged model written to") == 1  # rank 0 alone writes
        elif "hf-grasp merge" in command:
            assert _ranks(proc.stderr) == ["alone"]
    models = {_model(folder) for folder in workdir.glob("merged-[123]")}
    assert len(models) == 1 and len(list(workdir.glob("merged-[123]"))) == 3


@pytest.mark.slow
def test_several_machine_commands_run_as_written_on_one(workdir):
    """Each pair (machine 0, machine 1) started at once on this machine, MAIN_IP its loopback address."""
    from hf_grasp import GraspMerger

    commands = doc_commands()["Several machines"]
    assert len(commands) == 4
    reference = workdir / "reference"  # the single process's model, made in this one
    merger = GraspMerger.from_pretrained([str(workdir / "sources" / s) for s in SOURCES], target="digits-eras",
                                         initial_epochs=0, finetune_epochs=0)
    merger.merge().save_pretrained(reference)
    for machine0, machine1 in (commands[0:2], commands[2:4]):
        env = _env(MAIN_IP="127.0.0.1", MAIN_PORT=_free_port())
        procs = [_start(command, workdir, env) for command in (machine1, machine0)]
        (out1, err1), (out0, err0) = (p.communicate(timeout=900) for p in procs)
        assert [p.returncode for p in procs] == [0, 0], f"{err0[-3000:]}\n{err1[-3000:]}"
        assert (_ranks(err0), _ranks(err1)) == (["0 of 2"], ["1 of 2"])
        assert "merged model written to" in out0 and "merged model written to" not in out1
        output = Path(re.search(r"--output (\S+)", machine0)[1])
        assert _model(workdir / output) == _model(reference)


@pytest.mark.slow
def test_pitfalls_do_what_the_page_says(workdir):
    refused, alone = doc_commands()["Pitfalls of accelerate launch on CPUs"]
    proc = _run(refused, workdir)
    assert proc.returncode != 0 and "You can only use one of `--cpu`, `--multi_gpu`" in proc.stderr
    assert not (workdir / "merged-refused").exists()

    proc = _run(alone, workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _ranks(proc.stderr) == ["alone"]
    warnings = [line for line in proc.stderr.splitlines()
                if line.startswith("hf-grasp: warning:") and "alone" in line]
    assert len(warnings) == 1, proc.stderr[-3000:]
    assert proc.stdout.count("merged model written to") == 1
    assert (workdir / "merged-alone" / "model.safetensors").is_file()
    # the page shows the very lines a run writes (the version aside)
    version = re.compile(r"version \S+")
    shown = {version.sub("version V", line) for line in doc_text_lines()}
    assert version.sub("version V", warnings[0]) in shown
    first = next(line for line in proc.stderr.splitlines() if line.startswith("hf-grasp: version"))
    assert version.sub("version V", first) in shown
