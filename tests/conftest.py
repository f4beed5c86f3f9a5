"""Shared fixtures: Hub-format checkpoints built here, never downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from hf_grasp.bench import archs

LABELS = [str(i) for i in range(10)]


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
    return subprocess.run([sys.executable, "-m", "hf_grasp.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)
