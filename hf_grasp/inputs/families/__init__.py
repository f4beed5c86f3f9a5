"""Model families and how a checkpoint is assigned to one.

A family is chosen from the checkpoint's ``config.json`` alone: the first class
in :data:`FAMILIES` whose ``matches`` accepts it wins. Adding a family (an audio
classifier, say) is one :class:`~hf_grasp.inputs.families.base.ModelFamily` subclass
plus one :func:`register_family` call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...runtime.errors import SourceError
from .base import ModelFamily
from .timm import TimmFamily
from .text import TextFamily
from .transformers import TransformersFamily

#: Checked in order. timm comes first: its configs are the more specific shape
#: (a timm export wrapped for transformers also has a "model_type"); then text classifiers, which transformers'
#: image family would otherwise take (it accepts any "model_type").
FAMILIES: list[type[ModelFamily]] = [TimmFamily, TextFamily, TransformersFamily]

__all__ = ["FAMILIES", "ModelFamily", "TextFamily", "TimmFamily", "TransformersFamily", "family_for", "read_config",
           "register_family"]


def register_family(family: type[ModelFamily], *, first: bool = False) -> type[ModelFamily]:
    """Add a family to :data:`FAMILIES` (at the end, or checked first). Usable as a decorator."""
    if family not in FAMILIES:
        FAMILIES.insert(0, family) if first else FAMILIES.append(family)
    return family


def family_for(config: dict[str, Any], *, source: str = "", trust_remote_code: bool = False) -> ModelFamily:
    """The family (an instance, allowed to run the repository's code only with ``trust_remote_code``) whose
    ``matches`` accepts this parsed ``config.json``.

    Raises :class:`SourceError` naming ``source`` when none does.
    """
    for family in FAMILIES:
        if family.matches(config):
            return family(trust_remote_code=trust_remote_code)
    names = " nor a ".join(dict.fromkeys(f.name for f in reversed(FAMILIES)))  # (text and image: transformers)
    raise SourceError(
        f"{source or 'checkpoint'}: config.json is neither a {names} checkpoint "
        f"(it has no 'model_type', nor timm's 'architecture' with 'num_classes' / 'pretrained_cfg')"
    )


def read_config(model_dir: str | Path) -> dict[str, Any]:
    """Parsed ``<model_dir>/config.json``; :class:`SourceError` naming the file if missing or invalid."""
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{path}: not found (a checkpoint directory needs a config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SourceError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise SourceError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config
