"""The ``transformers`` family: ``AutoModelForImageClassification`` checkpoints.

A checkpoint belongs here when its ``config.json`` carries a ``model_type`` and
none of timm's keys (see :mod:`hf_grasp.families.timm`, which is checked first).
Everything goes through the library's auto classes, so any architecture that
``AutoModelForImageClassification`` knows (ResNet, MobileViT, EfficientNet, ViT,
ConvNeXt, ...) works without code here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import SourceError, first_line
from .base import ModelFamily


class TransformersFamily(ModelFamily):
    """Image classifiers loadable with ``AutoModelForImageClassification``."""

    name = "transformers"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        # timm exports (and transformers' own TimmWrapper configs) carry
        # "architecture" + "pretrained_cfg"; those belong to the timm family.
        return "model_type" in config and "architecture" not in config and "pretrained_cfg" not in config

    def build(self, model_dir: Path, *, trust_remote_code: bool = False) -> nn.Module:
        """Random-init fp32 model from ``config.json`` alone (no weight file is opened), in eval mode."""
        from transformers import AutoConfig, AutoModelForImageClassification

        try:
            config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
            # from_config never reads weights; dtype is explicit because transformers 5
            # otherwise follows config.dtype, which a bf16 checkpoint would set.
            model = AutoModelForImageClassification.from_config(
                config, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
        except ValueError as e:  # unknown model_type / not an image classifier / custom code refused
            if "trust_remote_code" in str(e) and not trust_remote_code:
                raise SourceError(f"{model_dir}: its config.json needs custom code from the repository to build the "
                                  "model; read that code, and pass --trust-remote-code only if you trust it") from e
            raise SourceError(f"{model_dir}: cannot build an image classifier from config.json: "
                              f"{first_line(e)}") from e
        return model.eval()

    def num_labels(self, model_dir: Path) -> int:
        """``config.num_labels`` (the length of ``id2label``) as transformers reads it."""
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(model_dir).num_labels
        except ValueError:
            # A remote-code config cannot be built without trust_remote_code; the
            # label count is still plain JSON, read the way PreTrainedConfig does.
            from . import read_config

            config = read_config(model_dir)
            return len(config["id2label"]) if "id2label" in config else int(config.get("num_labels", 2))

    def image_transform(self, model_dir: Path, *, train: bool = False) -> Callable[[list], torch.Tensor]:
        """The checkpoint's own ``AutoImageProcessor`` (resize, crop, rescale, normalise).

        ``train`` is accepted for interface parity but adds no augmentation:
        transformers image processors define inference preprocessing only, and
        the training recipe of the paper uses the same preprocessing for both.
        """
        processor = _image_processor(model_dir)
        mode = _pil_mode(read_num_channels(model_dir))

        def transform(images: list) -> torch.Tensor:
            images = [im if im.mode == mode else im.convert(mode) for im in images]
            return processor(images=images, return_tensors="pt")["pixel_values"]

        return transform

    def logits(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        return model(pixel_values=pixel_values).logits

    def save(self, model: nn.Module, out_dir: Path, *, like: Path) -> None:
        """``save_pretrained`` (config.json + model.safetensors) plus ``like``'s image processor."""
        processor = _image_processor(like)  # fail before writing anything
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)  # transformers 5 always writes safetensors
        processor.save_pretrained(out_dir)


def _image_processor(model_dir: Path) -> Any:
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise SourceError(f"{Path(model_dir) / 'preprocessor_config.json'}: no usable image processor: "
                          f"{first_line(e)}") from e


def read_num_channels(model_dir: Path) -> int:
    """Input channels the checkpoint expects (``num_channels``; 3 when the config does not say)."""
    from . import read_config

    return int(read_config(model_dir).get("num_channels", 3))


def _pil_mode(channels: int) -> str:
    # Processors do not convert colour modes themselves; a grayscale or RGBA
    # image would otherwise reach an RGB model with the wrong channel count.
    return {1: "L", 3: "RGB"}.get(channels, "RGB")
