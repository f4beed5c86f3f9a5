"""Text classifiers through the same engine (issue 25): ``AutoModelForSequenceClassification`` sources sharing a
tokenizer, merged on a text target by every method; the result loads with plain transformers (``pipeline``);
the tokenizer, the labels and the texts checked up front, each problem one line naming its culprit.

The sources are tiny BERTs (2 layers, 32 wide) over a word-level tokenizer of 27 tokens, fine-tuned for a few
steps from one random base on a small sentiment-like task, so they learn (well above chance) in seconds.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from conftest import _run_main, merge_fails, merge_stopped_at_step

from hf_grasp import GraspError, GraspMerger
from hf_grasp.inputs.labels import AS_TARGET, PERMUTED
from hf_grasp.methods import METHODS

POS = "good great fine nice happy love".split()
NEG = "bad awful poor sad hate ugly".split()
FILL = "the a movie film was is it this very".split()
LABELS = ["neg", "pos"]
QUICK = dict(initial_epochs=0, finetune_epochs=0, eval_sources=False, eval_steps=False)


def _text(rng: random.Random, label: int) -> str:
    words = [rng.choice(FILL) for _ in range(rng.randint(3, 8))] + [rng.choice(POS if label else NEG)]
    rng.shuffle(words)
    return " ".join(words)


def _target(root: Path, sizes=(("train", 80), ("validation", 40), ("test", 60)), seed: int = 0) -> Path:
    rng = random.Random(seed)
    feat = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABELS)})
    splits = {}
    for split, n in sizes:
        labels = [i % 2 for i in range(n)]
        splits[split] = datasets.Dataset.from_dict({"text": [_text(rng, y) for y in labels], "label": labels},
                                                   features=feat)
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root


def _tokenizer(extra: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *POS, *NEG, *FILL, *extra])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")


def _config(vocab_size: int, labels=LABELS):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, num_labels=len(labels),
                      id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)},
                      architectures=["BertForSequenceClassification"])


def _fine_tuned(base_state: dict, tokenizer, seed: int, steps: int) -> torch.nn.Module:
    """A copy of the base trained ``steps`` AdamW steps on this task (its own texts, seed ``seed``)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(_config(len(tokenizer)))
    model.load_state_dict(base_state)
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        labels = [rng.randrange(2) for _ in range(16)]
        batch = tokenizer([_text(rng, y) for y in labels], padding=True, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(labels)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def text_task(tmp_path_factory):
    """A text target and three sources fine-tuned from one base (plus the base), as Hub repos hold them."""
    from transformers import BertForSequenceClassification

    root = tmp_path_factory.mktemp("text")
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    base = BertForSequenceClassification(_config(len(tokenizer)))
    dirs = {}
    for name, model in [("base", base), *((f"s{i}", _fine_tuned(base.state_dict(), tokenizer, i, 40))
                                           for i in range(3))]:
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs[name] = root / name
    return _target(root / "target"), dirs


def _sources(dirs: dict) -> list[str]:
    return [str(dirs[f"s{i}"]) for i in range(3)]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_merges_text_classifiers(text_task, method, tmp_path):
    target, dirs = text_task
    kw = dict(QUICK, initial_epochs=1, finetune_epochs=1)  # (a method that trains nothing ignores them)
    if METHODS[method].needs_base:
        kw["base"] = str(dirs["base"])
    result = GraspMerger.from_pretrained(_sources(dirs), target=str(target), method=method, **kw).merge()
    assert result.report.target.modality == "text"
    accuracy = result.report.test_accuracy()
    # the sources learnt the task; so has every merge of them but two: scratch uses no source (a random init
    # trained 3 epochs on 80 texts), and fisher's per-element weights (FusionBench's estimate, the square of
    # each batch sum's gradient) mix these tiny sources into a model at chance: measured, not hidden
    if method not in ("scratch", "fisher"):
        assert accuracy > 0.6, (method, accuracy)
    assert 0.0 <= accuracy <= 1.0
    result.save_pretrained(tmp_path / "out")
    saved = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "README.md"} <= saved, saved


def test_the_merge_works_in_a_pipeline_without_hf_grasp(text_task, tmp_path):
    target, dirs = text_task
    out = tmp_path / "out"
    code, _, stderr = _run_main(["merge", "--sources", *_sources(dirs), "--target", str(target), "--output",
                                 str(out), "--initial-epochs", "0", "--finetune-epochs", "1"])
    assert code == 0, stderr
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "widget:" in card and "library_name: transformers" in card
    assert "image" not in card.split("## ")[1].lower()  # the intro and what was merged speak of text classifiers
    probe = ("import json, sys\nfrom transformers import pipeline\nclassify = pipeline('text-classification', "
             "model=sys.argv[1])\nprint(json.dumps([classify(t)[0]['label'] for t in sys.argv[2:]]), "
             "'hf_grasp' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe, str(out), "a very good film", "the awful movie"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels, imported = proc.stdout.split()[:-1], proc.stdout.split()[-1]
    assert json.loads(" ".join(labels)) == ["pos", "neg"] and imported == "False"


def test_sources_with_another_vocabulary_are_refused_up_front(text_task, tmp_path):
    target, dirs = text_task
    other = tmp_path / "other"
    from transformers import BertForSequenceClassification

    tokenizer = _tokenizer(extra=("superb",))
    BertForSequenceClassification(_config(len(tokenizer))).save_pretrained(other)
    tokenizer.save_pretrained(other)
    line = merge_fails(tmp_path, [dirs["s0"], other], target=str(target))
    assert line.startswith(f"error: sources {str(dirs['s0'])!r} and {str(other)!r} have different tokenizers "
                           "(vocabulary of 26 vs 27 tokens)"), line


def test_a_source_with_its_labels_in_another_order_predicts_by_name_as_before(text_task, tmp_path):
    target, dirs = text_task
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(dirs["s0"])
    head = model.classifier
    with torch.no_grad():  # the same classifier, its classes numbered the other way round
        head.weight.copy_(head.weight.flip(0))
        head.bias.copy_(head.bias.flip(0))
    model.config.id2label, model.config.label2id = {0: "pos", 1: "neg"}, {"pos": 0, "neg": 1}
    flipped = tmp_path / "flipped"
    model.save_pretrained(flipped)
    AutoTokenizer.from_pretrained(dirs["s0"]).save_pretrained(flipped)
    texts = ["a very good film", "the awful movie", "it was fine", "sad ugly film"]

    def by_name(folder) -> list[str]:
        m = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = m(**AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")).logits
        return [m.config.id2label[int(i)] for i in logits.argmax(-1)]

    assert by_name(flipped) == by_name(dirs["s0"])
    # finetune-only of the flipped source alone, nothing trained: the source itself, its head in the target's order
    result = GraspMerger.from_pretrained([str(flipped), str(dirs["s1"])], target=str(target),
                                         method="finetune-only", **QUICK).merge()
    assert result.report.sources[0].label_order == PERMUTED
    result.save_pretrained(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}
    assert by_name(tmp_path / "out") == by_name(dirs["s0"])
    plain = GraspMerger.from_pretrained([str(dirs["s0"]), str(dirs["s1"])], target=str(target),
                                        method="finetune-only", **QUICK).merge()
    assert plain.report.sources[0].label_order == AS_TARGET
    assert plain.report.test_accuracy() == result.report.test_accuracy()


def _edited_target(tmp_path: Path, edit) -> Path:
    dd = datasets.load_from_disk(str(_target(tmp_path / "clean")))
    out = tmp_path / "edited"
    edit(dd).save_to_disk(str(out))
    return out


@pytest.mark.parametrize("case, edit, extra, message", [
    ("empty text", lambda dd: datasets.DatasetDict({**dd, "train": dd["train"].map(
        lambda r, i: {"text": "" if i == 3 else r["text"]}, with_indices=True)}), (),
     "text column 'text' in split 'train' of {target}: row 3 is empty; drop such rows"),
    ("missing column", lambda dd: dd.rename_column("text", "sentence"), ("--text-column", "body"),
     "column 'body' not found in split 'train' of {target} (columns: sentence, label)"),
    ("labels as strings", lambda dd: dd.cast_column("label", datasets.Value("string")), (),
     "label column 'label' of {target} holds Value('string'), not class ids 0..n-1"),
    ("not texts", lambda dd: dd.map(lambda r: {"n": 1}).remove_columns("text").rename_column("n", "text"), (),
     "text column 'text' in split 'train' of {target} holds Value('int64'), not strings"),
], ids=lambda v: v if isinstance(v, str) and " " in v else None)
def test_bad_text_targets_are_one_line_before_any_work(text_task, tmp_path, case, edit, extra, message):
    _, dirs = text_task
    target = _edited_target(tmp_path, edit)
    line = merge_fails(tmp_path, [dirs["s0"], dirs["s1"]], *extra, target=str(target))
    assert line.startswith("error: " + message.format(target=target)), line


def test_texts_longer_than_the_maximum_length_are_cut_and_said(text_task, tmp_path):
    target, dirs = text_task
    result = GraspMerger.from_pretrained(_sources(dirs)[:2], target=str(target), max_length=4, **QUICK).merge()
    notes = [n for n in result.report.target.notes if "cut at the maximum length of 4 tokens" in n]
    assert len(notes) == 3 and notes[0].startswith("split 'train': 80 of 80 texts")


def test_a_modality_mismatch_is_refused_by_name(text_task, checkpoints, tmp_path):
    target, dirs = text_task
    line = merge_fails(tmp_path, [dirs["s0"], dirs["s1"]], target="digits-eras")
    assert "the sources are text classifiers but target 'digits-eras' holds images" in line, line
    images = checkpoints("resnet", 2)
    line = merge_fails(tmp_path, images, target=str(target))
    assert f"the sources are image classifiers but target {str(target)!r} holds texts" in line, line
    with pytest.raises(GraspError, match="text classifiers but target 'digits-eras' holds images"):
        GraspMerger.from_pretrained([str(dirs["s0"]), str(dirs["s1"])], target="digits-eras", **QUICK)


def test_a_tokenizer_asking_for_custom_code_is_refused_unless_trusted(text_task, tmp_path):
    target, dirs = text_task
    import shutil

    custom = Path(shutil.copytree(dirs["s1"], tmp_path / "custom"))
    config = json.loads((custom / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_x.XTokenizer", None]}
    (custom / "tokenizer_config.json").write_text(json.dumps(config))
    (custom / "tokenization_x.py").write_text(f"open({str(tmp_path / 'RAN')!r}, 'w')\n")
    line = merge_fails(tmp_path, [dirs["s0"], custom], target=str(target))
    assert line == (f"error: source {str(custom)!r}: tokenizer_config.json asks for custom code of its repository "
                    "(auto_map AutoTokenizer: ['tokenization_x.XTokenizer', None]); read that code, and pass "
                    "--trust-remote-code only if you trust it"), line
    assert not (tmp_path / "RAN").exists()


def test_text_sources_by_repo_id_from_the_hub(text_task, hub_server, tmp_path):
    """Sources named by Hub id (served by the 127.0.0.1 hub server), a text column of another name: the merge
    resolves them through the HF cache, pins their commits and reads the named column."""
    from conftest import run_cli

    target, dirs = text_task
    renamed = tmp_path / "target"
    datasets.load_from_disk(str(target)).rename_column("text", "review").save_to_disk(str(renamed))
    commits = [hub_server.serve(f"org/text-{i}", dirs[f"s{i}"]) for i in range(2)]
    out = tmp_path / "out"
    proc = run_cli("merge", "--sources", "org/text-0", "org/text-1", "--target", str(renamed), "--text-column",
                   "review", "--initial-epochs", "0", "--finetune-epochs", "0", "--output", str(out),
                   env=hub_server.env(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((out / "grasp_config.json").read_text())
    assert saved["sources"] == [f"org/text-{i}@{c}" for i, c in enumerate(commits)]
    assert saved["options"]["text_column"] == "review"
    report = json.loads((out / "grasp_report.json").read_text())
    assert report["target"]["modality"] == "text" and report["final"]["test"]["accuracy"] > 0.6
    assert "Text column: `review`." in (out / "README.md").read_text()


def test_a_text_merge_resumes_to_the_same_bits_and_is_continued_by_init(text_task, tmp_path):
    """The resume area and ``--init`` of an earlier merge work on text as on images: a merge stopped after its
    second step and resumed is bit-identical to one never stopped; a saved merge continued with one more source
    adds one step."""
    target, dirs = text_task
    kw = dict(QUICK, initial_epochs=1, finetune_epochs=1)
    merger = GraspMerger.from_pretrained(_sources(dirs), target=str(target), **kw)
    whole = merger.merge().model.state_dict()
    merge_stopped_at_step(merger, tmp_path / "area", 2)
    resumed = merger.merge(checkpoint_dir=tmp_path / "area", resume=True).model.state_dict()
    assert all(torch.equal(t, resumed[n]) for n, t in whole.items())

    first = GraspMerger.from_pretrained(_sources(dirs)[:2], target=str(target), **kw).merge()
    first.save_pretrained(tmp_path / "first")
    more = GraspMerger.from_pretrained(_sources(dirs)[2:], target=str(target), init=str(tmp_path / "first"),
                                       **kw).merge()
    assert len(more.report.steps) == len(first.report.steps) + 1 and more.report.target.modality == "text"
    more.save_pretrained(tmp_path / "more")
    assert (tmp_path / "more" / "tokenizer.json").is_file()
