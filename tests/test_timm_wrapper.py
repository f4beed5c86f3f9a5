"""timm checkpoints hf-grasp writes load with timm and with transformers' TimmWrapper alike (issue 22).

One ``config.json`` serves both loaders: timm's ``create_model("local-dir:..."
/ "hf-hub:...", pretrained=True)`` and transformers'
``AutoModelForImageClassification`` (a config with ``pretrained_cfg`` is a
``timm_wrapper`` model to it). TimmWrapper builds with
``create_model(architecture, num_classes=<num_labels>, **model_args)``, so a
``model_args.num_classes`` (which timm's own ``save_for_hf`` records) made it a
TypeError; hf-grasp writes it without (``TimmFamily.save``).

* a merge of two timm sources and a ``make-sources`` timm source load, in a
  fresh interpreter without hf_grasp, through timm (local dir and HF cache) and
  TimmWrapper (folder and repo id), with the in-memory logits;
* the timm families ResNet, ConvNeXt, EfficientNet, ViT and Swin, made tiny by
  ``create_model`` kwargs, each merge (2 sources) and load both ways.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from hf_grasp import GraspMerger
from hf_grasp.apps.bench import archs
from hf_grasp.apps.bench.hub_cache import publish_to_cache
from hf_grasp.apps.bench.make_sources import make_sources
from hf_grasp.inputs.families import TimmFamily, family_for, read_config
from hf_grasp.inputs.sources import resolve, stream_into

NO_TRAIN = {"initial_epochs": 0, "finetune_epochs": 0, "eval_sources": False}
DIGITS = [str(i) for i in range(10)]  # digits-eras' label names, which the sources carry

# The loaders, run for each checkpoint in a new interpreter where hf_grasp cannot be imported. Writes
# logits.safetensors ("<name>/<loader>": logits of the same pixel tensor; "<name>/processor": what
# AutoImageProcessor makes of the same images) and info.json (labels each loader reports).
_LOADERS = r"""
import json, sys
import torch, timm
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

tmp, entries, resave = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
inputs = load_file(tmp + "/inputs.safetensors")
x = inputs["pixel_values"]
images = [Image.fromarray(a.numpy()) for a in inputs["images"]]
torch.set_grad_enabled(False)
out, info = {}, {}
for name, (folder, repo_id) in entries.items():
    loaded = {
        "timm_dir": timm.create_model("local-dir:" + folder, pretrained=True),
        "timm_hub": timm.create_model("hf-hub:" + repo_id, pretrained=True),
        "tw_dir": AutoModelForImageClassification.from_pretrained(folder, dtype=torch.float32),
        "tw_hub": AutoModelForImageClassification.from_pretrained(repo_id, dtype=torch.float32),
    }
    for how, model in loaded.items():
        model.eval()
        out[f"{name}/{how}"] = (model(x) if how.startswith("timm") else model(pixel_values=x).logits).contiguous()
    out[f"{name}/processor"] = AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")[
        "pixel_values"].contiguous()
    tw = loaded["tw_dir"]
    info[name] = {"class": type(tw).__name__, "id2label": {str(k): v for k, v in tw.config.id2label.items()},
                  "timm_label_names": list(loaded["timm_dir"].pretrained_cfg.get("label_names") or [])}
    if name in resave:  # a transformers user saving the model again
        tw.save_pretrained(resave[name])
assert not any(m == "hf_grasp" or m.startswith("hf_grasp.") for m in sys.modules), "hf_grasp imported"
save_file(out, tmp + "/logits.safetensors")
(open(tmp + "/info.json", "w")).write(json.dumps(info))
"""


def _images(n: int = 4, size: int = 28) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB") for _ in range(n)]


def _hf_grasp_logits(folder: Path, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``folder`` as hf-grasp reads a source: family from config.json, built empty, streamed."""
    family = family_for(read_config(folder), source=str(folder))
    model = family.build(folder)
    stream_into(model, resolve(folder))
    with torch.no_grad():
        return family.logits(model.eval(), {"pixel_values": x})


def _load_without_hf_grasp(entries: dict[str, Path], images: list[Image.Image], x: torch.Tensor, tmp: Path,
                           resave: dict[str, Path]) -> tuple[dict[str, torch.Tensor], dict]:
    """Run :data:`_LOADERS` over ``entries`` (published into a fresh HF cache as ``org/<name>``), offline."""
    cache = tmp / "hf" / "hub"
    for name, folder in entries.items():
        publish_to_cache(folder, f"org/{name}", cache_dir=cache)
    arrays = torch.from_numpy(np.stack([np.asarray(im) for im in images]))
    save_file({"pixel_values": x.contiguous(), "images": arrays}, tmp / "inputs.safetensors")
    args = {name: (str(folder), f"org/{name}") for name, folder in entries.items()}
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp / "hf"), HF_HUB_CACHE=str(cache), PYTHONPATH="")
    # -I: isolated mode, so neither the cwd nor PYTHONPATH can make hf_grasp importable
    proc = subprocess.run([sys.executable, "-I", "-c", _LOADERS, str(tmp), json.dumps(args),
                           json.dumps({k: str(v) for k, v in resave.items()})],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(tmp / "logits.safetensors"), json.loads((tmp / "info.json").read_text())


def _assert_config_serves_both(folder: Path, labels: list[str]) -> None:
    """hf-grasp still calls the folder timm; no duplicate num_classes; label names stated once, at the top."""
    config = read_config(folder)
    assert family_for(config).name == "timm"
    assert "num_classes" not in config["model_args"]
    assert config["num_classes"] == len(labels) == TimmFamily().num_labels(folder)
    assert config["label_names"] == labels


@pytest.mark.slow
def test_a_timm_merge_and_a_make_sources_source_load_with_timm_and_transformers_alone(checkpoints, tmp_path):
    # a merge of two timm sources (BatchNorm buffers included) on the digits-eras target
    srcs = checkpoints("timm:resnet10t", 2)
    result = GraspMerger.from_pretrained([str(s) for s in srcs], target="digits-eras", **NO_TRAIN).merge()
    merged = tmp_path / "merged"
    result.save_pretrained(merged)
    # a make-sources timm source (a fixed-size ViT: img_size lands in model_args); 0 epochs, saving is under test
    made = make_sources(tmp_path / "made", arch="timm:test_vit", pretrain_epochs=0, source_epochs=0)["d0"]

    images = _images()
    x = result.family.image_transform(merged)(images)
    with torch.no_grad():
        in_memory = {"merged": result.family.logits(result.model.eval(), {"pixel_values": x}), "made": _hf_grasp_logits(made, x)}
    for folder in (merged, made):
        _assert_config_serves_both(folder, DIGITS)

    resaved = tmp_path / "merged-by-transformers"
    logits, info = _load_without_hf_grasp({"merged": merged, "made": made}, images, x, tmp_path / "load",
                                          resave={"merged": resaved})
    for name, expected in in_memory.items():
        for how in ("timm_dir", "timm_hub", "tw_dir", "tw_hub"):
            torch.testing.assert_close(logits[f"{name}/{how}"], expected, rtol=1e-5, atol=1e-5,
                                       msg=lambda m, name=name, how=how: f"{name} via {how}: {m}")
        # transformers' pipeline preprocessing (TimmWrapperImageProcessor) is timm's, as hf-grasp applies it
        torch.testing.assert_close(logits[f"{name}/processor"], x if name == "merged" else
                                   TimmFamily().image_transform(made)(images))
        assert info[name]["class"] == "TimmWrapperForImageClassification"
        assert info[name]["id2label"] == {str(i): n for i, n in enumerate(DIGITS)}
        assert info[name]["timm_label_names"] == DIGITS

    # What transformers saves again stays a timm source to hf-grasp (plain timm tensor names, same model)
    assert read_config(resaved)["model_type"] == "timm_wrapper"
    assert family_for(read_config(resaved)).name == "timm"
    torch.testing.assert_close(_hf_grasp_logits(resaved, x), in_memory["merged"], rtol=1e-5, atol=1e-5)


# Every-architecture sweep, timm half: family -> (timm model, create_model kwargs making it tiny at 32x32).
# The kwargs land in model_args, which timm and TimmWrapper both pass back to create_model.
TINY_TIMM = {
    "ResNet": ("resnet10t", {}),
    "ConvNeXt": ("convnext_atto", {"depths": [1, 1, 1, 1], "dims": [16, 32, 64, 128]}),
    "EfficientNet": ("efficientnet_b0", {}),
    "ViT": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 2}),
    "Swin": ("swin_tiny_patch4_window7_224",
             {"img_size": 32, "window_size": 2, "embed_dim": 24, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", list(TINY_TIMM))
def test_every_timm_family_merges_and_loads_with_timm_and_transformers(family, tmp_path):
    """Sources saved the way hf-grasp saves them stream in as timm loads them; a 2-source merge loads both ways.

    Loads run in this process (the isolated-interpreter check is the test above, on the same saving code).
    """
    import timm
    from transformers import AutoModelForImageClassification

    name, kwargs = TINY_TIMM[family]
    srcs = []
    for seed in (0, 1):
        d = tmp_path / f"src{seed}"
        archs.new_checkpoint(f"timm:{name}", d, num_labels=10, id2label=dict(enumerate(DIGITS)), image_size=32,
                             seed=seed, timm_kwargs=kwargs)
        srcs.append(d)
    x = TimmFamily().image_transform(srcs[0])(_images())
    # a source streams into hf-grasp's model as timm itself loads it
    with torch.no_grad():
        plain = timm.create_model(f"local-dir:{srcs[0]}", pretrained=True).eval()(x)
    torch.testing.assert_close(_hf_grasp_logits(srcs[0], x), plain, rtol=0, atol=0)

    result = GraspMerger.from_pretrained([str(s) for s in srcs], target="digits-eras", tau=0.0, **NO_TRAIN).merge()
    assert result.family.name == "timm"
    merged = tmp_path / "merged"
    result.save_pretrained(merged)
    _assert_config_serves_both(merged, DIGITS)
    with torch.no_grad():
        expected = result.family.logits(result.model.eval(), {"pixel_values": x})
        by_timm = timm.create_model(f"local-dir:{merged}", pretrained=True).eval()(x)
        wrapper = AutoModelForImageClassification.from_pretrained(merged, dtype=torch.float32).eval()
        by_transformers = wrapper(pixel_values=x).logits
    assert type(wrapper).__name__ == "TimmWrapperForImageClassification"
    assert wrapper.config.id2label == dict(enumerate(DIGITS))
    torch.testing.assert_close(by_timm, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_transformers, expected, rtol=1e-5, atol=1e-5)


def test_a_legacy_flat_timm_config_saves_with_its_labels_where_transformers_reads_them(tmp_path):
    """Older timm exports keep everything at the top level and call the names "labels"; timm moves them into
    pretrained_cfg. The saved copy also names them at the top, where TimmWrapper makes id2label from."""
    import timm
    from transformers import AutoConfig

    model = timm.create_model("resnet10t", pretrained=False, num_classes=3).eval()
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file(model.state_dict(), legacy / "model.safetensors")
    (legacy / "config.json").write_text(json.dumps({
        "architecture": "resnet10t", "num_classes": 3, "num_features": 512, "labels": ["cat", "dog", "owl"],
        "input_size": [3, 32, 32], "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3,
        "crop_pct": 1.0, "first_conv": "conv1.0", "classifier": "fc"}))
    out = tmp_path / "saved"
    TimmFamily().save(model, out, like=legacy)
    config = read_config(out)
    assert config["label_names"] == config["pretrained_cfg"]["label_names"] == ["cat", "dog", "owl"]
    assert "num_classes" not in config["model_args"]
    assert AutoConfig.from_pretrained(out).id2label == {0: "cat", 1: "dog", 2: "owl"}
    assert timm.create_model(f"local-dir:{out}", pretrained=True).pretrained_cfg["label_names"] == ["cat", "dog", "owl"]
