"""Sources by Hub repo id, online, against a hub-compatible server on 127.0.0.1.

The server (tests/hub_server.py) answers the read side of the Hub API that
huggingface_hub uses — ``GET /api/models/{id}/revision/{rev}``,
``GET /api/models/{id}/tree/{sha}``, ``HEAD|GET /{id}/resolve/{rev}/{file}``
(ranged too) — from checkpoint directories the tests build, one directory per
(repo, revision), and records every request. So the real code path runs:
pre-flight on remote safetensors headers, downloads through the HF cache,
revision pinning. Publishing to it: tests/test_publish.py.
"""

from __future__ import annotations

import hashlib
import json

import torch
from safetensors.torch import load_file

from conftest import last_json, run_cli, run_python
from hub_server import commit_sha

_commit = commit_sha


def _downloads(log):
    """Requests that fetched a whole repo file rather than a header range."""
    return [(m, p) for m, p, r in log if m == "GET" and "/resolve/" in p and r is None]


SAME_AS_LOCAL = """
import json, sys
from hf_grasp.inputs.sources import SourceRef, read_header, remote_header, resolve
as_text = lambda specs: {k: [list(shape), str(dtype)] for k, (shape, dtype) in specs.items()}
remote = remote_header(SourceRef.parse("org/good"))
print(json.dumps([remote is not None and as_text(remote) == as_text(read_header(resolve(sys.argv[1]))),
                  remote_header(SourceRef.parse("org/missing"))]))
"""


def test_remote_header_matches_the_local_one_without_downloading(hub, checkpoints):
    serve, env, log = hub
    good = checkpoints("resnet", 1)[0]
    serve("org/good", good)
    same, missing = last_json(run_python(SAME_AS_LOCAL, good, env=env))
    assert same and missing is None  # an unknown repo: no answer here, the download reports it
    assert any(p == "/org/good/resolve/main/model.safetensors" and r for _, p, r in log)
    assert not _downloads(log)


def test_mismatched_hub_source_is_refused_before_any_download(hub, checkpoints, tmp_path):
    serve, env, log = hub
    good = checkpoints("resnet", 1)[0]
    five = checkpoints("resnet", 1, seed0=50, num_labels=5)[0]
    serve("org/five-labels", five)
    out = tmp_path / "merged"
    proc = run_cli("merge", "--target", "digits-eras", "--sources", str(good), "org/five-labels",
                   "--output", str(out), "--initial-epochs", "0", "--finetune-epochs", "0", env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert "org/five-labels" in err and "classifier" in err and "--skip-mismatched-heads" in err
    assert any(p.startswith("/org/five-labels/resolve/") for _, p, _ in log)  # the check did ask the server
    assert not _downloads(log) and not out.exists()
    assert not list((tmp_path / "hf").glob("hub/models--org--five-labels/blobs/*"))


def test_merge_by_repo_id_online_pins_revisions(hub, checkpoints, tmp_path):
    serve, env, log = hub
    a, b_main, b_v1 = checkpoints("resnet", 3, seed0=60)
    serve("org/a", a)
    serve("org/b", b_main)
    v1 = serve("org/b", b_v1, revision="v1")
    out = tmp_path / "merged"
    # tau above 1: nothing transferred, so the output is org/a itself; the report names every revision
    proc = run_cli("merge", "--target", "digits-eras", "--sources", "org/a", "org/b@v1", "--output", str(out),
                   "--initial-epochs", "0", "--finetune-epochs", "0", "--tau", "1.5", "--no-eval-sources", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "grasp_report.json").read_text())
    by_ref = {s["ref"]: s for s in report["sources"]}
    assert by_ref["org/b@v1"]["commit"] == v1 and by_ref["org/a"]["commit"] == _commit("org/a", "main")
    # the file hashes recorded are those of the pinned revision's weights, not main's
    pinned = hashlib.sha256((b_v1 / "model.safetensors").read_bytes()).hexdigest()
    assert by_ref["org/b@v1"]["files"]["model.safetensors"] == pinned
    assert not any(p.startswith("/org/b/resolve/main/") for _, p, _ in log)
    merged, first = load_file(str(out / "model.safetensors")), load_file(str(a / "model.safetensors"))
    assert all(torch.equal(merged[k], first[k]) for k in first)


EVICT = """
import json, sys, tempfile
from pathlib import Path
import hf_grasp.engine.context as context
from hf_grasp import GraspMerger

seen, stream = [], context.stream_into

def spy(model, source, *args, **kwargs):  # what is on disk whenever a source is streamed
    scratch = list(Path(tempfile.gettempdir()).rglob("hf-grasp-fetch-*"))
    seen.append([source.name, len(scratch), sum(1 for d in scratch for _ in d.rglob("*.safetensors"))])
    return stream(model, source, *args, **kwargs)

context.stream_into = spy
result = GraspMerger.from_pretrained(["org/a", "org/b", "org/c"], target="digits-eras", initial_epochs=0,
                                     finetune_epochs=0, eval_sources=False, tau=0.0,
                                     evict_sources=sys.argv[1] == "1").merge()
result.save_pretrained(sys.argv[2])
print(json.dumps({"seen": seen, "left": len(list(Path(tempfile.gettempdir()).rglob("hf-grasp-fetch-*"))),
                  "files": {s.ref: s.files for s in result.report.sources}}))
"""


def test_evict_sources_keeps_one_source_on_disk_and_merges_the_same(hub, checkpoints, tmp_path):
    serve, env, log = hub
    srcs = checkpoints("resnet", 3, seed0=70)
    for name, path in zip("abc", srcs):
        serve(f"org/{name}", path)
    runs = {}
    for evict in ("1", "0"):
        tmp = tmp_path / f"tmp{evict}"
        tmp.mkdir()
        run_env = {**env, "HF_HOME": str(tmp_path / f"hf{evict}"), "TMPDIR": str(tmp)}
        runs[evict] = last_json(run_python(EVICT, evict, tmp_path / f"out{evict}", env=run_env))

    evicted = runs["1"]
    # the first source defines the model and stays; each other one is alone on disk while it is streamed
    assert [s[0] for s in evicted["seen"]] == ["org/a", "org/b", "org/c"]
    assert evicted["seen"][0][1:] == [0, 0] and all(s[1:] == [1, 1] for s in evicted["seen"][1:])
    assert evicted["left"] == 0
    assert all(s[1:] == [0, 0] for s in runs["0"]["seen"])
    # hashed when fetched, as without eviction; nothing of theirs but configs in the HF cache
    assert evicted["files"] == runs["0"]["files"]
    assert evicted["files"]["org/b"]["model.safetensors"] == hashlib.sha256(
        (srcs[1] / "model.safetensors").read_bytes()).hexdigest()
    for name in ("b", "c"):
        cached = list((tmp_path / "hf1").glob(f"hub/models--org--{name}/snapshots/*/*"))
        assert cached and not [f for f in cached if f.suffix == ".safetensors"]
    # and the merge is the same model
    one, other = load_file(str(tmp_path / "out1" / "model.safetensors")), load_file(str(tmp_path / "out0" / "model.safetensors"))
    assert one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def test_evict_sources_refused_for_methods_reading_every_source_at_once(hub, checkpoints, tmp_path):
    serve, env, _ = hub
    proc = run_cli("merge", "--target", "digits-eras", "--sources", "org/a", "org/b", "--method", "ties",
                   "--base", "org/a", "--evict-sources", "--output", str(tmp_path / "out"), env=env)
    assert proc.returncode == 2 and "--evict-sources" in proc.stderr and "'ties'" in proc.stderr
