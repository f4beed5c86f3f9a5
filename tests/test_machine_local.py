"""Nothing of the machine that made a merge goes out with it: no temporary directory, HF_HOME, HF cache
or home directory in any file saved or pushed (issue 21, point 5).

Sources are given by Hub repo id and resolved from the hub-compatible server of tests/hub_server.py into
the test's own HF_HOME, so every path the tool could derive (cache snapshots, the output, the datasets
cache) lies under the test's temporary directories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import run_cli
from hub_server import commit_sha

TOKEN = "SECRET-TOKEN-789"


def _machine_paths(tmp_path: Path, base_temp: Path, hf_home: Path) -> set[str]:
    """Every spelling of the directories this machine gave the run."""
    dirs = {tmp_path, base_temp, hf_home, hf_home / "hub", Path.home()}
    return {spelling for d in dirs for spelling in (str(d), os.path.realpath(d))}


def _leaks(files: dict[str, bytes], paths: set[str]) -> list[tuple[str, str]]:
    """``(file, path)`` for every file holding one of ``paths`` (as UTF-8 bytes, or JSON-escaped)."""
    needles = {p: {p.encode(), p.replace("/", "\\/").encode()} for p in paths}
    return [(name, p) for name, data in files.items() for p, forms in needles.items()
            if any(form in data for form in forms)]


def _saved(folder: Path) -> dict[str, bytes]:
    return {f.relative_to(folder).as_posix(): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.mark.slow
def test_saved_and_pushed_files_name_no_path_of_this_machine(hub_server, checkpoints, tmp_path, tmp_path_factory):
    names = ["org/a", "org/b", "org/c"]
    for name, ckpt in zip(names, checkpoints("resnet", 3, seed0=110)):
        hub_server.serve(name, ckpt)
    hf_home = tmp_path / "hf"
    env = {**hub_server.env(hf_home), "HF_TOKEN": "", "OMP_NUM_THREADS": "1"}
    common = ["--target", "digits-eras", "--sources", *names, "--initial-epochs", "0", "--finetune-epochs", "0",
              "--no-progress", "--token", TOKEN]
    runs = {"grasp": ("--method", "grasp"), "ensemble": ("--method", "ensemble", "--no-eval-sources")}
    for repo, method in runs.items():
        proc = run_cli("merge", *common, *method, "--output", str(tmp_path / repo), "--push-to-hub", f"org/{repo}",
                       env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (hf_home / "hub" / "models--org--a").is_dir()  # the sources did come through the cache

    paths = _machine_paths(tmp_path, tmp_path_factory.getbasetemp(), hf_home)
    commits = {c["repo"]: c["files"] for c in hub_server.commits()}
    assert set(commits) == {"org/grasp", "org/ensemble"}
    for repo in runs:
        saved, pushed = _saved(tmp_path / repo), commits[f"org/{repo}"]
        assert pushed == saved
        assert not _leaks(saved, paths), f"{repo}: machine-local paths in {_leaks(saved, paths)}"
    # the sources are named as given, with the commit they resolved to
    report = json.loads(commits["org/grasp"]["grasp_report.json"])
    assert [(s["ref"], s["repo_id"], s["commit"]) for s in report["sources"]] == [
        (n, n, commit_sha(n, "main")) for n in names]
    assert all("path" not in s for s in report["sources"])
    config = json.loads(commits["org/grasp"]["grasp_config.json"])
    assert config["sources"] == [f"{n}@{commit_sha(n, 'main')}" for n in names]
    members = json.loads(commits["org/ensemble"]["ensemble.json"])["members"]
    assert [(m["ref"], m["commit"]) for m in members] == [(n, commit_sha(n, "main")) for n in names]
