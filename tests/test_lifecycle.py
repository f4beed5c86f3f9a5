"""A merge's life after it is written: made again from its saved configuration, continued with one more
source, resumed after ``kill -9``, and the same bits every time.

Hub sources and pushed merges go through the hub-compatible server of tests/hub_server.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import OFFLINE, merge_fails, run_cli, run_python
from hub_server import commit_sha

TOKEN = "SECRET-TOKEN-456"
EPOCHS = ("--initial-epochs", "0", "--finetune-epochs", "1")


def _weights(folder: Path) -> bytes:
    return (Path(folder) / "model.safetensors").read_bytes()


def _report(folder: Path) -> dict:
    return json.loads((Path(folder) / "grasp_report.json").read_text())


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


REBUILD = """
import sys
from hf_grasp import GraspMerger
merger = GraspMerger.from_pretrained(sys.argv[1])
merger.merge().save_pretrained(sys.argv[2])
"""

CARD = """
import json, sys
from huggingface_hub import ModelCard
print(json.dumps(ModelCard.load(sys.argv[1]).data.to_dict()))
"""


@pytest.mark.slow
def test_published_merge_is_made_again_and_continued_by_repo_id(hub_server, checkpoints, tmp_path):
    names = [f"org/s{i}" for i in range(4)]
    for name, ckpt in zip(names, checkpoints("resnet", 4, seed0=90)):
        hub_server.serve(name, ckpt)
    env = {**hub_server.env(tmp_path / "hf"), "HF_TOKEN": TOKEN}

    def merge(out: str, *args: str) -> Path:
        _ok(run_cli("merge", "--target", "digits-eras", "--output", str(tmp_path / out), *EPOCHS, "--no-progress",
                    *args, env=env))
        return tmp_path / out

    three = merge("m3", "--sources", *names[:3], "--push-to-hub", "org/merged3")
    config = json.loads((three / "grasp_config.json").read_text())
    assert config["sources"] == [f"{n}@{commit_sha(n, 'main')}" for n in names[:3]]  # pinned to what was merged
    assert config["method"] == "grasp" and config["options"]["seed"] == 0 and config["params"]["tau"] == 0.3
    assert TOKEN not in (three / "grasp_config.json").read_text()

    # GraspMerger.from_pretrained("org/merged3").merge() in a fresh process and cache: the published bytes
    fresh = {**hub_server.env(tmp_path / "hf-fresh"), "HF_TOKEN": ""}
    run_python(REBUILD, "org/merged3", tmp_path / "rebuilt", env=fresh)
    assert _weights(tmp_path / "rebuilt") == _weights(three)

    # 3 + 1: continuing org/merged3 with org/s3 runs ONE step and ends where the 4-source merge ends
    four = merge("m4", "--sources", *names)
    proc = run_cli("merge", "--init", "org/merged3", "--sources", names[3], "--output", str(tmp_path / "m31"),
                   "--no-progress", "--push-to-hub", "org/merged4", env=env)  # target, epochs, lr: inherited
    _ok(proc)
    assert "initial fine-tune" not in proc.stderr and proc.stderr.count("fine-tune after") == 1
    assert _weights(tmp_path / "m31") == _weights(four)
    report = _report(tmp_path / "m31")
    assert [s["step"] for s in report["steps"]] == ["init", "source 1", "source 2", "source 3"]
    assert [s["ref"] for s in report["sources"]] == names
    assert report["continued_from"]["ref"] == "org/merged3" and report["epochs_trained"] == 3
    timeless = [{k: v for k, v in s.items() if k not in ("seconds", "phases")} for s in report["steps"]]
    assert timeless == [{k: v for k, v in s.items() if k not in ("seconds", "phases")}
                        for s in _report(four)["steps"]]
    card = json.loads(run_python(CARD, "org/merged4", env=fresh).stdout.strip().splitlines()[-1])
    assert card["base_model"] == names and card["base_model_relation"] == "merge"

    # the continued merge is made again by its repo id too, through the merge it continued
    _ok(run_cli("merge", "--from", "org/merged4", "--output", str(tmp_path / "again"), "--no-progress", env=fresh))
    assert _weights(tmp_path / "again") == _weights(four)


def _start(log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hf_grasp.apps.cli", "merge", "--target", "digits-eras", *args],
                            stdout=subprocess.DEVNULL, stderr=log.open("w"), env={**os.environ, **OFFLINE})


def _wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout: float = 300) -> None:
    end = time.time() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < end, f"no {text!r} in: {log.read_text()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_in_step_2_then_resume_gives_the_same_bits(checkpoints, tmp_path):
    sources = [str(s) for s in checkpoints("resnet", 3, seed0=95)]
    args = ["--sources", *sources, "--initial-epochs", "1", "--finetune-epochs", "2", "--no-progress"]

    # the same command twice: the same bytes
    for out in ("a", "b"):
        _ok(run_cli("merge", "--target", "digits-eras", *args, "--output", str(tmp_path / out), env=OFFLINE))
    assert _weights(tmp_path / "a") == _weights(tmp_path / "b")
    assert not (tmp_path / ".a.resume").exists()  # the work area goes once the output is in place

    out, log = tmp_path / "k", tmp_path / "k.log"
    proc = _start(log, *args, "--output", str(out))
    # step 2 of 3 (the second source): killed in the middle of its fine-tuning
    _wait_for_line(proc, log, f"fine-tune after {sources[2]} epoch 1/2")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    area = tmp_path / ".k.resume"
    state = json.loads((area / "state.json").read_text())
    assert state["steps_done"] == 2 and not out.exists()

    # another merge on this output is refused (the state would be lost), and so is a resume with other settings
    fresh = run_cli("merge", "--target", "digits-eras", *args, "--output", str(out), env=OFFLINE)
    assert fresh.returncode == 2 and "an interrupted merge left its state after 2 step(s)" in fresh.stderr
    refused = run_cli("merge", "--target", "digits-eras", *args, "--lr", "0.01", "--resume", "--output", str(out),
                      env=OFFLINE)
    assert refused.returncode == 2 and "option lr is 0.01 now, 0.001 in the interrupted run" in refused.stderr
    assert json.loads((area / "state.json").read_text()) == state  # both left it as it was

    resumed = _ok(run_cli("merge", "--target", "digits-eras", *args, "--resume", "--output", str(out), env=OFFLINE))
    assert "resuming after step 2" in resumed.stderr and "initial fine-tune" not in resumed.stderr
    assert _weights(out) == _weights(tmp_path / "a")
    steps = [s["step"] for s in _report(out)["steps"]]
    assert steps == ["init", "source 1", "source 2"] and not area.exists()


def test_from_and_resume_refusals(checkpoints, tmp_path):
    sources = checkpoints("resnet", 2)
    assert "not both" in merge_fails(tmp_path, sources, "--from", str(sources[0]))
    assert "holds no grasp_config.json" in merge_fails(tmp_path, [], "--from", str(sources[0]))
    line = merge_fails(tmp_path, sources, "--method", "multi-source", "--resume")
    assert "method 'multi-source' does not checkpoint" in line and "grasp" in line


def test_a_malformed_config_or_resume_state_is_one_line_naming_it(checkpoints, tmp_path):
    from conftest import _run_main

    sources = checkpoints("resnet", 2)
    fake = tmp_path / "fake-merge"
    fake.mkdir()
    (fake / "grasp_config.json").write_text(json.dumps({"method": "grasp", "sources": "org/a", "target": None,
                                                         "recipe": None, "options": {}, "params": {}}))
    line = merge_fails(tmp_path, [], "--from", str(fake))
    assert str(fake / "grasp_config.json") in line and "field 'sources' must be a list" in line

    # a resume state that names a file outside its area is refused before anything is read from it
    area = tmp_path / ".merged.resume"
    area.mkdir()
    (area / "state.json").write_text(json.dumps({
        "steps_done": 0, "records": [], "weights": "../../elsewhere.safetensors",
        "config": {"method": "grasp", "sources": [], "target": None, "recipe": None, "options": {}, "params": {}}}))
    code, _, err = _run_main(["merge", "--target", "digits-eras", "--sources", *map(str, sources), "--output",
                              str(tmp_path / "merged"), "--resume", "--initial-epochs", "0", "--finetune-epochs", "0"])
    assert code == 2 and "Traceback" not in err
    [line] = [e for e in err.splitlines() if e.startswith("error: ")]
    assert "resume state" in line and "is unreadable" in line and "not a state file of this area" in line
    assert (area / "state.json").exists() and not (tmp_path / "merged").exists()


def test_a_config_saved_before_schedule_per_existed_rebuilds_with_its_per_step_schedule():
    from hf_grasp.plan.plan import MergePlan

    old = {"method": "grasp", "sources": ["a", "b"], "target": "digits-eras", "recipe": None,
           "options": {"lr": 1e-3}, "params": {"tau": 0.3}}
    assert MergePlan.from_dict(old).options == {"schedule_per": "step", "lr": 1e-3}
    assert MergePlan.from_dict({**old, "options": {"schedule_per": "epoch"}}).options["schedule_per"] == "epoch"
