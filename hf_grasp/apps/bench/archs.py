"""Small built-in architectures for ``hf-grasp make-sources``.

:func:`new_checkpoint` writes a randomly initialised checkpoint directory laid
out exactly like a Hub repository of that library, so everything downstream
(resolving, streaming, training, saving) runs the same code it runs on real
Hub models:

* transformers arches: ``config.json``, ``model.safetensors`` and
  ``preprocessor_config.json`` from the model type's own image processor class
  (the one ``AutoImageProcessor`` maps the model type to), sized for square
  ``image_size`` inputs, with that class's normalisation left as it defines it
  (EfficientNet's with ``include_top=False``: normalised once, not twice);
* ``timm:<name>``: ``config.json`` + ``model.safetensors`` from
  ``timm.models.save_for_hf``, with ``input_size=(3, image_size, image_size)``,
  ImageNet mean/std, bilinear interpolation and ``crop_pct=1.0``, written as
  the timm family saves a merge (loadable by timm and by transformers' TimmWrapper).

The transformers configs are shrunk (0.3–0.7M parameters) so that a few epochs
on 32x32 RGB images take seconds on a CPU; ``resnet18`` is the full
ResNet-18 shape (~11M parameters) for memory measurements. MobileViT's and
EfficientNet's BatchNorm scales start at 1, not where transformers' init draws
them (:data:`_BATCHNORM_AT_IDENTITY`): drawn, every such checkpoint trained at chance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ...runtime.errors import GraspError

# torch, transformers and timm are imported where a checkpoint is made: ARCHS is read by `--help`.

#: Built-in transformers architectures; any ``timm:<model name>`` is accepted too.
ARCHS = ("resnet", "mobilevit", "efficientnet", "resnet18")
#: the full-size shapes users merge (transformers' default configs: ViT-B/16, ConvNeXt-T, ResNet-50), for the
#: performance benchmark at 224 pixels; not offered by make-sources (a CPU takes minutes per epoch of them)
SCALE_ARCHS = ("vit-b16", "convnext-t", "resnet50")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _resnet(image_size: int) -> Any:
    from transformers import ResNetConfig

    # Stem (conv stride 2 + max-pool) then stages at strides 1,2,2,2: a 32x32
    # input ends as a 1x1 map, which the adaptive pooler accepts.
    return ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                        layer_type="basic", downsample_in_first_stage=False)


def _resnet18(image_size: int) -> Any:
    from transformers import ResNetConfig

    return ResNetConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2],
                        layer_type="basic", downsample_in_first_stage=False)


def _vit_b16(image_size: int) -> Any:
    from transformers import ViTConfig

    return ViTConfig(image_size=image_size)  # the default: ViT-B/16, 86M parameters


def _convnext_t(image_size: int) -> Any:
    from transformers import ConvNextConfig

    return ConvNextConfig(image_size=image_size)  # the default: ConvNeXt-T, 28M parameters


def _resnet50(image_size: int) -> Any:
    from transformers import ResNetConfig

    return ResNetConfig()  # the default: ResNet-50, 24M parameters with a 10-class head


def _mobilevit(image_size: int) -> Any:
    from transformers import MobileViTConfig

    # MobileViT downsamples by 32: at 32x32 the last two MobileViT blocks see
    # 2x2 and 1x1 maps, which the model bilinearly resizes to a multiple of
    # patch_size (2) itself. Narrow widths and 2 heads keep it at ~0.27M params.
    return MobileViTConfig(image_size=image_size, hidden_sizes=[24, 32, 48],
                           neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 96], num_attention_heads=2,
                           expand_ratio=2.0, mlp_ratio=2.0)


def _efficientnet(image_size: int) -> Any:
    from transformers import EfficientNetConfig
    from transformers.models.efficientnet.modeling_efficientnet import round_filters

    # batch_norm_momentum: the config's default, 0.99, is TensorFlow's decay, which transformers hands to torch's
    # BatchNorm2d as its momentum (the weight of the new batch): the running statistics were the last training
    # batch's (often a short one), and validation swung with it; 0.1 is torch's own default. Its dropout (0.5) and
    # drop-connect (0.2) stay: lowered, the sources learned no better (0.89 vs 0.90 at the least, seed 0).
    # width_coefficient 0.5 (0.66M parameters; 0.25 had 0.20M): the narrower base ended at 0.88-0.91 and a source
    # of seed 2 at 0.88 even after 8 epochs; at 0.5 the base ends at 0.91-0.94, every source of seeds 0-2 >= 0.91
    config = EfficientNetConfig(image_size=image_size, width_coefficient=0.5, depth_coefficient=0.34,
                                batch_norm_momentum=0.1)
    # The top conv has round_filters(1280) channels but its BatchNorm is sized by
    # hidden_dim, so the two must agree (the B0-B7 presets set them by hand).
    config.hidden_dim = round_filters(config, 1280)
    return config


#: the arches whose transformers init draws BatchNorm scales like weights, from N(0, initializer_range = 0.02)
#: (MobileViT's and EfficientNet's ``_init_weights``; ResNet's sets them to 1): every BatchNorm then shrinks its
#: output 50-fold, so a random checkpoint's features vanish (std 1e-3 to 1e-6 after a few blocks) and it trains
#: at chance. new_checkpoint sets them as torch and timm do (scale 1, shift 0); pretrained Hub weights are unaffected.
_BATCHNORM_AT_IDENTITY = ("mobilevit", "efficientnet")


def _batchnorm_at_identity(model: Any) -> None:
    """Every BatchNorm's scale to 1 and shift to 0 (no random numbers drawn: the other weights are unchanged)."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) and module.affine:
                module.weight.fill_(1.0)
                module.bias.zero_()


_TRANSFORMERS: dict[str, Callable[[int], Any]] = {
    "resnet": _resnet,
    "mobilevit": _mobilevit,
    "efficientnet": _efficientnet,
    "resnet18": _resnet18,
    "vit-b16": _vit_b16,
    "convnext-t": _convnext_t,
    "resnet50": _resnet50,
}


def _processor_overrides(model_type: str, image_size: int) -> dict[str, Any]:
    """Size settings that make each processor output ``image_size`` x ``image_size``."""
    square = {"height": image_size, "width": image_size}
    if model_type in ("resnet", "convnext"):  # ConvNextImageProcessor: shortest edge to size/crop_pct, centre crop
        return {"size": {"shortest_edge": image_size}, "crop_pct": 1.0}
    if model_type == "mobilevit":  # shortest edge resize, then centre crop
        return {"size": {"shortest_edge": image_size}, "crop_size": square}
    if model_type == "efficientnet":  # direct resize; include_top=False: rescaled and normalised once, to [-1, 1]
        # (its default, True, divides by the std a second time: digits came out in [-2, 2] around -1.5)
        return {"size": square, "crop_size": square, "include_top": False}
    if model_type == "vit":  # direct resize to (height, width)
        return {"size": square, "crop_size": square}
    raise GraspError(f"no image processor settings for model type {model_type!r}")


def _image_processor(config: Any, image_size: int) -> Any:
    """The model type's own image processor class, as AutoImageProcessor would pick it."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

    classes = IMAGE_PROCESSOR_MAPPING[type(config)]  # {backend: class}; the saved JSON is backend-neutral
    cls = classes.get("torchvision") or classes.get("pil")
    return cls(**_processor_overrides(config.model_type, image_size))


def _labels(num_labels: int, id2label: dict[int, str] | None) -> dict[int, str]:
    if id2label is None:
        return {i: f"LABEL_{i}" for i in range(num_labels)}
    if sorted(int(i) for i in id2label) != list(range(num_labels)):
        raise GraspError(f"id2label must name classes 0..{num_labels - 1}, got keys {sorted(id2label)}")
    return {int(i): str(n) for i, n in id2label.items()}


def new_checkpoint(arch: str, out_dir: Path, *, num_labels: int, id2label: dict[int, str] | None = None,
                   image_size: int = 32, seed: int = 0, timm_kwargs: dict[str, Any] | None = None,
                   max_shard_size: str | None = None) -> None:
    """Write a randomly initialised (``torch.manual_seed(seed)``) checkpoint of ``arch`` to ``out_dir``.

    ``arch`` is one of :data:`ARCHS` or ``timm:<timm model name>``. The
    directory holds what a Hub repo of that library holds (config, safetensors
    weights, preprocessing config) and nothing else; no pickle file is written.
    ``timm_kwargs`` (timm arches only) go to ``timm.create_model`` (``depth=2``,
    say, for a smaller variant); timm records them in ``model_args``, so every
    loader of the checkpoint builds the same shape. ``max_shard_size`` (transformers arches, e.g. ``"100MB"``)
    writes the weights as safetensors shards with their index, as large Hub checkpoints are.
    """
    labels = _labels(num_labels, id2label)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if arch.startswith("timm:"):
        _new_timm(arch[len("timm:"):], out_dir, labels=labels, image_size=image_size, seed=seed,
                  kwargs=timm_kwargs or {})
        return
    if timm_kwargs:
        raise GraspError(f"timm_kwargs apply to timm:<model name> architectures only, not {arch!r}")
    if arch not in _TRANSFORMERS:
        raise GraspError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)} or timm:<model name>")

    import torch
    from transformers import AutoModelForImageClassification

    config = _TRANSFORMERS[arch](image_size)
    config.id2label = labels
    config.label2id = {n: i for i, n in labels.items()}
    torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_config(config, dtype=torch.float32)
    if arch in _BATCHNORM_AT_IDENTITY:
        _batchnorm_at_identity(model)
    model.save_pretrained(out_dir, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    _image_processor(config, image_size).save_pretrained(out_dir)


def resnet18_like(out_dir: Path, *, num_labels: int, image_size: int = 32, seed: int = 0) -> None:
    """A transformers ResNet-18-shaped checkpoint (~11M parameters); same as ``new_checkpoint("resnet18", ...)``."""
    new_checkpoint("resnet18", out_dir, num_labels=num_labels, image_size=image_size, seed=seed)


_TIMM_ARCH_KEYS = ("architecture", "input_size", "fixed_input_size", "min_input_size", "pool_size",
                   "first_conv", "classifier", "num_classes")


def _new_timm(name: str, out_dir: Path, *, labels: dict[int, str], image_size: int, seed: int,
              kwargs: dict[str, Any]) -> None:
    """A random timm ``name`` saved by :func:`~hf_grasp.inputs.families.timm.save_timm_checkpoint`, as merges are."""
    import timm
    import torch
    from timm.models import get_pretrained_cfg

    from ...inputs.families.timm import save_timm_checkpoint

    if not name or not timm.is_model(name):
        raise GraspError(f"unknown timm architecture {name!r} (timm.list_models() lists them); "
                         f"built-ins: {', '.join(ARCHS)}")
    kwargs = {**kwargs, "num_classes": len(labels)}
    default_cfg = get_pretrained_cfg(name)
    if default_cfg is not None and default_cfg.fixed_input_size:
        kwargs.setdefault("img_size", image_size)  # e.g. ViTs: position embeddings sized for the input
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    # The registry's pretrained_cfg describes timm's published ImageNet weights
    # (tag, license, test sizes); keep only what describes this architecture.
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k in _TIMM_ARCH_KEYS}
    data_config = {"input_size": (3, image_size, image_size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                   "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}
    save_timm_checkpoint(model, out_dir, model_config={"label_names": [labels[i] for i in range(len(labels))]},
                         data_config=data_config)
