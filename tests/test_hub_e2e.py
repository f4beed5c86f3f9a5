"""End to end by repo id, offline, against an HF cache this test populates.

Sources are published into a fresh HF_HOME, `hf-grasp merge` resolves them by
repo id (one pinned with @revision) under HF_HUB_OFFLINE=1, and a fresh
interpreter without hf_grasp loads the output with plain transformers / timm and
reproduces the merged model's logits. Publishing (``--push-to-hub``,
``MergeResult.push_to_hub``) is tested against a local hub server in
tests/test_publish.py.
"""

from __future__ import annotations

import json

import pytest

import hashlib

import torch

from conftest import last_json, run_cli, run_python

LOGITS = """
import json, sys, numpy as np, torch
from PIL import Image
{load}
rng = np.random.default_rng(0)
imgs = [Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for _ in range(4)]
with torch.no_grad():
    out = {forward}
print(json.dumps(out.tolist()))
"""

PLAIN = {
    "transformers": dict(
        load="from transformers import AutoImageProcessor, AutoModelForImageClassification\n"
             "m = AutoModelForImageClassification.from_pretrained(sys.argv[1], dtype=torch.float32).eval()\n"
             "p = AutoImageProcessor.from_pretrained(sys.argv[1])",
        forward="m(pixel_values=p(imgs, return_tensors='pt')['pixel_values']).logits"),
    "timm": dict(
        load="import timm\n"
             "m = timm.create_model('local-dir:' + sys.argv[1], pretrained=True).eval()\n"
             "cfg = timm.data.resolve_model_data_config(m); t = timm.data.create_transform(**cfg)",
        forward="m(torch.stack([t(i) for i in imgs]))"),
}

IN_MEMORY = """
import json, sys, numpy as np, torch
from PIL import Image
from hf_grasp import GraspMerger
result = GraspMerger.from_pretrained(sys.argv[2:], target="digits-eras", initial_epochs=0, finetune_epochs=1,
                                     lr=1e-3, eval_sources=False, tau=0.0).merge()
result.save_pretrained(sys.argv[1])
fam, model = result.family, result.model.eval()
tf = fam.image_transform(result.model_dir)
rng = np.random.default_rng(0)
imgs = [Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)) for _ in range(4)]
with torch.no_grad():
    print(json.dumps(fam.logits(model, {"pixel_values": tf(imgs)}).tolist()))
"""


def _publish(env, dirs, org, tags=()):
    code = ("import sys, json\nfrom hf_grasp.apps.bench.hub_cache import publish_to_cache\n"
            f"print(json.dumps([publish_to_cache(d, f'{org}/m{{i}}', tags={tuple(tags)!r}) "
            "for i, d in enumerate(sys.argv[1:])]))")
    return last_json(run_python(code, *dirs, env=env))


@pytest.mark.parametrize("arch,family", [("resnet", "transformers"), ("timm:resnet10t", "timm")])
def test_merge_by_repo_id_offline_and_reload_plainly(tmp_path, checkpoints, arch, family):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    dirs = checkpoints(arch, 3)
    commits = _publish(env, dirs, "demo", tags=("v1",))
    refs = ["demo/m0", f"demo/m1@{commits[1]}", "hf-hub:demo/m2@v1"]

    # the CLI, by repo id
    out = tmp_path / "merged-cli"
    proc = run_cli("merge", "--target", "digits-eras", "--sources", *refs, "--output", str(out),
                   "--initial-epochs", "0", "--finetune-epochs", "0", "--no-eval-sources", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "grasp_report.json").read_text())
    assert [s["commit"] for s in report["sources"]] == commits
    assert report["sources"][1]["revision"] == commits[1]
    for s, d in zip(report["sources"], dirs):
        assert s["files"] == {"model.safetensors": hashlib.sha256((d / "model.safetensors").read_bytes()).hexdigest()}
    assert (out / "README.md").read_text().count("demo/m0") >= 1
    assert (out / "alignment.png").stat().st_size > 1000
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pth"))

    # in memory vs reloaded without hf_grasp, in a fresh interpreter
    merged = tmp_path / "merged-api"
    mem = last_json(run_python(IN_MEMORY, merged, *refs, env=env))
    got = last_json(run_python(LOGITS.format(**PLAIN[family]) + "\nassert 'hf_grasp' not in sys.modules", merged,
                               env=env))
    assert torch.allclose(torch.tensor(got), torch.tensor(mem), atol=1e-5)

