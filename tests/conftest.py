"""Shared fixtures: Hub-format checkpoints built here, never downloaded."""

from __future__ import annotations

import os

# One torch thread per test process (and per child it starts), before anything imports torch: the suite runs on
# two xdist workers over two cores, where two spinning OpenMP threads per process would fight (DESIGN.md §6).
# Every byte-identity check compares runs made within this same setting.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

# the hub-compatible server on 127.0.0.1 (tests/hub_server.py), a fixture every test module can use
from hub_server import hub_server  # noqa: F401

from hf_grasp.apps.bench import archs

LABELS = [str(i) for i in range(10)]


def merge_stopped_at_step(merger, area: Path, step: int = 2) -> None:
    """Run ``merger``'s GRASP merge with its resume area ``area`` and stop it (KeyboardInterrupt, as Ctrl-C)
    just before step ``step``: the state the area then holds is that of a merge killed there."""
    import hf_grasp.methods.grasp as grasp_module

    real = grasp_module._transfer_step

    def stopped(ctx, k, *args):
        if k == step:
            raise KeyboardInterrupt
        return real(ctx, k, *args)

    grasp_module._transfer_step = stopped
    try:
        with pytest.raises(KeyboardInterrupt):
            merger.merge(checkpoint_dir=area)
    finally:
        grasp_module._transfer_step = real


def make_checkpoints(root: Path, arch: str, n: int, *, seed0: int = 0, num_labels: int = 10) -> list[Path]:
    """``n`` checkpoints of ``arch`` with different random weights, as a Hub repo holds them."""
    out = []
    for i in range(n):
        d = root / f"{arch.replace(':', '-')}-s{seed0 + i}"
        if not d.exists():
            archs.new_checkpoint(arch, d, num_labels=num_labels, id2label=dict(enumerate(LABELS[:num_labels])),
                                 image_size=32, seed=seed0 + i)
        out.append(d)
    return out


@pytest.fixture(scope="session", autouse=True)
def datasets_cache(tmp_path_factory):
    """Point the datasets cache (read at call time) at a per-session temp dir, for every test.

    In-process loads (digits-eras is built once per session) then never read or
    write the user's cache; subprocesses keep their own environment's cache.
    """
    root = tmp_path_factory.getbasetemp() / "hf-datasets-cache"
    root.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", root)
        yield root


@pytest.fixture
def hub(hub_server, tmp_path):
    """The server as ``(serve, env, log)``: ``serve(repo_id, dir, revision="main")`` publishes a dir, ``env`` points
    huggingface_hub at the server (a fresh HF_HOME), ``log`` records every request."""
    return hub_server.serve, hub_server.env(tmp_path / "hf"), hub_server.log


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Factory: ``checkpoints(arch, n)`` -> list of checkpoint dirs (cached per session)."""
    root = tmp_path_factory.mktemp("ckpts")
    return lambda arch, n, **kw: make_checkpoints(root, arch, n, **kw)


def run_python(code: str, *argv: str, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``code`` with ``argv`` in a fresh interpreter (so HF env vars are read anew); assert it succeeds."""
    proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def last_json(proc: subprocess.CompletedProcess):
    """The JSON value a subprocess printed on its last line."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(*args: str, env: dict | None = None, cwd=None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf_grasp.apps.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)


OFFLINE = {"HF_HUB_OFFLINE": "1"}


def write_pngs(root: Path, classes: dict[str, int], mode: str, seed: int) -> None:
    """An imagefolder split: ``root/<class>/<i>.png`` random 12x12 images, ``count`` per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            shape = (12, 12) if mode == "L" else (12, 12, 3)
            Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode).save(
                root / name / f"{i}.png"
            )


def tree_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under ``roots`` (directories that do not exist give nothing)."""
    import hashlib

    out = {}
    for root in map(Path, roots):
        if root.is_dir():
            for f in sorted(p for p in root.rglob("*") if p.is_file()):
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def merge_fails(tmp_path: Path, sources, *extra: str, env: dict | None = OFFLINE, output: Path | None = None,
                code: int = 2, target: str = "digits-eras") -> str:
    """Run a 0-epoch ``hf-grasp merge`` that must fail cleanly; returns its one ``error:`` line.

    Asserts: exit status ``code``, exactly one ``error:`` line, no traceback, no output directory or hidden
    temporary sibling left behind, and every local source's files byte-identical afterwards.
    """
    out = output or tmp_path / "merged"
    local = [Path(s) for s in map(str, sources) if Path(s).exists()]
    before = tree_hashes(*local)
    existed = out.exists()
    given = ["--sources", *map(str, sources)] if sources else []  # none: the case is about --from
    argv = ["merge", "--target", str(target), *given, "--output", str(out),
            "--initial-epochs", "0", "--finetune-epochs", "0", *extra]
    returncode, stdout, stderr = _run_main(argv) if _same_env(env) else _run_subprocess(argv, env)
    assert returncode == code, stdout + stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    if not existed:
        assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert tree_hashes(*local) == before, "a source was modified"
    return errors[0]


def _same_env(env: dict | None) -> bool:
    """Whether ``env`` changes nothing in this process's environment (then the CLI can run in-process)."""
    return all(os.environ.get(k) == v for k, v in (env or {}).items())


def _run_main(argv: list[str]) -> tuple[int, str, str]:
    """``hf-grasp ARGV`` in this process: ~1 s instead of the ~8 s a new interpreter spends importing torch.
    An exception escaping ``main`` fails the test, as a traceback would."""
    import contextlib
    import io

    from hf_grasp.apps.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own refusals
            code = e.code if isinstance(e.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def _run_subprocess(argv: list[str], env: dict | None) -> tuple[int, str, str]:
    proc = run_cli(*argv, env=env)
    return proc.returncode, proc.stdout, proc.stderr
