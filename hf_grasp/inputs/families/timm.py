"""The ``timm`` family: checkpoints written by ``timm.models.save_for_hf``.

Such a ``config.json`` names the model in ``architecture`` and carries
``num_classes``, usually ``model_args`` (the constructor arguments timm recorded)
and ``pretrained_cfg`` (input size, interpolation, mean/std, crop). Older timm
exports put the pretrained_cfg fields at the top level; timm's own parser
(``load_model_config_from_path``) handles both, so we always go through it.

What this family writes loads with timm (``create_model("local-dir:..."`` /
``"hf-hub:..."``, ``pretrained=True``) and with transformers' TimmWrapper
(``AutoModelForImageClassification``), which reads the same ``config.json``:
see :func:`save_timm_checkpoint`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ...runtime.errors import GraspError, SourceError, first_line, flag
from .base import ModelFamily

# Keys save_config_for_hf recomputes from the model itself; everything else in
# the reference config.json (pretrained_cfg, model_args, label names, any extra
# top-level keys such as transformers' "model_type": "timm_wrapper") is carried over.
_RECOMPUTED = ("architecture", "num_features", "global_pool")

# model_args entries that TimmWrapper also passes to timm.create_model by name:
# TimmWrapperForImageClassification calls create_model(architecture,
# num_classes=config.num_labels, **config.model_args) (TimmWrapperModel passes
# num_classes=0), so one more in model_args is "got multiple values for keyword
# argument". timm's save_for_hf (1.0.31 here) records num_classes there on every
# export (get_model_args adds the model's current traits); timm itself needs no
# copy, it defaults num_classes from the top-level "num_classes" (via pretrained_cfg).
_TOP_LEVEL_ARGS = ("num_classes",)


class TimmFamily(ModelFamily):
    """Models created by ``timm.create_model`` and saved with ``save_for_hf``."""

    name = "timm"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        return "architecture" in config and ("pretrained_cfg" in config or "num_classes" in config)

    def build(self, model_dir: Path, *, trust_remote_code: bool = False) -> nn.Module:
        """Random-init fp32 model from ``config.json`` alone, in eval mode.

        ``local-dir:`` with ``pretrained=False`` makes timm parse the config
        exactly as it would for loading (architecture, model_args, num_classes,
        fixed-size img_size) and attach its pretrained_cfg, without opening the
        weight file. ``trust_remote_code`` has no meaning for timm.
        """
        import timm

        try:
            model = timm.create_model(f"local-dir:{Path(model_dir)}", pretrained=False)
        except (RuntimeError, KeyError, ValueError, TypeError) as e:  # unknown architecture, bad model_args
            raise SourceError(f"{model_dir}: timm cannot build the model in config.json: "
                              f"{first_line(e)}") from e
        return model.float().eval()

    def num_labels(self, model_dir: Path) -> int:
        """Output classes: ``model_args.num_classes`` if recorded, else ``num_classes`` (timm's precedence)."""
        pretrained_cfg, _, model_args = _parse(model_dir)
        n = model_args.get("num_classes", pretrained_cfg.get("num_classes"))
        if n is None:
            raise SourceError(f"{Path(model_dir) / 'config.json'}: timm config has no num_classes")
        return int(n)

    def image_transform(self, model_dir: Path, *, train: bool = False) -> Callable[[list], torch.Tensor]:
        """timm's ``create_transform`` from the checkpoint's pretrained_cfg.

        ``train=True`` gives timm's training transform (RandomResizedCrop with its
        default scale, horizontal flip), ``train=False`` the eval resize/crop.
        """
        from timm.data import create_transform, resolve_data_config

        pretrained_cfg, _, _ = _parse(model_dir)
        data_cfg = resolve_data_config(pretrained_cfg=pretrained_cfg)
        tf = create_transform(**data_cfg, is_training=train)
        mode = {1: "L", 3: "RGB"}.get(data_cfg["input_size"][0], "RGB")

        def transform(images: list) -> torch.Tensor:
            return torch.stack([tf(im if im.mode == mode else im.convert(mode)) for im in images])

        return transform

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        """timm's ``set_grad_checkpointing`` (it checkpoints in train and eval mode alike)."""
        try:
            model.set_grad_checkpointing(True)
        except (AssertionError, NotImplementedError, AttributeError) as e:
            raise GraspError(f"{type(model).__name__}: timm has no gradient checkpointing for this architecture; "
                             f"leave out {flag('gradient_checkpointing')}") from e

    def logits(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model(batch["pixel_values"])

    def save(self, model: nn.Module, out_dir: Path, *, like: Path) -> None:
        """:func:`save_timm_checkpoint`, carrying ``like``'s config over.

        The folder loads with timm and with transformers' TimmWrapper alike.
        """
        like_cfg = _raw_config(like)
        if "pretrained_cfg" in like_cfg:
            model_config = {k: v for k, v in like_cfg.items() if k not in _RECOMPUTED}
            source_cfg = {**like_cfg["pretrained_cfg"], "architecture": like_cfg["architecture"]}
        else:  # legacy flat export: let timm split it, then drop its local-source bookkeeping
            source_cfg, architecture, model_args = _parse(like)
            for k in ("file", "source"):
                source_cfg.pop(k, None)
            source_cfg["architecture"] = architecture  # the parser lifted it out; save_for_hf reads it here
            model_config = {"pretrained_cfg": dict(source_cfg), "model_args": model_args}
        # save_for_hf starts from model.pretrained_cfg, which is whatever checkpoint
        # the model was built from (and timm's parser moved label_names into it);
        # present like's own pretrained_cfg instead, so the export mirrors like.
        own_cfg = model.pretrained_cfg
        model.pretrained_cfg = source_cfg
        try:
            save_timm_checkpoint(model, out_dir, model_config=model_config)
        finally:
            model.pretrained_cfg = own_cfg


def save_timm_checkpoint(model: nn.Module, out_dir: Path, *, model_config: dict[str, Any],
                         data_config: dict[str, Any] | None = None) -> None:
    """``timm.models.save_for_hf`` (safetensors only), with a ``config.json`` transformers loads too.

    ``model_config`` and ``data_config`` are ``save_for_hf``'s.
    ``safe_serialization=True`` writes ``model.safetensors`` alone (timm's
    default, False, writes a pickle ``pytorch_model.bin``). The written config
    then goes through :func:`_loadable_by_timm_wrapper`; timm reads it the same.
    """
    from timm.models import save_for_hf

    save_for_hf(model, str(out_dir), model_config=model_config, safe_serialization=True, data_config=data_config)
    path = Path(out_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(_loadable_by_timm_wrapper(config), indent=2), encoding="utf-8")


def _loadable_by_timm_wrapper(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a timm export) changed so that TimmWrapper builds and labels it as timm does.

    * ``model_args`` loses the keys of :data:`_TOP_LEVEL_ARGS`, each equal to
      the top-level value timm falls back on (so timm builds the same model);
    * labels: TimmWrapper makes ``id2label`` from the top-level ``label_names``
      only, while timm also reads them from ``pretrained_cfg`` (legacy flat
      exports keep them there): lift them to the top so both name the same classes.
    """
    config = copy.deepcopy(config)
    model_args = config.get("model_args") or {}
    for key in _TOP_LEVEL_ARGS:
        if key in model_args:
            if model_args[key] != config.get(key):  # save_for_hf checks this; never drop a differing value
                raise SourceError(f"timm export: model_args.{key}={model_args[key]!r} differs from "
                                  f"{key}={config.get(key)!r}")
            del model_args[key]
    pretrained_labels = (config.get("pretrained_cfg") or {}).get("label_names")
    if "label_names" not in config and pretrained_labels:
        config["label_names"] = pretrained_labels
    return config


def _raw_config(model_dir: Path) -> dict[str, Any]:
    from . import read_config

    return copy.deepcopy(read_config(model_dir))


def _parse(model_dir: Path) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(pretrained_cfg, architecture, model_args) as timm itself reads them from ``config.json``."""
    # The very parser create_model("local-dir:...") uses. Private, kept on purpose: timm (1.0) has no public call
    # that reads a local folder's config.json (timm.models exports only load_model_config_from_hf, which
    # downloads), and a parser of our own would miss its fix-ups of older exports (legacy layout, input size).
    from timm.models._hub import load_model_config_from_path

    cfg_file = Path(model_dir) / "config.json"
    try:
        return load_model_config_from_path(model_dir)
    except (OSError, KeyError, ValueError) as e:
        raise SourceError(f"{cfg_file}: not a readable timm config ({e})") from e
