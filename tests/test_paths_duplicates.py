"""Outputs whose names the file system cannot hold, and sources given twice (issue 24).

An output whose name, or a name or path derived from it (temporary siblings,
lock, resume area), exceeds the file system's limits is refused up front in one
line, and a legal long name is shortened where hf-grasp derives names from it;
a failed run removes the parent directories it made. The same checkpoint given
twice among the sources (same directory however spelled, same repo and commit,
byte-identical weights) is refused naming both, unless ``--allow-duplicates``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from conftest import OFFLINE, _run_main, _run_subprocess, merge_fails, run_cli
from hf_grasp.apps.bench.hub_cache import publish_to_cache

MERGE = ["merge", "--target", "digits-eras", "--no-eval-sources", "--initial-epochs", "0", "--finetune-epochs", "0"]
NAME_MAX = os.pathconf("/tmp", "PC_NAME_MAX")
PATH_MAX = os.pathconf("/tmp", "PC_PATH_MAX")


def _fails(sources, out: Path, *extra: str, env: dict | None = None) -> tuple[str, float]:
    """A merge that must fail cleanly (exit 2, one ``error:`` line, no traceback); its line and seconds."""
    argv = [*MERGE, "--sources", *map(str, sources), "--output", str(out), *extra]
    start = time.monotonic()
    code, stdout, stderr = _run_subprocess(argv, env) if env else _run_main(argv)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stdout + stderr
    return errors[0], time.monotonic() - start


def _deep(root: Path, length: int) -> Path:
    """A path under ``root`` of exactly ``length`` bytes, made of 200-byte names (none of them existing)."""
    parts, left = [], length - len(str(root))
    while left > 0:
        take = min(200, left - 1)
        if left - 1 - take in range(1, 2):  # never a last name of zero bytes
            take -= 2
        parts.append("d" * take)
        left -= take + 1
    return root.joinpath(*parts)


# --- names and paths --------------------------------------------------------------------------------------


def test_a_name_over_the_limit_is_refused_in_one_line_leaving_nothing(tmp_path, checkpoints):
    name = "a" * (NAME_MAX + 45)
    line, _ = _fails(checkpoints("resnet", 2), tmp_path / name)  # was: an OSError traceback
    assert f"has {NAME_MAX + 45} bytes, over the {NAME_MAX}-byte file-name limit" in line
    line, _ = _fails(checkpoints("resnet", 2), tmp_path / "new" / "deeper" / name)  # was: "cannot write in"
    assert "file-name limit" in line
    assert list(tmp_path.iterdir()) == []


def test_a_path_over_the_limit_is_refused_before_any_work_leaving_nothing(tmp_path, checkpoints):
    # fits itself, but not its temporary sibling and the files in it: was refused only after the merge, by an
    # OSError traceback, leaving its 20 parent directories
    out = _deep(tmp_path / "made", PATH_MAX - 25)
    assert len(str(out)) == PATH_MAX - 25
    line, seconds = _fails(checkpoints("resnet", 2), out)
    assert "path limit of its file system; choose a shorter --output" in line
    assert seconds < 5  # before the target is loaded
    assert list(tmp_path.iterdir()) == []


def test_a_failed_run_removes_the_parent_directories_it_made(tmp_path, checkpoints):
    (tmp_path / "kept").mkdir()
    line, _ = _fails([checkpoints("resnet", 1)[0], tmp_path / "missing"], tmp_path / "kept" / "a" / "b" / "merged")
    assert "missing" in line
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


@pytest.mark.slow
def test_a_legal_long_name_is_written_with_shortened_temporary_names(tmp_path, checkpoints):
    out = tmp_path / ("b" * (NAME_MAX - 5))  # too long for ".NAME.tmp-<pid>-<start>-<random>": was refused
    proc = run_cli(*MERGE, "--method", "finetune-only", "--sources", *map(str, checkpoints("resnet", 2)),
                   "--output", str(out), env=OFFLINE)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").is_file() and [p.name for p in tmp_path.iterdir()] == [out.name]


# --- duplicate sources ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["twice", "symlink", "dotdot"])
def test_the_same_directory_twice_is_refused_naming_both(tmp_path, checkpoints, spelling):
    a = Path(shutil.copytree(checkpoints("resnet", 1)[0], tmp_path / "a"))
    other = {"twice": a, "symlink": tmp_path / "link", "dotdot": tmp_path / "a" / ".." / "a"}[spelling]
    if spelling == "symlink":
        other.symlink_to(a, target_is_directory=True)
    line = merge_fails(tmp_path, [a, other])
    assert line == (f"error: sources {str(a)!r} and {str(other)!r} are the same checkpoint (the same directory {a}), "
                    "which the merge would count twice: drop one, or pass --allow-duplicates if that is meant")


def test_a_byte_identical_copy_is_refused_naming_both(tmp_path, checkpoints):
    first, second = checkpoints("resnet", 2)
    copy = Path(shutil.copytree(first, tmp_path / "copy"))
    line = merge_fails(tmp_path, [first, second, copy])
    assert f"sources {str(first)!r} and {str(copy)!r} are the same checkpoint (byte-identical weight files" in line


@pytest.mark.slow  # a new interpreter: another HF_HOME
def test_a_hub_id_and_a_local_copy_of_it_are_refused(tmp_path, checkpoints, datasets_cache):
    first, second = checkpoints("resnet", 2)
    publish_to_cache(first, "org/first", cache_dir=tmp_path / "hf" / "hub")
    env = {**OFFLINE, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(datasets_cache)}
    line, _ = _fails(["org/first", second, first], tmp_path / "merged", env=env)
    assert f"sources 'org/first' and {str(first)!r} are the same checkpoint (byte-identical weight files" in line
    assert not (tmp_path / "merged").exists()


def test_allow_duplicates_merges_the_same_directory_twice(tmp_path, checkpoints):
    first = checkpoints("resnet", 1)[0]
    out = tmp_path / "merged"
    code, stdout, stderr = _run_main([*MERGE, "--sources", str(first), str(first), "--output", str(out),
                                      "--allow-duplicates"])
    assert code == 0, stderr
    assert (out / "model.safetensors").is_file()
