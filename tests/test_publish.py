"""Publishing a merge: ``hf-grasp merge --push-to-hub`` and ``MergeResult.push_to_hub``, against the
hub-compatible server of tests/hub_server.py (create_repo, preupload, LFS, one ndjson commit).

The pushed repo is then read back by repo id through the same server with plain
transformers and ``ModelCard.load``, as a user of the Hub would.
"""

from __future__ import annotations

import json

import pytest
import torch

from conftest import last_json, merge_fails, run_cli, run_python
from test_hub_e2e import LOGITS, PLAIN

TOKEN = "SECRET-TOKEN-123"
PUSHED = {"model.safetensors", "config.json", "preprocessor_config.json", "README.md", "grasp_report.json",
          "alignment.png"}

READ_BACK = """
import json, sys
from huggingface_hub import ModelCard
card = ModelCard.load(sys.argv[1])
print(json.dumps({"data": card.data.to_dict(), "text": card.text,
                  "accuracy": card.data.eval_results[0].metric_value if card.data.eval_results else None}))
"""


def _no_token_but_in_authorization(server, *texts: str) -> None:
    """The token is in no body, no file received, no text given; in headers only as ``Authorization``."""
    assert not [b for b in server.received_bodies() if TOKEN.encode() in b]
    assert not [t for t in texts if TOKEN in t]
    with_token = [(r["path"], k) for r in server.requests for k, v in r["headers"].items() if TOKEN in v]
    assert with_token and {k.lower() for _, k in with_token} == {"authorization"}


@pytest.mark.slow
def test_merge_pushes_one_commit_that_loads_by_repo_id(hub_server, checkpoints, tmp_path):
    a, b = checkpoints("resnet", 2, seed0=80)
    hub_server.serve("org/a", a)
    hub_server.serve("org/b", b)
    env = {**hub_server.env(tmp_path / "hf"), "HF_TOKEN": ""}  # the token comes from --token only
    out = tmp_path / "merged"
    proc = run_cli("merge", "--target", "digits-eras", "--sources", "org/a", "org/b", "--output", str(out),
                   "--initial-epochs", "0", "--finetune-epochs", "1", "--lr", "1e-3", "--no-eval-sources",
                   "--push-to-hub", "org/merged", "--token", TOKEN, "--commit-message", "Merge org/a and org/b",
                   env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{hub_server.endpoint}/org/merged/commit/" in proc.stdout

    # ONE commit, holding every file of the output folder, byte for byte
    commits = hub_server.commits()
    assert len(commits) == 1 and commits[0]["repo"] == "org/merged" and commits[0]["revision"] == "main"
    assert commits[0]["header"]["summary"] == "Merge org/a and org/b"
    local = {f.name: f.read_bytes() for f in out.iterdir()}
    assert PUSHED <= set(commits[0]["files"]) and commits[0]["files"] == local
    assert hub_server.created["org/merged"].get("visibility") != "private"

    # the token: only ever in Authorization headers
    _no_token_but_in_authorization(hub_server, proc.stdout, proc.stderr)
    assert not [name for name, data in local.items() if TOKEN.encode() in data]

    # read back by repo id, in fresh interpreters with a fresh cache: same logits, the card as written
    fresh = {**hub_server.env(tmp_path / "hf-fresh"), "HF_TOKEN": ""}
    code = LOGITS.format(**PLAIN["transformers"])
    pulled = last_json(run_python(code, "org/merged", env=fresh))
    here = last_json(run_python(code, out, env=fresh))
    assert torch.allclose(torch.tensor(pulled), torch.tensor(here), atol=1e-6)
    card = last_json(run_python(READ_BACK, "org/merged", env=fresh))
    report = json.loads(local["grasp_report.json"])
    assert card["data"]["base_model"] == ["org/a", "org/b"]
    assert card["data"]["base_model_relation"] == "merge"
    assert card["accuracy"] == pytest.approx(report["final"]["test"]["accuracy"])
    assert 'from_pretrained("org/merged")' in card["text"]


TIMM_READ_BACK = """
import json, sys
import numpy as np, timm, torch
from PIL import Image
rng = np.random.default_rng(0)
imgs = [Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for _ in range(4)]
out = {}
for name in sys.argv[1:]:  # hf-hub:ORG/NAME, then local-dir:FOLDER
    m = timm.create_model(name, pretrained=True).eval()
    t = timm.data.create_transform(**timm.data.resolve_model_data_config(m))
    with torch.no_grad():
        out[name] = m(torch.stack([t(i) for i in imgs])).tolist()
print(json.dumps({"logits": out, "hf_grasp": any(k.split(".")[0] == "hf_grasp" for k in sys.modules)}))
"""


@pytest.mark.slow
def test_timm_merge_pushes_one_commit_that_timm_loads_by_hub_id(hub_server, checkpoints, tmp_path):
    """A timm merge, pushed: ``timm.create_model("hf-hub:...")`` in a fresh process without hf_grasp gets the
    local merge's logits; one commit holds every file; the token is in no file and in no header but
    Authorization."""
    a, b = checkpoints("timm:test_resnet", 2, seed0=90)
    hub_server.serve("org/ta", a)
    hub_server.serve("org/tb", b)
    one_thread = {"HF_TOKEN": "", "OMP_NUM_THREADS": "1"}  # no spin-waiting threads on a shared machine
    env = {**hub_server.env(tmp_path / "hf"), **one_thread}
    out = tmp_path / "merged"
    proc = run_cli("merge", "--target", "digits-eras", "--sources", "org/ta", "org/tb", "--output", str(out),
                   "--initial-epochs", "0", "--finetune-epochs", "0", "--no-eval-sources",
                   "--push-to-hub", "org/timm-merged", "--token", TOKEN, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    [commit] = hub_server.commits()
    local = {f.name: f.read_bytes() for f in out.iterdir()}
    assert commit["repo"] == "org/timm-merged" and commit["files"] == local
    assert {"model.safetensors", "config.json", "README.md", "grasp_report.json", "alignment.png"} <= set(local)
    _no_token_but_in_authorization(hub_server, proc.stdout, proc.stderr)
    assert not [name for name, data in local.items() if TOKEN.encode() in data]

    fresh = {**hub_server.env(tmp_path / "hf-fresh"), **one_thread}
    got = last_json(run_python(TIMM_READ_BACK, "hf-hub:org/timm-merged", f"local-dir:{out}", env=fresh))
    assert not got["hf_grasp"]
    pulled, here = (torch.tensor(v) for v in got["logits"].values())
    assert pulled.shape == (4, 10) and torch.equal(pulled, here)
    card = local["README.md"].decode()
    assert 'timm.create_model("hf-hub:org/timm-merged", pretrained=True)' in card
    assert "library_name: timm" in card and "- org/ta\n- org/tb" in card


PUSH_API = """
import json, sys
from transformers import AutoModelForImageClassification
from hf_grasp import GraspMerger
result = GraspMerger.from_pretrained(sys.argv[1:], target="digits-eras", initial_epochs=0, finetune_epochs=0,
                                     eval_sources=False).merge()
urls = [result.push_to_hub("me/merged", private=True, token="SECRET-TOKEN-123"),
        result.push_to_hub("me/merged", create_pr=True, commit_message="again", token="SECRET-TOKEN-123"),
        result.push_to_hub("me/merged", revision="dev", token="SECRET-TOKEN-123")]
reloaded = AutoModelForImageClassification.from_pretrained("me/merged").state_dict()
same = all(reloaded[k].equal(t) for k, t in result.model.state_dict().items())
print(json.dumps({"urls": urls, "same": same}))
"""


@pytest.mark.slow
def test_merge_result_push_to_hub_uploads_the_saved_folder(hub_server, checkpoints, tmp_path):
    """`MergeResult.push_to_hub`: one commit per push of what save_pretrained writes; private, PR and branch."""
    srcs = checkpoints("resnet", 2)
    env = {**hub_server.env(tmp_path / "hf"), "HF_TOKEN": ""}
    proc = run_python(PUSH_API, *srcs, env=env)
    got = last_json(proc)

    assert hub_server.created["me/merged"]["visibility"] == "private"
    main, pr, dev = hub_server.commits()
    assert {"model.safetensors", "config.json", "grasp_report.json", "README.md"} <= set(main["files"])
    card = main["files"]["README.md"].decode()
    assert card.startswith("---") and "hf-grasp" in card and 'from_pretrained("me/merged")' in card
    assert got["same"]  # what the Hub serves is the merged model
    assert got["urls"][0].endswith(f"/me/merged/commit/{hub_server.repos['me/merged']['main'][0]}")
    assert pr["header"]["summary"] == "again" and got["urls"][1].endswith("/me/merged/discussions/1")
    assert hub_server.repos["me/merged"]["refs/pr/1"][0] != hub_server.repos["me/merged"]["main"][0]
    assert dev["revision"] == "dev" and hub_server.repos["me/merged"]["dev"][0] != hub_server.repos["me/merged"]["main"][0]
    _no_token_but_in_authorization(hub_server, proc.stdout, proc.stderr)


def test_failed_push_is_one_error_line_without_the_token(checkpoints, tmp_path):
    """Nothing answers at HF_ENDPOINT: exit 2, one ``error:`` line naming the repo, the merge kept, no token."""
    srcs = checkpoints("resnet", 2)
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": ""}
    out = tmp_path / "merged"
    proc = run_cli("merge", "--target", "digits-eras", "--sources", *map(str, srcs), "--output", str(out),
                   "--initial-epochs", "0", "--finetune-epochs", "0", "--no-eval-sources",
                   "--push-to-hub", "org/merged", "--token", TOKEN, env=env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "org/merged" in errors[0] and "nothing was committed" in errors[0]
    assert TOKEN not in proc.stdout + proc.stderr
    assert (out / "model.safetensors").is_file()  # the merge itself stands


def test_publish_flags_without_push_to_hub_are_refused_before_any_work(checkpoints, tmp_path):
    err = merge_fails(tmp_path, checkpoints("resnet", 1), "--token", TOKEN, "--create-pr")
    assert "--create-pr, --token only apply" in err and "--push-to-hub" in err and TOKEN not in err


MIXIN_ROUND_TRIP = """
import json, sys, torch
from hf_grasp import GraspMerger
from hf_grasp.merger import MergeResult
from hf_grasp.runtime.errors import GraspError
out, *srcs = sys.argv[1:]
result = GraspMerger.from_pretrained(srcs, target="digits-eras", initial_epochs=0, finetune_epochs=0,
                                     eval_sources=False).merge()
# ModelHubMixin's call: save, then push what was saved, in one go
url = result.save_pretrained(out, push_to_hub=True, repo_id="me/merged", token="SECRET-TOKEN-123",
                             commit_message="save and push")
hub = MergeResult.from_pretrained("me/merged", token="SECRET-TOKEN-123")
local = MergeResult.from_pretrained(out)

def same(a, b):
    a, b = a.state_dict(), b.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

refused = {}
for name, call in {
    "plain repo": lambda: MergeResult.from_pretrained("org/plain"),
    "no repo": lambda: MergeResult.from_pretrained("org/nothing"),
    "config": lambda: result.push_to_hub("me/other", config={"lr": 1}),
    "card kwargs": lambda: result.push_to_hub("me/other", model_card_kwargs={"license": "mit"}),
    "push kwargs alone": lambda: result.save_pretrained(out + "-2", token="SECRET-TOKEN-123"),
    "two branches": lambda: result.push_to_hub("me/other", branch="a", revision="b"),
    "model kwargs": lambda: MergeResult.from_pretrained(out, map_location="cpu"),
}.items():
    try:
        call()
    except GraspError as e:
        refused[name] = str(e)
# the mixin's other arguments: a branch, patterns (README.md is sent again, so never deleted)
branch_url = result.push_to_hub("me/merged", branch="dev", ignore_patterns=["*.png"], delete_patterns="README.md",
                                token="SECRET-TOKEN-123")
print(json.dumps({
    "url": url, "branch_url": branch_url, "hub_dir": str(hub.model_dir), "family": hub.family.name,
    "same": [same(hub.model, local.model), same(hub.model, result.model)],
    "reports": [hub.report.to_dict() == local.report.to_dict() == json.load(open(out + "/grasp_report.json"))],
    "configs": [hub.merge_config == local.merge_config == result.merge_config, hub.merge_config.to_dict()],
    "refused": refused}))
"""


@pytest.mark.slow
def test_save_pretrained_push_to_hub_and_from_pretrained_keep_modelhubmixins_contract(hub_server, checkpoints,
                                                                                      tmp_path):
    """ModelHubMixin's calls on a merge: ``save_pretrained(dir, push_to_hub=True, repo_id=...)`` is one commit of
    the saved folder; ``MergeResult.from_pretrained`` of that repo (through the HF cache) and of the folder give the
    same weights, report and configuration; what it cannot be or honour is one GraspError."""
    srcs = checkpoints("resnet", 2)
    hub_server.serve("org/plain", srcs[0])  # a checkpoint, not a merge
    hf_home = tmp_path / "hf"
    env = {**hub_server.env(hf_home), "HF_TOKEN": ""}
    out = tmp_path / "merged"
    proc = run_python(MIXIN_ROUND_TRIP, out, *srcs, env=env)
    got = last_json(proc)

    main, dev = hub_server.commits()
    local = {f.name: f.read_bytes() for f in out.iterdir()}
    assert main["repo"] == "me/merged" and main["revision"] == "main" and main["files"] == local
    assert {"model.safetensors", "config.json", "README.md", "grasp_report.json", "grasp_config.json"} <= set(local)
    assert main["header"]["summary"] == "save and push"
    assert 'from_pretrained("me/merged")' in local["README.md"].decode()
    assert got["url"].endswith(f"/me/merged/commit/{hub_server.repos['me/merged']['main'][0]}")
    assert dev["revision"] == "dev" and set(dev["files"]) == set(local) - {"alignment.png"}
    assert got["branch_url"].endswith(f"/me/merged/commit/{hub_server.repos['me/merged']['dev'][0]}")

    # read back by repo id into the HF cache, and from the folder: the same model, report and configuration
    assert got["hub_dir"].startswith(str(hf_home)) and got["family"] == "transformers"
    assert got["same"] == [True, True] and got["reports"] == [True]
    assert got["configs"][0] and got["configs"][1]["sources"] == [str(s) for s in srcs]
    # a plain checkpoint is refused on its small files: its weights were never asked for
    assert not [p for m, p, _ in hub_server.log if p.startswith("/org/plain/resolve/") and p.endswith(".safetensors")]

    refused = got["refused"]
    assert set(refused) == {"plain repo", "no repo", "config", "card kwargs", "push kwargs alone", "two branches",
                            "model kwargs"}, refused
    assert "holds no grasp_report.json" in refused["plain repo"] and "not a merge" in refused["plain repo"]
    assert "org/nothing" in refused["no repo"]
    assert "grasp_config.json" in refused["config"] and "license" in refused["card kwargs"]
    assert "only apply with push_to_hub=True" in refused["push kwargs alone"]
    assert "map_location" in refused["model kwargs"]
    assert all("\n" not in e for e in refused.values())
    assert not (tmp_path / "merged-2").exists()
    _no_token_but_in_authorization(hub_server, proc.stdout, proc.stderr)


def test_from_pretrained_of_an_ensemble_folder_gives_its_classifier(checkpoints, tmp_path):
    """An ensemble saved by hf-grasp reloads as its EnsembleClassifier (``artifact``), each member its source."""
    from transformers import AutoModelForImageClassification

    from hf_grasp import GraspMerger
    from hf_grasp.merger import MergeResult
    from hf_grasp.methods.ensemble_model import EnsembleClassifier

    srcs = checkpoints("resnet", 2)
    result = GraspMerger.from_pretrained(srcs, target="digits-eras", method="ensemble", eval_sources=False).merge()
    result.save_pretrained(tmp_path / "ens")
    loaded = MergeResult.from_pretrained(tmp_path / "ens")
    assert isinstance(loaded.artifact, EnsembleClassifier) and loaded.model is loaded.artifact
    assert loaded.report.to_dict() == result.report.to_dict() and loaded.merge_config == result.merge_config
    for member, src in zip(loaded.artifact.members, srcs):
        want = AutoModelForImageClassification.from_pretrained(src).state_dict()
        assert all(torch.equal(t, want[k]) for k, t in member.state_dict().items())
