"""Model families and built-in architectures, on real (small, random-init) checkpoints.

Each architecture is written by ``archs.new_checkpoint`` the way a Hub repo
holds it, assigned a family from its config.json, built empty, filled from the
safetensors file, run on transformed PIL images, saved, and reloaded in a fresh
Python process with plain transformers / timm (no hf_grasp) to compare logits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from hf_grasp.apps.bench import archs
from hf_grasp.runtime.errors import GraspError, SourceError
from hf_grasp.inputs.families import FAMILIES, TimmFamily, TransformersFamily, family_for, read_config, register_family
from hf_grasp.inputs.families.base import ModelFamily

NUM_LABELS = 3
ID2LABEL = {0: "cat", 1: "dog", 2: "owl"}
IMAGE_SIZE = 32

# arch -> expected family. timm:test_vit has a fixed input size (img_size lands in model_args).
CASES = {
    "resnet": "transformers",
    "mobilevit": "transformers",
    "efficientnet": "transformers",
    "timm:resnet10t": "timm",
    "timm:test_vit": "timm",
}
PICKLE_SUFFIXES = (".bin", ".pth", ".pkl", ".pt", ".ckpt")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for arch in CASES:
        d = root / arch.replace(":", "_")
        archs.new_checkpoint(arch, d, num_labels=NUM_LABELS, id2label=ID2LABEL, image_size=IMAGE_SIZE, seed=0)
        out[arch] = d
    return out


def _images(n: int = 4, size: int = 28) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB") for _ in range(n)]


def _file_tensors(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    with safe_open(path, framework="pt") as h:
        return {k: (tuple(h.get_slice(k).get_shape()), h.get_slice(k).get_dtype()) for k in h.keys()}


_ST_DTYPE = {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16", torch.bfloat16: "BF16"}


def _no_pickles(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.suffix in PICKLE_SUFFIXES]


@pytest.mark.parametrize("arch", list(CASES))
def test_checkpoint_layout_and_family(checkpoints, arch):
    d = checkpoints[arch]
    files = sorted(p.name for p in d.iterdir())
    expected = ["config.json", "model.safetensors"] + (["preprocessor_config.json"] if CASES[arch] == "transformers" else [])
    assert files == sorted(expected)
    family = family_for(read_config(d), source=arch)
    assert family.name == CASES[arch]
    assert family.num_labels(d) == NUM_LABELS


@pytest.mark.parametrize("arch", list(CASES))
def test_build_state_dict_matches_safetensors_exactly(checkpoints, arch, tmp_path):
    d = checkpoints[arch]
    # Only the config (and processor) files: build() must not need the weights.
    cfg_only = tmp_path / "cfg_only"
    cfg_only.mkdir()
    for p in d.iterdir():
        if p.suffix == ".json":
            shutil.copy(p, cfg_only / p.name)
    family = family_for(read_config(cfg_only), source=arch)
    model = family.build(cfg_only)
    state = model.state_dict()
    in_model = {k: (tuple(v.shape), _ST_DTYPE[v.dtype]) for k, v in state.items()}
    in_file = _file_tensors(d / "model.safetensors")
    assert sorted(set(in_model) - set(in_file)) == []
    assert sorted(set(in_file) - set(in_model)) == []
    assert {k: v for k, v in in_model.items() if in_file[k] != v} == {}
    # buffers are part of it (BatchNorm running stats), and everything is fp32 but the counters
    buffers = {k for k, _ in model.named_buffers()}
    assert buffers <= set(in_file)
    assert all(v.dtype == torch.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    # random init: build() does not reproduce the file's weights
    sd = load_file(d / "model.safetensors")
    assert any(not torch.equal(sd[k], state[k]) for k, _ in model.named_parameters())


def _reload_logits_in_fresh_python(family: str, model_dirs: list[Path], pixel_values: torch.Tensor,
                                   tmp: Path) -> list[torch.Tensor]:
    """Load each of ``model_dirs`` with plain transformers / timm in one new interpreter; their logits."""
    inp, outp = tmp / "pixels.safetensors", tmp / "logits.safetensors"
    save_file({"pixel_values": pixel_values.contiguous()}, inp)
    if family == "transformers":
        load = ("from transformers import AutoModelForImageClassification\n"
                "def logits_of(d):\n"
                "    return AutoModelForImageClassification.from_pretrained(d, dtype=torch.float32)(pixel_values=x).logits")
    else:
        load = ("import timm\n"
                "def logits_of(d):\n"
                "    return timm.create_model('local-dir:' + d, pretrained=True).eval()(x)")
    script = "\n".join([
        "import sys, torch",
        "from safetensors.torch import load_file, save_file",
        f"x = load_file({str(inp)!r})['pixel_values']",
        "torch.set_grad_enabled(False)",
        load,
        f"out = {{str(i): logits_of(d).contiguous() for i, d in enumerate({[str(d) for d in model_dirs]!r})}}",
        "assert not any(m == 'hf_grasp' or m.startswith('hf_grasp.') for m in sys.modules), 'hf_grasp imported'",
        f"save_file(out, {str(outp)!r})",
    ])
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    # -I: isolated mode, so neither the cwd nor PYTHONPATH can make hf_grasp importable
    proc = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = load_file(outp)
    return [out[str(i)] for i in range(len(model_dirs))]


@pytest.mark.parametrize("arch", list(CASES))
def test_load_transform_logits_save_and_reload_with_plain_library(checkpoints, arch, tmp_path):
    d = checkpoints[arch]
    family = family_for(read_config(d), source=arch)
    model = family.build(d)
    model.load_state_dict(load_file(d / "model.safetensors"), strict=True)
    model.eval()

    pixel_values = family.image_transform(d, train=False)(_images())
    assert pixel_values.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert pixel_values.dtype == torch.float32
    with torch.no_grad():
        logits = family.logits(model, {"pixel_values": pixel_values})
    assert logits.shape == (4, NUM_LABELS)
    assert torch.isfinite(logits).all()

    out = tmp_path / "saved"
    family.save(model, out, like=d)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert _no_pickles(tmp_path) == [] and _no_pickles(d) == []
    # the saved checkpoint keeps the source's identity: family, labels, preprocessing
    saved_cfg, src_cfg = read_config(out), read_config(d)
    assert family_for(saved_cfg).name == family.name
    if family.name == "transformers":
        assert saved_cfg["id2label"] == src_cfg["id2label"]
        src_proc = json.loads((d / "preprocessor_config.json").read_text())
        saved_proc = json.loads((out / "preprocessor_config.json").read_text())
        assert saved_proc == src_proc
    else:
        for key in ("architecture", "num_classes", "label_names", "model_args", "pretrained_cfg"):
            assert saved_cfg[key] == src_cfg[key], key
    assert _file_tensors(out / "model.safetensors") == _file_tensors(d / "model.safetensors")

    # The saved copy and the source checkpoint itself (new_checkpoint wrote a Hub-style
    # repo) both load with the plain library and reproduce the logits.
    reloaded, original = _reload_logits_in_fresh_python(family.name, [out, d], pixel_values, tmp_path)
    assert torch.allclose(reloaded, logits, atol=1e-5), (reloaded - logits).abs().max()
    assert torch.allclose(original, logits, atol=1e-5), (original - logits).abs().max()
    assert _no_pickles(tmp_path) == []


@pytest.mark.parametrize("arch", ["resnet", "timm:resnet10t"])
def test_train_transform(checkpoints, arch):
    d = checkpoints[arch]
    family = family_for(read_config(d))
    imgs = _images(n=8)
    train = family.image_transform(d, train=True)(imgs)
    evals = family.image_transform(d, train=False)(imgs)
    assert train.shape == evals.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE)
    if family.name == "transformers":
        # documented: transformers processors add no augmentation
        assert torch.equal(train, evals)
    else:
        # timm's training transform augments (random resized crop, flip)
        assert not torch.equal(train, evals)


def test_grayscale_images_are_converted_to_the_model_channels(checkpoints):
    for arch in ("resnet", "timm:resnet10t"):
        d = checkpoints[arch]
        family = family_for(read_config(d))
        gray = [im.convert("L") for im in _images(n=2)]
        assert family.image_transform(d)(gray).shape == (2, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        archs.new_checkpoint("resnet", tmp_path / name, num_labels=2, seed=seed)
    a, b, c = (load_file(tmp_path / n / "model.safetensors") for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # transformers leaves default labels (LABEL_0, LABEL_1 for 2 classes) out of config.json
    assert TransformersFamily().num_labels(tmp_path / "a") == 2


def test_parameter_budgets(checkpoints, tmp_path):
    counts = {}
    for arch in ("resnet", "mobilevit", "efficientnet"):
        model = family_for(read_config(checkpoints[arch])).build(checkpoints[arch])
        counts[arch] = sum(p.numel() for p in model.parameters())
    # small enough for seconds per epoch on a CPU (EfficientNet at width 0.5: 0.66M, so its 32-px features survive)
    assert all(50_000 < n < 800_000 for n in counts.values()), counts
    archs.resnet18_like(tmp_path / "r18", num_labels=10)
    r18 = family_for(read_config(tmp_path / "r18")).build(tmp_path / "r18")
    assert 10_500_000 < sum(p.numel() for p in r18.parameters()) < 11_500_000


def test_unknown_arch_names_it_and_lists_choices(tmp_path):
    with pytest.raises(GraspError, match=r"'vgg'.*resnet, mobilevit, efficientnet"):
        archs.new_checkpoint("vgg", tmp_path / "x", num_labels=2)
    with pytest.raises(GraspError, match=r"'no_such_model_xyz'"):
        archs.new_checkpoint("timm:no_such_model_xyz", tmp_path / "y", num_labels=2)


def test_unknown_config_error_names_the_source():
    with pytest.raises(SourceError, match=r"^org/thing@v1: config\.json is neither a transformers nor a timm"):
        family_for({"hidden_size": 8}, source="org/thing@v1")
    # transformers' "architectures" (plural) list is not timm's "architecture"
    assert family_for({"model_type": "resnet", "architectures": ["ResNetForImageClassification"]}).name == "transformers"
    # a timm export that transformers also reads (TimmWrapper) stays with timm, which is checked first
    assert family_for({"model_type": "timm_wrapper", "architecture": "resnet18", "num_classes": 2,
                       "pretrained_cfg": {}}).name == "timm"
    assert FAMILIES.index(TimmFamily) < FAMILIES.index(TransformersFamily)


def test_read_config_errors_name_the_file(tmp_path):
    with pytest.raises(SourceError, match=str(tmp_path / "config.json")):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SourceError, match=r"config\.json: not valid JSON"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(SourceError, match="expected a JSON object"):
        read_config(tmp_path)


def test_a_new_family_plugs_in_by_registering_one_class():
    class AudioFamily(ModelFamily):
        name = "audio"

        @classmethod
        def matches(cls, config):
            return config.get("task") == "audio-classification"

        build = num_labels = image_transform = logits = save = None  # not needed to be chosen

    AudioFamily.__abstractmethods__ = frozenset()
    register_family(AudioFamily)
    try:
        assert family_for({"task": "audio-classification"}).name == "audio"
        with pytest.raises(SourceError, match="neither a audio nor a transformers nor a timm"):
            family_for({}, source="x")
    finally:
        FAMILIES.remove(AudioFamily)
