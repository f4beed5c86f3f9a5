"""Hostile outputs and interrupted runs.

An output the run must not or cannot write is refused before any work; a
second run on an output being written is refused at once; SIGTERM and Ctrl-C
clean up; what SIGKILL leaves is swept by the next run.

The background runs get their own TMPDIR so that their scratch is observable
in isolation.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import OFFLINE, merge_fails, run_cli, tree_hashes

# the console script users run (beside this interpreter: the same environment); `python -m hf_grasp.apps.cli`
# died by SIGINT after its clean exit in about 1 run in 10 here, the script not in 12 (not understood)
HF_GRASP = Path(sys.executable).with_name("hf-grasp")
MERGE = ["merge", "--target", "digits-eras", "--no-eval-sources", "--finetune-epochs", "0"]


def _copies(checkpoints, root: Path) -> list[Path]:
    """Private copies of two session checkpoints: a broken check must not destroy the shared ones."""
    root.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copytree(src, root / src.name)) for src in checkpoints("resnet", 2)]


def _refused(*args: str, cwd=None, env: dict | None = None) -> str:
    """Run the CLI, which must refuse: exit 2, one ``error:`` line, no traceback; returns that line."""
    proc = run_cli(*args, cwd=cwd, env={**OFFLINE, **(env or {})})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return errors[0]


# --- refused before any work ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["is", "is inside", "contains"])
def test_output_overlapping_a_source_is_refused_even_with_overwrite(tmp_path, checkpoints, where):
    srcs = _copies(checkpoints, tmp_path / "inputs")
    out = {"is": srcs[0], "is inside": srcs[0] / "merged", "contains": tmp_path / "inputs"}[where]
    line = merge_fails(tmp_path, srcs, "--overwrite", output=out)  # also: sources byte-identical after
    assert f"output {out} {where} source" in line and "outside every input" in line


def test_output_inside_the_hf_cache_is_refused(tmp_path, checkpoints):
    (tmp_path / "hf" / "hub").mkdir(parents=True)
    out = tmp_path / "hf" / "hub" / "merged"
    line = merge_fails(tmp_path, checkpoints("resnet", 2), output=out, env={**OFFLINE, "HF_HOME": str(tmp_path / "hf")})
    assert "is inside the Hugging Face cache" in line


def test_output_that_is_an_existing_file_is_refused(tmp_path, checkpoints):
    out = tmp_path / "model.bin"
    out.write_bytes(b"not a directory")
    line = merge_fails(tmp_path, checkpoints("resnet", 2), "--overwrite", output=out)
    assert line == f"error: output {out} is an existing file, not a directory; choose a directory for --output"
    assert out.read_bytes() == b"not a directory"


def test_output_under_a_file_is_refused(tmp_path, checkpoints):
    # a location no one can create, root included
    (tmp_path / "notes.txt").write_text("x")
    out = tmp_path / "notes.txt" / "merged"
    line = _refused(*MERGE, "--sources", *map(str, checkpoints("resnet", 2)), "--output", str(out))
    assert f"{tmp_path / 'notes.txt'} is a file" in line
    assert (tmp_path / "notes.txt").read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores permission bits; test_output_under_a_file_is_refused covers a location "
                           "root cannot write either")
def test_output_in_a_read_only_directory_is_refused(tmp_path, checkpoints):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        line = merge_fails(tmp_path, checkpoints("resnet", 2), output=ro / "merged")
    finally:
        ro.chmod(0o755)
    assert f"cannot write in {ro}" in line


@pytest.mark.parametrize("output", [".", "..", "CWD"])
def test_output_that_is_or_contains_the_current_directory_is_refused(tmp_path, checkpoints, output):
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "keep.txt").write_text("mine")
    output = str(cwd) if output == "CWD" else output
    before = tree_hashes(tmp_path)
    line = _refused(*MERGE, "--initial-epochs", "0", "--sources", *map(str, checkpoints("resnet", 2)),
                    "--output", output, "--overwrite", cwd=cwd)
    assert f"output {output} is the current directory or contains it" in line
    assert tree_hashes(tmp_path) == before and sorted(os.listdir(tmp_path)) == ["work"]


# --- runs in the background -------------------------------------------------------------------------------


def _start(tmp_path: Path, sources, out: Path, epochs: int = 50) -> subprocess.Popen:
    """A real merge in the background that lasts (``epochs`` of fine-tuning), with TMPDIR ``tmp_path/tmp``.

    SIGINT is reset to its default in the child, so Python turns it into KeyboardInterrupt even when the
    suite itself runs with SIGINT ignored (a background job of a non-interactive shell).
    """
    (tmp_path / "tmp").mkdir(exist_ok=True)
    with open(tmp_path / "run.log", "w") as log:  # a file, not a pipe nobody reads while the run lasts
        return subprocess.Popen(
            [str(HF_GRASP), *MERGE, "--initial-epochs", str(epochs), "--sources",
             *map(str, sources), "--output", str(out)],
            env={**os.environ, **OFFLINE, "TMPDIR": str(tmp_path / "tmp")}, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc: subprocess.Popen, tmp_path: Path, ready, timeout: float = 120) -> None:
    """Poll until ``ready()`` holds; fails with the run's log if it ends or takes longer."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run {'ended' if proc.returncode is not None else 'stalled'}:\n"
                        + (tmp_path / "run.log").read_text()[-3000:])
        time.sleep(0.05)


def _run_dirs(tmp_path: Path) -> list[Path]:
    """The per-process scratch directories under the runs' TMPDIR."""
    return sorted((tmp_path / "tmp").glob("hf-grasp-runs-*/*"))


def _fine_tuning(tmp_path: Path) -> bool:
    """Whether the run is mid-fine-tuning: its best-state scratch exists."""
    return bool(list((tmp_path / "tmp").glob("hf-grasp-runs-*/*/hf-grasp-best-*")))


def _lock_pid(out: Path) -> int | None:
    """The PID written in the output's lock file, if any yet."""
    try:
        text = (out.parent / f".{out.name}.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _one_error_line(tmp_path: Path) -> str:
    """The run's only ``error:`` line; its log holds no traceback."""
    log = (tmp_path / "run.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in log, log[-3000:]
    return errors[0]


def _siblings(out: Path) -> list[str]:
    """The hidden ``.NAME.*`` entries beside ``out``: lock, temporary and old directories."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_second_run_on_the_same_output_is_refused_at_once(tmp_path, checkpoints):
    srcs, out = checkpoints("resnet", 2), tmp_path / "merged"
    first = _start(tmp_path, srcs, out)
    try:
        _wait_for(first, tmp_path, lambda: _lock_pid(out) == first.pid)
        start = time.monotonic()
        line = _refused(*MERGE, "--initial-epochs", "0", "--sources", *map(str, srcs), "--output", str(out),
                        "--overwrite")
        assert time.monotonic() - start < 15, "refused only after loading data and models"
        assert line == (f"error: output {out} is being written by another hf-grasp run (PID {first.pid}); "
                        "wait for it to finish or choose another --output")
    finally:
        first.kill()
        first.wait()


def test_ctrl_c_exits_130_with_one_line_and_leaves_nothing(tmp_path, checkpoints):
    # interrupted while fine-tuning: a SIGINT that lands inside a library's import can be swallowed by that
    # library's own bare `except:` (seen once here), which no handler of ours can prevent
    out = tmp_path / "merged"
    run = _start(tmp_path, checkpoints("resnet", 2), out)
    _wait_for(run, tmp_path, lambda: _fine_tuning(tmp_path))
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130
    assert _one_error_line(tmp_path) == "error: interrupted by Ctrl-C (SIGINT); the run's temporary files were removed"
    assert not out.exists() and _siblings(out) == [] and _run_dirs(tmp_path) == []


def test_sigkill_leaves_scratch_the_next_run_sweeps_and_sigterm_leaves_nothing(tmp_path, checkpoints):
    from hf_grasp.runtime.workspace import owner_tag

    srcs, out = checkpoints("resnet", 2), tmp_path / "merged"
    killed = _start(tmp_path, srcs, out)
    _wait_for(killed, tmp_path, lambda: _fine_tuning(tmp_path))
    killed.kill()
    killed.wait()
    [dead] = _run_dirs(tmp_path)  # SIGKILL runs no cleanup: its scratch and its lock stay
    assert dead.name.startswith(f"{killed.pid}-") and _siblings(out) == [".merged.lock"]
    # what a kill during the final rename leaves, and the same from a run that is still alive (this one)
    (tmp_path / f".merged.tmp-{dead.name}-x1").mkdir()
    (tmp_path / f".merged.tmp-{owner_tag()}-x2").mkdir()

    rerun = _start(tmp_path, srcs, out)  # takes the stale lock over and sweeps, then is stopped mid-fine-tuning
    _wait_for(rerun, tmp_path, lambda: _fine_tuning(tmp_path) and not dead.exists())
    assert _siblings(out) == [".merged.lock", f".merged.tmp-{owner_tag()}-x2"] and _lock_pid(out) == rerun.pid
    rerun.send_signal(signal.SIGTERM)
    assert rerun.wait(timeout=60) == 143
    assert _one_error_line(tmp_path) == "error: interrupted by SIGTERM; the run's temporary files were removed"
    assert not out.exists() and _run_dirs(tmp_path) == []
    assert _siblings(out) == [f".merged.tmp-{owner_tag()}-x2"]  # a live owner's is left alone


@pytest.fixture
def small_disk(tmp_path):
    """A file system of ``size`` KiB mounted under tmp_path (a tmpfs; needs root, skipped otherwise)."""
    mounted = []

    def mount(kib: int) -> Path:
        where = tmp_path / f"disk{kib}"
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def test_a_full_disk_is_found_before_the_merge_and_when_writing(small_disk, tmp_path, checkpoints, monkeypatch):
    srcs = checkpoints("resnet", 2)
    tiny = small_disk(300)  # less than one checkpoint: refused before any work
    line = merge_fails(tmp_path, srcs, output=tiny / "merged")
    assert "MiB free" in line and "free space or choose another --output" in line
    snug = small_disk(1400)  # room for the weights, not for GRASP's resume state beside them: refused at once
    line = merge_fails(tmp_path, srcs, output=snug / "merged")
    assert "MiB free" in line
    # a disk that fills during the run (another process writing): fails while writing, leaves nothing
    monkeypatch.setattr("hf_grasp.merger.check_free_space", lambda *args, **kwargs: None)
    line = merge_fails(tmp_path, srcs, output=snug / "merged")  # the resume state after step 2
    assert "writing the merge's state after step 2 failed" in line and "No space left on device" in line
    line = merge_fails(tmp_path, srcs, "--method", "multi-source", output=small_disk(1000) / "merged")
    assert "writing it failed" in line and "No space left on device" in line
    assert list(snug.iterdir()) == []
