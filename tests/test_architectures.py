"""Every model type ``AutoModelForImageClassification`` maps, on tiny random checkpoints saved by transformers.

For each one (timm_wrapper aside: the timm tests cover timm checkpoints) two
random classifiers of a tiny configuration are saved with ``save_pretrained``
as two sources. A source streamed into the probe (hf-grasp's own
``family.build`` + ``stream_into``) must equal what ``from_pretrained`` loads,
legacy tensor names and split tensors included; a 2-source GRASP merge of the
two must run, and its saved output must load with plain transformers and give
the logits of the merged model in memory. An architecture hf-grasp cannot merge
must be one error line naming it and why, before any weights are read.

:data:`STATUS` is the outcome table, each entry checked by
:func:`test_architecture`; README.md's list of verified architectures is made
from it (``HF_GRASP_UPDATE_DOCS=1 python -m pytest tests/test_architectures.py``
rewrites it).
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import OFFLINE, merge_fails
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as MAPPED

from hf_grasp import GraspMerger
from hf_grasp.runtime.errors import UnsupportedArchitectureError
from hf_grasp.inputs.families import family_for, read_config
from hf_grasp.inputs.sources import read_header, resolve, stream_into

LABELS = ["cat", "dog", "owl"]
SIZE = 32  # input images, unless a type's override says otherwise

# --------------------------------------------------------------------------- the outcome table

MERGED = "merged"
#: model type -> (why hf-grasp refuses it, as README.md says it; a pattern its one error line must match)
REFUSED = {
    "imagegpt": ("takes colour-cluster token ids, not pixel_values", r"input_ids"),
    "shieldgemma2": ("takes a text prompt with the image", r"input_ids"),
    "siglip2": ("its processor adds pixel_attention_mask, spatial_shapes", r"pixel_attention_mask"),
}
#: model type -> (why it cannot be built on this machine, a pattern hf-grasp's one error line must match)
NOT_BUILDABLE = {
    "dinat": ("needs the natten library", r"natten"),
}
#: checked by the timm tests (a transformers TimmWrapper config is a timm checkpoint to hf-grasp)
ELSEWHERE = {"timm_wrapper"}
#: every model type the auto class maps, but ELSEWHERE -> MERGED, or its REFUSED / NOT_BUILDABLE reason
STATUS = {t: REFUSED[t][0] if t in REFUSED else NOT_BUILDABLE[t][0] if t in NOT_BUILDABLE else MERGED
          for t in MAPPED if t not in ELSEWHERE}

# --------------------------------------------------------------------------- tiny configurations

#: size fields shrunk the same way in every configuration (and its sub-configurations) that has them
SCALARS = {"hidden_size": 32, "n_embd": 32, "intermediate_size": 64, "num_hidden_layers": 2, "n_layer": 2,
           "num_attention_heads": 2, "n_head": 2, "image_size": SIZE, "embed_dim": 16, "embedding_size": 16,
           "projection_dim": 16, "decoder_hidden_size": 32, "pooler_output_size": 32,
           "depth_multiplier": 0.25, "width_multiplier": 0.25}
#: only where the generic shrinking leaves a configuration that does not build or run at SIZE
OVERRIDES = {
    "bit": {"num_groups": 8},                   # group norm over the shrunk widths
    "cvt": {"depth": [1, 2, 3]},                # stage i indexes its drop-path rates with i
    "donut-swin": {"window_size": 2, "patch_size": 2},  # windows that fit the last stage at 32x32
    "swin": {"window_size": 2, "patch_size": 2},
    "efficientnet": {"width_coefficient": 0.25, "depth_coefficient": 0.34, "hidden_dim": 320},
    "hgnet_v2": {"stem_channels": [3, 16, 16], "stage_in_channels": [16, 32, 64, 128],
                 "stage_mid_channels": [16, 16, 32, 32], "stage_out_channels": [32, 64, 128, 256],
                 "stage_num_blocks": [1, 1, 1, 1], "stage_numb_of_layers": [2, 2, 2, 2]},
    "mobilevitv2": {"image_size": 64},          # downsamples by 32, then 2x2 patches
    "pp_lcnet": {"class_expand": 64},
    "perceiver": {"d_model": 512, "d_latents": 32, "num_latents": 8, "num_self_attends_per_block": 1,
                  "num_self_attention_heads": 2, "num_cross_attention_heads": 1},  # d_model: 256 + 256 fixed
    "textnet": {"stem_out_channels": 8},
}


def shrunk(defaults: dict) -> dict:
    """Smaller values for the common size fields of a configuration's ``to_dict()`` (sub-configurations too)."""
    out = {}
    for key, value in defaults.items():
        if key in SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = SCALARS[key]
        elif key == "image_size" and isinstance(value, list):
            out[key] = [SIZE, SIZE]
        elif key in ("depths", "depth") and isinstance(value, list):
            out[key] = [1] * len(value)
        elif key in ("hidden_sizes", "neck_hidden_sizes", "embed_dims", "embed_dim") and isinstance(value, list):
            out[key] = [max(8, v // 8) for v in value]
        elif key == "num_heads" and isinstance(value, list):
            out[key] = [1] * len(value)
        elif key.endswith("_config") and isinstance(value, dict):
            out[key] = {**value, **shrunk(value)}
    return out


def tiny_config(model_type: str, *, small: bool = True, **extra):
    """A configuration of ``model_type`` built offline, shrunk unless ``small`` is False, with the target's labels.

    ``architectures`` is set as ``save_pretrained`` sets it: for a type that maps to several classes
    (deit, levit, perceiver) the auto class needs it to pick one.
    """
    classes = MAPPED[model_type]
    kwargs = {**shrunk(AutoConfig.for_model(model_type).to_dict()), **OVERRIDES.get(model_type, {})} if small else {}
    return AutoConfig.for_model(model_type, architectures=[classes if isinstance(classes, str) else classes[0]],
                                num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
                                label2id={n: i for i, n in enumerate(LABELS)},
                                **{**kwargs, **extra})


def image_processor(model_type: str, size: int):
    """The model type's own image processor class (ViT's for the types that name none), sized ``size`` square."""
    import transformers
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type) or {"torchvision": "ViTImageProcessor"}
    cls = getattr(transformers, names.get("torchvision") or names.get("pil"))
    defaults = cls().to_dict()
    square = {"shortest_edge": size, "height": size, "width": size, "longest_edge": size}
    return cls(**{k: {e: square[e] for e in defaults[k] if e in square}
                  for k in ("size", "crop_size") if isinstance(defaults.get(k), dict)})


def checkpoint(model_type: str, out: Path, *, seed: int, **extra) -> Path:
    """A random tiny classifier of ``model_type`` as ``save_pretrained`` writes it, with its image processor."""
    config = tiny_config(model_type, **extra)
    torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    size = config.image_size if isinstance(getattr(config, "image_size", None), int) else SIZE
    image_processor(model_type, size).save_pretrained(out)
    return out


def config_only(model_type: str, out: Path) -> Path:
    """A checkpoint folder of ``model_type`` whose weight file holds no tensor: what is refused before any
    weights are read needs none (and a tensor read would fail as missing, not as this architecture)."""
    out.mkdir(parents=True)
    tiny_config(model_type, small=False).save_pretrained(out)
    image_processor(model_type, SIZE).save_pretrained(out)
    save_file({}, out / "model.safetensors")
    return out


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Path:
    """A tiny 3-class target (``save_to_disk``): 6 train, 3 validation, 3 test images."""
    return tiny_target(tmp_path_factory.mktemp("target") / "tiny")


def tiny_target(root: Path) -> Path:
    """:func:`target`'s dataset, written to ``root``."""
    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=LABELS)})

    def split(n: int) -> datasets.Dataset:
        images = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(n)]
        return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(n)]}, features=features)

    datasets.DatasetDict({"train": split(6), "validation": split(3), "test": split(3)}).save_to_disk(str(root))
    return root


#: the fastest merge that still aligns, transfers and evaluates: no training, one batch
TINY = dict(initial_epochs=0, finetune_epochs=0, eval_sources=False, eval_steps=False, batch_size=4, tau=0.0)


def _images(n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]


# --------------------------------------------------------------------------- the tests


def test_the_table_lists_every_mapped_model_type():
    """A model type transformers adds is never silently left out: the table must say what it does."""
    assert set(STATUS) | ELSEWHERE == set(MAPPED)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(STATUS))
def test_architecture(model_type, target, tmp_path):
    if model_type in REFUSED:
        return _refused(model_type, REFUSED[model_type][1], target, tmp_path)
    if model_type in NOT_BUILDABLE:
        return _not_buildable(model_type, NOT_BUILDABLE[model_type][1], target, tmp_path)
    _merged(model_type, target, tmp_path)


def _merged(model_type: str, target: Path, tmp_path: Path) -> None:
    sources = [checkpoint(model_type, tmp_path / f"src{seed}", seed=seed) for seed in (0, 1)]
    family = family_for(read_config(sources[0]), source=str(sources[0]))
    assert family.name == "transformers"

    # a source streamed into the probe, one tensor at a time, is what from_pretrained loads
    probe = family.build(sources[0])
    stream_into(probe, resolve(sources[0]), naming=family.naming(probe))
    loaded = AutoModelForImageClassification.from_pretrained(sources[0], dtype=torch.float32).state_dict()
    streamed = probe.state_dict()
    assert streamed.keys() == loaded.keys()
    assert [k for k in loaded if not torch.equal(streamed[k], loaded[k])] == []

    # a 2-source GRASP merge, saved, loads with plain transformers and predicts what the merged model does
    result = GraspMerger.from_pretrained([str(s) for s in sources], target=str(target), **TINY).merge()
    assert result.report.sources[1].scores
    out = tmp_path / "merged"
    result.save_pretrained(out)
    reloaded = AutoModelForImageClassification.from_pretrained(out, dtype=torch.float32).eval()
    pixels = family.image_transform(out)(_images())
    with torch.no_grad():
        torch.testing.assert_close(family.logits(reloaded, {"pixel_values": pixels}),
                                   family.logits(result.model.eval(), {"pixel_values": pixels}))


def _refused(model_type: str, why: str, target: Path, tmp_path: Path) -> None:
    """One error line naming the architecture and why; the weight files hold nothing, so none were read."""
    sources = [config_only(model_type, tmp_path / f"src{i}") for i in (0, 1)]
    with pytest.raises(UnsupportedArchitectureError) as refused:
        GraspMerger.from_pretrained([str(s) for s in sources], target=str(target), **TINY).merge()
    message = str(refused.value)
    assert "\n" not in message and f"architecture {model_type}" in message and re.search(why, message), message


def _not_buildable(model_type: str, why: str, target: Path, tmp_path: Path) -> None:
    """Refused as :func:`_refused` is, for what this machine lacks; once it has it, the table must move it."""
    try:
        AutoModelForImageClassification.from_config(tiny_config(model_type))
    except ImportError:
        return _refused(model_type, why, target, tmp_path)
    pytest.fail(f"{model_type} builds here now: try it as MERGED in the table")


def test_refusal_is_one_cli_line(target, tmp_path):
    """The CLI's form of a refusal: one ``error:`` line naming the architecture, exit status 2."""
    sources = [config_only("imagegpt", tmp_path / f"src{i}") for i in (0, 1)]
    line = merge_fails(tmp_path, sources, env=OFFLINE, target=str(target))
    assert "architecture imagegpt (ImageGPTForImageClassification)" in line and "input_ids" in line, line


@pytest.fixture(scope="module")
def vit_merge(target, tmp_path_factory):
    """A ViT merge (transformers saves ViT under its legacy tensor names) and the sources' checkpoint names."""
    root = tmp_path_factory.mktemp("vit")
    sources = [checkpoint("vit", root / f"src{seed}", seed=seed) for seed in (0, 1)]
    with safe_open(sources[0] / "model.safetensors", framework="pt") as h:
        saved = set(h.keys())
    result = GraspMerger.from_pretrained([str(s) for s in sources], target=str(target), **TINY).merge()
    return result, saved, sources


@pytest.mark.slow
def test_report_and_heatmap_name_tensors_as_the_checkpoint_does(vit_merge, tmp_path, monkeypatch):
    import hf_grasp.output.heatmap

    result, saved, _ = vit_merge
    query = "vit.encoder.layer.0.attention.attention.query.weight"  # q_proj in memory
    assert query in saved and query not in result.model.state_dict()
    for record in result.report.sources[1:]:
        assert set(record.scores) <= saved and set(record.transferred) <= saved and query in record.scores
    labelled = []  # the heatmap's column names, as it shortens them for its axis
    shorten = hf_grasp.output.heatmap.shorten_tensor_names
    monkeypatch.setattr(hf_grasp.output.heatmap, "shorten_tensor_names", lambda names, **kw: labelled.append(names)
                        or shorten(names, **kw))
    result.save_pretrained(tmp_path / "merged")
    assert labelled and set(labelled[0]) <= saved and query in labelled[0]
    report = (tmp_path / "merged" / "grasp_report.json").read_text()
    assert query in report and "q_proj" not in report


@pytest.mark.slow
def test_hub_preflight_reads_checkpoint_names(vit_merge):
    """Remote headers hold the checkpoint's names: pre-flight converts them, and names a culprit as they do."""
    from hf_grasp.runtime.errors import ShapeMismatchError
    from hf_grasp.plan.options import MergeOptions
    from hf_grasp.inputs.resolution import _check_hub_headers
    from hf_grasp.inputs.sources import SourceRef

    _, _, sources = vit_merge
    lead, ref = resolve(sources[0]), SourceRef.parse("org/vit")
    found = read_header(resolve(sources[1]))
    _check_hub_headers({ref: found}, lead, len(LABELS), MergeOptions(), config_of=lambda r: None)
    query = "vit.encoder.layer.1.attention.attention.query.weight"
    wrong = {**found, query: ((7, 7), torch.float32)}
    with pytest.raises(ShapeMismatchError, match=re.escape(f"tensor '{query}' expected shape")):
        _check_hub_headers({ref: wrong}, lead, len(LABELS), MergeOptions(), config_of=lambda r: None)
    without = {k: v for k, v in found.items() if k != query}
    with pytest.raises(ShapeMismatchError, match=re.escape(f"tensor '{query}' of the target architecture is missing")):
        _check_hub_headers({ref: without}, lead, len(LABELS), MergeOptions(), config_of=lambda r: None)


def test_split_tensors_stream_as_from_pretrained_loads_them(tmp_path):
    """DINOv2 with SwiGLU saves gate_proj and up_proj as one fused ``weights_in``: split as it is read."""
    from hf_grasp.inputs.families import TransformersFamily

    src = checkpoint("dinov2", tmp_path / "src", seed=0, use_swiglu_ffn=True)
    with safe_open(src / "model.safetensors", framework="pt") as h:
        assert "dinov2.encoder.layer.0.mlp.weights_in.weight" in h.keys()
    family = TransformersFamily()
    probe = family.build(src)
    naming = family.naming(probe)
    stream_into(probe, resolve(src), naming=naming)
    loaded = AutoModelForImageClassification.from_pretrained(src, dtype=torch.float32).state_dict()
    assert [k for k in loaded if not torch.equal(probe.state_dict()[k], loaded[k])] == []
    assert naming.checkpoint_name("dinov2.encoder.layer.0.mlp.up_proj.weight") == \
        "dinov2.encoder.layer.0.mlp.weights_in.weight[2/2]"


def test_a_loader_that_joins_tensors_is_refused_before_any_weights_are_read(target, tmp_path, monkeypatch):
    """A converter joining several checkpoint tensors into one (as transformers does for fused experts) cannot be
    streamed a tensor at a time: one line naming the architecture, before a tensor is read."""
    import transformers.conversion_mapping as conversion
    from transformers.core_model_loading import Concatenate, WeightConverter

    import hf_grasp.inputs.sources

    sources = [checkpoint("resnet", tmp_path / f"src{seed}", seed=seed) for seed in (0, 1)]
    for src in sources:  # the head's weight stored in two halves, as such a checkpoint would hold it
        with safe_open(src / "model.safetensors", framework="pt") as h:
            state = {k: h.get_tensor(k) for k in h.keys()}
        a, b = state.pop("classifier.1.weight").chunk(2)
        save_file({**state, "classifier.1.weight_a": a.contiguous(), "classifier.1.weight_b": b.contiguous()},
                  src / "model.safetensors", metadata={"format": "pt"})
    own = conversion.get_checkpoint_conversion_mapping
    join = WeightConverter(["classifier.1.weight_a", "classifier.1.weight_b"], "classifier.1.weight",
                           operations=[Concatenate(dim=0)])
    monkeypatch.setattr(conversion, "get_checkpoint_conversion_mapping",
                        lambda name: [join] if name == "ResNetForImageClassification" else own(name))
    # transformers itself loads it
    AutoModelForImageClassification.from_pretrained(sources[0], dtype=torch.float32)

    def no_reading(*args, **kwargs):
        raise AssertionError("a weight was read")

    monkeypatch.setattr(hf_grasp.inputs.sources, "read_tensors", no_reading)
    monkeypatch.setattr(hf_grasp.inputs.sources, "read_tensor", no_reading)
    with pytest.raises(UnsupportedArchitectureError) as refused:
        GraspMerger.from_pretrained([str(s) for s in sources], target=str(target), **TINY).merge()
    message = str(refused.value)
    assert "\n" not in message and "architecture resnet (ResNetForImageClassification)" in message, message
    assert "'classifier.1.weight'" in message and "Concatenate" in message, message


# --------------------------------------------------------------------------- README.md

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- architectures:start -->", "<!-- architectures:end -->"
UPDATE = "HF_GRASP_UPDATE_DOCS"


def readme_block() -> str:
    """README.md's paragraph on the architectures, made from :data:`STATUS`."""
    merged = [t for t in sorted(STATUS) if STATUS[t] == MERGED]
    refused = [f"{t} ({REFUSED[t][0]})" for t in sorted(REFUSED)]
    missing = [f"{t} ({NOT_BUILDABLE[t][0]})" for t in sorted(NOT_BUILDABLE)]
    from test_timm_wrapper import TINY_TIMM  # the timm families, verified by their own sweep

    timm = [f"{family} ({name})" for family, (name, _) in TINY_TIMM.items()]
    text = (f"**Architectures** merged and reloaded by `tests/test_architectures.py`: {', '.join(merged)}; "
            f"refused in one error line: {', '.join(refused)}; not buildable here: {', '.join(missing)}. "
            f"timm families, merged and reloaded by timm and by transformers' TimmWrapper "
            f"(`tests/test_timm_wrapper.py`): {', '.join(timm)}.")
    return "\n".join([START, textwrap.fill(text, width=115, break_on_hyphens=False), END])


def test_readme_lists_the_verified_architectures():
    readme = README.read_text(encoding="utf-8")
    current = re.search(re.escape(START) + r".*?" + re.escape(END), readme, flags=re.S)
    if os.environ.get(UPDATE) and current:
        README.write_text(readme.replace(current.group(0), readme_block()), encoding="utf-8")
        readme = README.read_text(encoding="utf-8")
        current = re.search(re.escape(START) + r".*?" + re.escape(END), readme, flags=re.S)
    assert current, f"README.md has no {START} ... {END} block"
    assert current.group(0) == readme_block(), (
        "README.md's list of architectures differs from tests/test_architectures.py's table; regenerate it: "
        f"`{UPDATE}=1 python -m pytest tests/test_architectures.py -k readme`")
