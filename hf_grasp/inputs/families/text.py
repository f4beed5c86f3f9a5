"""Text classifiers: ``AutoModelForSequenceClassification`` checkpoints and the tokenizer that travels with them.

A checkpoint belongs here when its ``config.json`` names a sequence classifier
(``architectures`` ending in ``ForSequenceClassification``, or a ``model_type``
transformers only knows as a text model). Everything but the inputs is the image
family's: built from the config by the auto class, tensor names read through
transformers' own conversion mapping, saved with ``save_pretrained``. The
tokenizer is the sources' shared one (compared up front, from its files), loaded
with ``AutoTokenizer`` and saved beside the merged model, so the folder works in
``pipeline("text-classification", model=...)`` without hf-grasp.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ...runtime.errors import SourceError, first_line, flag
from .transformers import TransformersFamily

#: the model inputs a tokenizer may give that a sequence classifier takes
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class TextFamily(TransformersFamily):
    """Text classifiers loadable with ``AutoModelForSequenceClassification``, with their tokenizer."""

    name = "transformers"  # the library; the report records the modality with the target
    modality = "text"

    @classmethod
    def matches(cls, config: dict[str, Any]) -> bool:
        if not super().matches(config):
            return False
        named = config.get("architectures")
        if isinstance(named, list) and named:
            return any(str(a).endswith("ForSequenceClassification") for a in named)
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES, \
            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

        kind = config.get("model_type")
        return kind in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES and \
            kind not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    @staticmethod
    def auto_class() -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def check_inputs(self, model_dir: Path, config: Any) -> None:
        """Any sequence classifier reads token ids: nothing to refuse here."""

    def image_transform(self, model_dir: Path, *, train: bool = False):
        raise SourceError(f"{model_dir}: a text classifier takes texts, not images: the target must be a text "
                          f"dataset (pass {flag('text_column', None)} naming its text column)")

    def transform(self, model_dir: Path, *, train: bool = False, max_length: int = 128) -> "TokenizerEncoder":
        """The sources' tokenizer, truncating at ``max_length`` tokens, or at the most the model takes when that is
        fewer (its tokenizer's ``model_max_length``, else the config's ``max_position_embeddings``); ``train``
        changes nothing for text. The report notes how many texts were cut, and at what length."""
        from . import read_config

        tokenizer = load_tokenizer(model_dir, trust_remote_code=self.trust_remote_code)
        # a tokenizer saved without a limit says 1e30 (transformers' VERY_LARGE_INTEGER)
        limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else \
            read_config(model_dir).get("max_position_embeddings")
        return TokenizerEncoder(tokenizer, min(max_length, limit) if isinstance(limit, int) and limit > 1
                                else max_length)

    def logits(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model(**{k: batch[k] for k in _MODEL_INPUTS if k in batch}).logits

    def save(self, model: nn.Module, out_dir: Path, *, like: Path) -> None:
        """``save_pretrained`` (config.json + model.safetensors) plus ``like``'s tokenizer."""
        tokenizer = load_tokenizer(like, trust_remote_code=self.trust_remote_code)  # fail before writing anything
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)

    def check_same_inputs(self, lead: str, lead_dir: Path, name: str, model_dir: Path) -> None:
        """:class:`SourceError` naming both sources and the first difference unless ``model_dir``'s tokenizer
        is ``lead_dir``'s: the same vocabulary (token -> id) and the same special tokens. Read from the tokenizer
        files alone, before any weights."""
        mine, theirs = (load_tokenizer(d, trust_remote_code=self.trust_remote_code) for d in (lead_dir, model_dir))
        difference = tokenizer_difference(mine, theirs)
        if difference:
            raise SourceError(f"sources {lead!r} and {name!r} have different tokenizers ({difference}): a merge "
                              "needs sources fine-tuned from one model, sharing its vocabulary")


class TokenizerEncoder:
    """A tokenizer as a text target's :class:`~hf_grasp.inputs.data.TextEncoder`: truncating encode, and
    transformers' ``DataCollatorWithPadding`` for each batch."""

    def __init__(self, tokenizer: Any, max_length: int):
        from transformers import DataCollatorWithPadding

        self.tokenizer, self.max_length = tokenizer, max_length
        self._collator = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def encode(self, texts: list[str], pairs: list[str] | None) -> list[dict[str, list[int]]]:
        encoded = self.tokenizer(texts, pairs, truncation=True, max_length=self.max_length)
        keys = [k for k in _MODEL_INPUTS if k in encoded]
        return [{k: encoded[k][i] for k in keys} for i in range(len(texts))]

    def pad(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return dict(self._collator(features))


def load_tokenizer(model_dir: Path, *, trust_remote_code: bool = False) -> Any:
    """``AutoTokenizer`` of ``model_dir``; code from its repository runs only with ``trust_remote_code`` (without
    it, a tokenizer that asks for some is refused, saying so)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        if "trust_remote_code" in str(e) and not trust_remote_code:
            raise SourceError(f"{model_dir}: its tokenizer needs custom code from the repository; read that code, "
                              f"and pass {flag('trust_remote_code')} only if you trust it") from e
        raise SourceError(f"{model_dir}: no usable tokenizer (a text classifier's source must hold its tokenizer "
                          f"files): {first_line(e)}") from e


def tokenizer_difference(a: Any, b: Any) -> str | None:
    """The first difference between two tokenizers' vocabularies and special tokens, said in a few words."""
    specials_a, specials_b = a.special_tokens_map, b.special_tokens_map
    for key in sorted(set(specials_a) | set(specials_b)):
        if specials_a.get(key) != specials_b.get(key):
            return f"special token {key}: {specials_a.get(key)!r} vs {specials_b.get(key)!r}"
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if len(vocab_a) != len(vocab_b):
        return f"vocabulary of {len(vocab_a)} vs {len(vocab_b)} tokens"
    for token, index in sorted(vocab_a.items(), key=lambda item: item[1]):
        if vocab_b.get(token) != index:
            return f"token {token!r} is id {index} vs {vocab_b.get(token)}"
    return None
