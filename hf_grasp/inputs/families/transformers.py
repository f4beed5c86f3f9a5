"""The ``transformers`` family: ``AutoModelForImageClassification`` checkpoints.

A checkpoint belongs here when its ``config.json`` carries a ``model_type`` and
none of timm's keys (see :mod:`hf_grasp.inputs.families.timm`, which is checked first).
Everything goes through the library's auto classes, so any architecture that
``AutoModelForImageClassification`` knows (ResNet, MobileViT, EfficientNet, ViT,
ConvNeXt, ...) works without code here.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from ...runtime.errors import GraspError, SourceError, UnsupportedArchitectureError, first_line, flag
from .base import ModelFamily, Read, TensorNaming


class TransformersFamily(ModelFamily):
    """Image classifiers loadable with ``AutoModelForImageClassification``."""

    name = "transformers"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        # timm exports (and transformers' own TimmWrapper configs) carry
        # "architecture" + "pretrained_cfg"; those belong to the timm family.
        return "model_type" in config and "architecture" not in config and "pretrained_cfg" not in config

    @staticmethod
    def auto_class() -> Any:
        """The auto class that builds this family's models."""
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification

    def check_inputs(self, model_dir: Path, config: Any) -> None:
        """Refuse an architecture whose classifier does not take what this family feeds it (:func:`check_inputs`)."""
        check_inputs(model_dir, config)

    def build(self, model_dir: Path, *, trust_remote_code: bool = False) -> nn.Module:
        """Random-init fp32 model from ``config.json`` alone (no weight file is opened), in eval mode."""
        from transformers import AutoConfig

        config = None
        try:
            config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
            self.check_inputs(model_dir, config)
            # from_config never reads weights; dtype is explicit because transformers 5
            # otherwise follows config.dtype, which a bf16 checkpoint would set.
            model = self.auto_class().from_config(
                config, dtype=torch.float32, trust_remote_code=trust_remote_code
            )
        except ValueError as e:  # unknown model_type / not an image classifier / custom code refused
            if "trust_remote_code" in str(e) and not trust_remote_code:
                raise SourceError(f"{model_dir}: its config.json needs custom code from the repository to build the "
                                  f"model; read that code, and pass {flag('trust_remote_code')} only if you trust "
                                  f"it") from e
            raise SourceError(f"{model_dir}: cannot build {'a text' if self.modality == 'text' else 'an image'} "
                              f"classifier from config.json: "
                              f"{first_line(e)}") from e
        except (ImportError, TypeError) as e:  # a library the architecture needs is missing; a config it cannot take
            raise UnsupportedArchitectureError(f"{model_dir}: architecture {_architecture(config)} cannot be built "
                                               f"here: {first_line(e)}") from e
        return model.eval()

    def naming(self, model: nn.Module) -> TensorNaming:
        """transformers' own renaming for ``model`` (:class:`TransformersNaming`)."""
        return TransformersNaming(model)

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
        _check_processor(model_dir, processor)
        mode = _pil_mode(read_num_channels(model_dir))

        def transform(images: list) -> torch.Tensor:
            images = [im if im.mode == mode else im.convert(mode) for im in images]
            return processor(images=images, return_tensors="pt")["pixel_values"]

        return transform

    def enable_gradient_checkpointing(self, model: nn.Module) -> None:
        """``PreTrainedModel.activation_checkpointing_enable`` (older transformers:
        ``gradient_checkpointing_enable``), non-reentrant, where the architecture supports it."""
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise GraspError(f"{type(model).__name__}: transformers has no gradient checkpointing for this "
                             f"architecture; leave out {flag('gradient_checkpointing')}")
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    @contextlib.contextmanager
    def checkpointing_in_eval(self, model: nn.Module) -> Iterator[None]:
        """transformers checkpoints a layer only when the layer is in train mode: the checkpointed layers alone
        are marked training (their own flag, not their children's: dropout and BatchNorm stay in eval)."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)
                  and getattr(m, "gradient_checkpointing", False) and not m.training]
        for m in layers:
            m.training = True
        try:
            yield
        finally:
            for m in layers:
                m.training = False

    def logits(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = model(pixel_values=batch["pixel_values"])
        # PPLCNetForImageClassification returns its class scores as last_hidden_state (so documented upstream)
        return out.logits if "logits" in out else out.last_hidden_state

    def save(self, model: nn.Module, out_dir: Path, *, like: Path) -> None:
        """``save_pretrained`` (config.json + model.safetensors) plus ``like``'s image processor."""
        processor = _image_processor(like)  # fail before writing anything
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)  # transformers 5 always writes safetensors
        processor.save_pretrained(out_dir)


class TransformersNaming(TensorNaming):
    """A checkpoint's tensor names as transformers' own loader and saver treat them, for one model.

    transformers 5 keeps, per architecture, a list of transforms between the
    names a checkpoint holds and the model's ``state_dict()`` names
    (``conversion_mapping.get_model_conversion_mapping``): renames of legacy
    names (ViT's ``attention.attention.query`` is ``q_proj`` in memory) and
    converters that reshape tensors (DINOv2's fused SwiGLU ``weights_in`` split
    in two). ``from_pretrained`` applies the list to every checkpoint key,
    ``save_pretrained`` its reverse. The very same objects are applied here, key
    by key, so a source streams into the probe as ``from_pretrained`` loads it.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        # what the loader checks renamed keys against (to add or strip base_model_prefix); no tensor is kept
        self.model_keys = dict.fromkeys(model.state_dict(), True)
        self._saved: dict[str, str] | None = None

    def reads(self, keys: Iterable[str], *, source: str = "") -> list[Read]:
        """Each checkpoint key renamed as ``from_pretrained`` renames it; a converted one with its converter.

        A converter that turns one checkpoint tensor into several (or one) is
        applied to each tensor as it is read. One that joins several checkpoint
        tensors into one cannot be streamed a tensor at a time:
        :class:`UnsupportedArchitectureError`, from the names alone.
        """
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, \
            rename_source_key

        # a fresh list per checkpoint (the getter deep-copies): some renames keep state as they see keys
        transforms = get_model_conversion_mapping(self.model)
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        by_pattern = {p: c for c in converters for p in c.source_patterns}
        prefix, model_keys = self.model.base_model_prefix, self.model_keys
        reads: list[Read] = []
        loaded_as: dict[str, str] = {}  # model name -> the checkpoint key loaded into it
        for key in sorted(keys, key=dot_natural_key):  # the loader's order, which stateful renames depend on
            renamed, pattern = rename_source_key(key, renamings, converters, prefix, model_keys)
            if renamed not in model_keys and key in model_keys:  # as the loader does: keep a name the model has
                renamed, pattern = rename_source_key(key, [], [], prefix, model_keys)
            if renamed in loaded_as:
                raise self._joined(source, renamed, [loaded_as[renamed], key], by_pattern.get(pattern))
            loaded_as[renamed] = key
            if pattern is None:
                reads.append(Read(key, (renamed,)))
            elif len(by_pattern[pattern].source_patterns) > 1:
                raise self._joined(source, renamed, [key], by_pattern[pattern])
            else:
                reads.append(self._converted(key, renamed, pattern, by_pattern[pattern]))
        return reads

    def _converted(self, key: str, renamed: str, pattern: str, converter: Any) -> Read:
        """The read of checkpoint tensor ``key`` through ``converter`` (one checkpoint tensor in)."""
        # the loader names the other outputs by the same substitution as the first (renamed)
        first = converter.target_patterns[0]
        targets = tuple(renamed.replace(first, t, 1) for t in converter.target_patterns)
        model, config = self.model, self.model.config

        def split(tensor: torch.Tensor) -> list[torch.Tensor]:
            one = copy.deepcopy(converter)  # as the loader: each checkpoint tensor gets its own instance
            one.add_tensor(renamed, key, pattern, tensor)
            out = one.convert(renamed, model=model, config=config)
            return [v[0] if isinstance(v, list) else v for v in (out[t] for t in targets)]

        return Read(key, targets, split)

    def _joined(self, source: str, target: str, keys: list[str], converter: Any) -> UnsupportedArchitectureError:
        """The one-line refusal of a checkpoint whose tensors the loader would join into ``target``."""
        how = (" with " + ", ".join(type(op).__name__ for op in converter.operations)) if converter else ""
        whose = f"source {source!r}: " if source else ""
        return UnsupportedArchitectureError(
            f"{whose}architecture {_architecture(self.model.config, self.model)}: transformers loads its tensor "
            f"{target!r} by joining several checkpoint tensors ({', '.join(map(repr, keys))}, ...){how}, and "
            "hf-grasp reads one checkpoint tensor at a time, so it cannot merge this architecture")

    def checkpoint_name(self, name: str) -> str:
        """What ``save_pretrained`` calls model tensor ``name``.

        A tensor the saver joins with others (the reverse of a split) is named
        after the joined checkpoint tensor with its place among the parts,
        ``...mlp.weights_in.weight[1/2]``.
        """
        if self._saved is None:
            self._saved = self._saved_names()
        return self._saved.get(name, name)

    def _saved_names(self) -> dict[str, str]:
        """Model name -> checkpoint name, as ``revert_weight_conversion`` renames a model built from its config."""
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import PrefixChange, WeightConverter, WeightRenaming, \
            apply_converters, apply_renamings

        # the saver's list for a model not made by from_pretrained: no legacy renames, no PrefixChange
        forward = get_model_conversion_mapping(self.model, add_legacy=False)
        transforms = [t.reverse_transform() for t in reversed(forward) if not isinstance(t, PrefixChange)]
        renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
        converters = [t for t in transforms if isinstance(t, WeightConverter)]
        saved = {}
        for name in self.model_keys:
            renamed, pattern = apply_converters(name, converters)  # the saver: at most one converter, then renames
            saved[name] = apply_renamings(renamed if pattern is not None else name, renamings)
            parts = next((c.source_patterns for c in converters if pattern in c.source_patterns), []) if pattern else []
            if len(parts) > 1:
                saved[name] += f"[{parts.index(pattern) + 1}/{len(parts)}]"
        if len(set(saved.values())) < len(saved):  # never two tensors under one name in a report
            return {}
        return saved


def check_inputs(model_dir: Path, config: Any) -> None:
    """:class:`UnsupportedArchitectureError` unless the architecture's classifier takes images as ``pixel_values``.

    hf-grasp feeds every model its image processor's ``pixel_values`` alone:
    ImageGPT classifies colour-cluster token ids, ShieldGemma 2 a text prompt
    with the image. The class is the one the auto class would build, found
    without building it.
    """
    from transformers import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    try:  # AutoModelForImageClassification's own mapping, public: config class -> model class(es)
        cls = MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)]
    except (KeyError, TypeError, ValueError):  # not an image classifier, or no class to tell: building says so
        return
    if isinstance(cls, (list, tuple)):  # several classes (DeiT): the auto class's rule, config.architectures or first
        named = getattr(config, "architectures", None) or []
        cls = next((c for c in cls if c.__name__ in named), cls[0])
    main = getattr(cls, "main_input_name", "pixel_values")
    if main == "input_ids":
        raise UnsupportedArchitectureError(
            f"{model_dir}: architecture {config.model_type} ({cls.__name__}) classifies token ids (input_ids), "
            "not images, and hf-grasp feeds a model pixel_values alone, so it cannot merge this architecture")


def _check_processor(model_dir: Path, processor: Any) -> None:
    """:class:`UnsupportedArchitectureError` when the image processor gives the model more than ``pixel_values``."""
    from transformers import AutoConfig

    from . import read_config

    try:
        check_inputs(model_dir, AutoConfig.from_pretrained(model_dir))  # a model that takes no images says so first
    except (OSError, ValueError):  # custom code or an unreadable config: build() reports it
        pass
    names = list(getattr(processor, "model_input_names", None) or ["pixel_values"])
    if names != ["pixel_values"]:
        raise UnsupportedArchitectureError(
            f"{model_dir}: architecture {read_config(model_dir).get('model_type')}: its image processor "
            f"({type(processor).__name__}) gives the model {', '.join(names)}, and hf-grasp feeds a model "
            "pixel_values alone, so it cannot merge this architecture")


def _architecture(config: Any, model: nn.Module | None = None) -> str:
    """An architecture as a message names it: ``vit (ViTForImageClassification)``."""
    if config is None:  # the config itself could not be read
        return "of its config.json"
    classes = [type(model).__name__] if model is not None else list(getattr(config, "architectures", None) or [])
    return f"{getattr(config, 'model_type', None)}" + (f" ({', '.join(classes)})" if classes else "")


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
