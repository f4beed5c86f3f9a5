"""Every merge option, declared once, with pydantic.

Two kinds of option, both pydantic models whose fields carry their default,
help text, help group and valid range:

- :class:`MergeOptions`: what every method shares (the target data, the
  fine-tuning budget, loading and runtime);
- each method's own parameters, a :class:`MethodParams` subclass given to the
  method at registration (``hf_grasp.methods.catalog``): τ and granularity for
  GRASP, density for TIES, and so on.

Field names are the Python keyword arguments of ``GraspMerger.from_pretrained``,
the recipe keys, and (with dashes) the CLI flags. Values from any of the three
go through the same pydantic validation: ``--scaling 0.5`` arrives as the float
0.5, ``target_domain: 2`` in YAML as the text ``"2"``, ``--lr -1`` or
``--tau nan`` is refused with a line naming the option and where it came from.

pydantic rather than ``transformers.HfArgumentParser``: it validates ranges and
types the same way for the CLI, YAML and Python (HfArgumentParser only parses
the command line), and it imports in ~50 ms, where HfArgumentParser pulls in
transformers (~0.7 s here), which ``hf-grasp --help`` must not pay for.
"""

from __future__ import annotations

import argparse
import types
from dataclasses import dataclass
import typing
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..runtime.errors import GraspError
from .licenses import hub_license_id

if TYPE_CHECKING:  # the registry sits above this stage: its callers pass it in
    from ..methods.registry import MethodInfo

#: the method registry, name -> MethodInfo (``hf_grasp.methods.METHODS``)
Registry = Mapping[str, "MethodInfo"]


def option(default: Any, help: str, *, group: str | None = None, card: str | dict | None = None,
           card_skip: str | None = None, **constraints: Any) -> Any:
    """A declared option: its default, help text, help group (shared options), how the model card states it,
    and pydantic constraints.

    ``card`` is the sentence the card (:mod:`hf_grasp.output.card`) states the run's value with: a format
    string using ``{value}`` (``"Learning rate {value:g} (AdamW)."``), or a dict value -> sentence for a
    Literal, a flag or an optional value (each sentence may use ``{value}`` too; the key ``...`` stands for any
    value not listed). An option the card does not state says why in ``card_skip`` instead (a runtime choice
    that does not change the model, ...). Every built-in option declares one of the two; a method parameter
    from outside hf_grasp with neither is stated as ``name = value``.
    """
    if card is not None and card_skip is not None:
        raise TypeError("an option is either stated on the card (card=...) or not (card_skip=...), not both")
    extra = {k: v for k, v in (("group", group), ("card", card), ("card_skip", card_skip)) if v is not None}
    return Field(default, description=help, json_schema_extra=extra or None, **constraints)


#: learning-rate schedules (names of ``transformers.get_scheduler``)
Schedule = Literal["cosine", "linear", "constant"]
#: fine-tuning optimizers, by their transformers ``TrainingArguments.optim`` names
Optim = Literal["adamw_torch", "adamw_8bit", "adafactor", "sgd"]
#: the units GRASP can score (hf_grasp.engine.alignment): declared once, here, below every stage that names them
Granularity = Literal["tensor", "row", "element"]
GRANULARITIES: tuple[str, ...] = typing.get_args(Granularity)


# Ranges: generous, but within what each consumer takes (a value beyond them is a typo, refused in one line).
#: numpy's and torch's seeding take 32 bits (``np.random.seed`` refuses 2**32)
SEED_END = 2**32
#: tokens per text: beyond the positions of any encoder a CPU or GPU fine-tunes
MAX_TOKENS = 2**16
#: images per batch: far beyond any accelerator's memory, and within the int32 torch indexes batches with
MAX_BATCH = 2**20
#: epochs of one fine-tuning round: ten thousand is weeks of training even on a tiny target
MAX_EPOCHS = 10_000
#: threads: torch.set_num_threads takes a C int; no machine has more cores than this
MAX_THREADS = 4096
# A float option needs no bound beyond being finite: a rate that makes training diverge is refused by the
# engine's loss check, naming the round and epoch.
#: any other whole-number option (a method parameter that declares no bound: a count, a rank): what every loop,
#: slice (``itertools.islice`` takes at most ``sys.maxsize``) and torch call it reaches can take
INT_LIMIT = 2**31 - 1


class _Options(BaseModel):
    """Common validation: unknown names refused, NaN/inf refused unless a field allows them,
    numbers accepted for text (YAML's ``target_domain: 2``)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True,
                              validate_assignment=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @field_validator("*")
    @classmethod
    def _within_int_limit(cls, value: Any, info) -> Any:
        """A whole number (or a tuple of them) with no declared upper bound stays within :data:`INT_LIMIT`:
        ``--align-batches 10**21`` is refused here, not as a traceback from the loop that takes it."""
        declared = cls.model_fields[info.field_name].metadata
        if any(hasattr(m, "le") or hasattr(m, "lt") for m in declared):
            return value
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > INT_LIMIT:
                raise ValueError(f"must be at most {INT_LIMIT} in size")
        return value


class MethodParams(_Options):
    """Base of a merge method's own parameters (declare fields with :func:`option`)."""


class NoParams(MethodParams):
    """A method that takes no parameters of its own."""


class MergeOptions(_Options):
    """Options every merge method shares. Defaults follow DESIGN.md §1 (the paper and its released code)."""

    # --- target data
    target_domain: str | None = option(None, "Keep only target rows whose domain column equals this value.",
                                       group="data", card={None: "Target rows: all of them (no domain filter).",
                                                           ...: "Target rows: only those of domain `{value}`."})
    domain_column: str = option("domain", "Column holding the domain of each row.", group="data",
                                card="Domain column: `{value}`.")
    image_column: str = option("image", "Column holding the images.", group="data", card="Image column: `{value}`.")
    label_column: str = option("label", "Column holding the integer class labels.", group="data",
                               card="Label column: `{value}`.")
    text_column: str | None = option(None, "Column holding the texts, for a text target (text classifiers); "
                                     "default: a target without the image column but with a 'text' column is one.",
                                     group="data", card={None: "Text column: `text`.", ...: "Text column: `{value}`."})
    text_pair_column: str | None = option(None, "Column holding the second text of a sentence-pair task.",
                                          group="data", card={None: "Single texts (no second text column).",
                                                                ...: "Second text column: `{value}`."})
    max_length: int = option(128, "Tokens per text (pair) at most, for a text target: longer ones are cut (and "
                             "counted in the report); batches are padded to their longest row only.", group="data",
                             card="Texts cut at {value} tokens.", ge=2, le=MAX_TOKENS)
    validation_fraction: float = option(
        0.1, "Fraction of train carved (stratified, seeded) as validation when the dataset has none.", group="data",
        card="Validation split, when the dataset has none: a stratified, seeded fraction {value:g} of train.", gt=0,
        lt=1)
    skip_bad_images: bool = option(False, "Leave out (and report) target rows whose image file cannot be decoded "
                                   "instead of failing; every image is checked before any work.", group="data",
                                   card={False: "Target images that cannot be decoded: an error (every image is "
                                                "checked before any work).",
                                         True: "Target rows whose image cannot be decoded: left out (and reported)."})

    # --- sources and training budget
    batch_size: int = option(32, "Batch size for alignment, fine-tuning and evaluation.", group="training",
                             card="Batch size: {value} (alignment, fine-tuning and evaluation).", ge=1,
                             le=MAX_BATCH)
    initial_epochs: int = option(3, "Epochs fine-tuning the initial model on the target before the first "
                                 "transfer.", group="training",
                                 card="Epochs fine-tuning the initial model before the first transfer: {value}.", ge=0,
                                 le=MAX_EPOCHS)
    finetune_epochs: int = option(3, "Epochs fine-tuning after each source's transfer (Stage 5); 0 disables it. "
                                  "Every method that trains gets initial + (K-1) x this many epochs.",
                                  group="training", card="Epochs fine-tuning after each source's transfer: {value}.",
                                  ge=0, le=MAX_EPOCHS)
    lr: float = option(5e-5, "Learning rate of the fine-tuning optimizer.", group="training",
                       card="Learning rate {value:g}.", gt=0)
    weight_decay: float = option(0.01, "Weight decay of the fine-tuning optimizer, on every parameter (the released "
                                 "code).", group="training", card="Weight decay {value:g}.", ge=0)
    optim: Optim = option(
        "adamw_torch", "The fine-tuning optimizer, by its transformers TrainingArguments name: 'adamw_torch' (the "
        "released code's AdamW; PyTorch's fused kernel where the device has one; two moments: 2x the parameters' "
        "memory), 'adamw_8bit' (bitsandbytes' 8-bit AdamW, moments in a quarter of that; pip install "
        "'hf-grasp[lowmem]'), 'adafactor' (transformers' Adafactor at --lr: factored second moments, no first "
        "moment) or 'sgd' (no state; plain SGD at --lr, which AdamW's small rates barely move).", group="training",
        card={"adamw_torch": "Optimizer: AdamW (PyTorch), as in the released code.",
              "adamw_8bit": "Optimizer: 8-bit AdamW (bitsandbytes, `--optim adamw_8bit`).",
              "adafactor": "Optimizer: Adafactor (transformers, fixed learning rate, `--optim adafactor`).",
              "sgd": "Optimizer: SGD without momentum (`--optim sgd`)."})
    schedule: Schedule = option(
        "cosine", "Learning-rate schedule over each fine-tuning round.", group="training",
        card="Learning-rate schedule: {value}, over each fine-tuning round.")
    schedule_per: Literal["epoch", "step"] = option(
        "epoch", "Step the schedule once per epoch (the released GRASP code: the first epoch at the full rate) or "
        "after every batch (to zero at the round's end).", group="training",
        card={"epoch": "The schedule stepped once per epoch (the released code: the first epoch at the full rate).",
              "step": "The schedule stepped after every batch, to zero at the round's end."})
    keep_start: bool = option(
        False, "A fine-tuning round may end on the state it started from: that state is evaluated on validation "
        "too and kept when no epoch is strictly better (the epochs are still trained). Off: the best epoch is kept "
        "(the released code).", group="training",
        card={False: "A fine-tuning round kept its epoch with the best validation accuracy (the released code).",
              True: "A fine-tuning round ended on the best of its starting state and its epochs by validation "
                    "accuracy (`--keep-start`)."})
    align_mode: Literal["eval", "train-merged"] = option(
        "eval", "Model modes for the alignment gradients: both models in eval mode (deterministic, each model's own "
        "BatchNorm statistics), or 'train-merged' as the released code does (the merged model in train mode: batch "
        "statistics, dropout, its running statistics updated by the alignment batches).", group="training",
        card={"eval": "Model modes while taking the alignment gradients: both models in **eval** mode "
                      "(deterministic, dropout-free, each with its own BatchNorm statistics; the released code puts "
                      "the merged model in train mode).",
              "train-merged": "Model modes while taking the alignment gradients: the merged model in **train** mode "
                              "(BatchNorm on batch statistics, dropout on; the alignment batches update its running "
                              "statistics), the source in eval mode, as in the released code (`--align-mode "
                              "train-merged`)."})
    init: str = option("first", "Initial merged model: 'first' (the first source), 'random', or a model reference; "
                       "with the last two the loop starts at the first source. A merge saved by hf-grasp is "
                       "continued (GRASP and its ablations): one step per new source, with its options unless set.",
                       group="training",
                       card={"first": "Initial merged model: the first source.",
                             "random": "Initial merged model: a random initialisation; the loop starts at the first "
                                       "source.",
                             ...: "Initial merged model: `{value}`; the loop starts at the first source."})
    order: str = option("given", "Source order: 'given', 'reverse', 'random' (seeded) or a comma list of 0-based "
                        "indices.", group="training",
                        card={"given": "Source order: as given.", "reverse": "Source order: reversed.",
                              "random": "Source order: shuffled with the seed.",
                              ...: "Source order: the given sources taken by their 0-based indices {value}."})
    seed: int = option(0, "Seed for batches, shuffling, random init and random order.", group="training",
                       card="Seed: {value} (batches, shuffling, random init and random order).", ge=0,
                       lt=SEED_END)
    skip_mismatched_heads: bool = option(False, "Skip (and report) source heads whose size differs from the "
                                         "target's label count, or whose label names are not the target's, instead "
                                         "of failing (labels are matched by name: the same names in another order "
                                         "are reordered, never skipped).", group="training",
                                         card={False: "Source classifier heads whose size or label names differ "
                                                      "from the target's: an error.",
                                               True: "Source classifier heads whose size or label names differ "
                                                     "from the target's: skipped (and reported)."})
    augment: bool = option(False, "Train with the model library's own augmentation (timm's training transform); "
                           "off by default so both families train on the same deterministic preprocessing.",
                           group="training",
                           card={False: "Training images: the deterministic preprocessing (no augmentation).",
                                 True: "Training images: augmented by the model library's own training transform."})
    base: str | None = option(None, "The sources' shared starting point (a model reference), for methods on task "
                              "vectors (task-arithmetic, ties, opcm, sequential-ta; pearl optionally).",
                              group="training",
                              card_skip="stated under 'What was merged', beside the sources, when the method used it")
    recalibrate_bn: bool = option(False, "After a parameter-space merge, re-estimate BatchNorm running statistics "
                                  "on target train images (forward passes only, cumulative average).",
                                  group="training",
                                  card={False: "BatchNorm running statistics after the merge: not re-estimated.",
                                        True: "BatchNorm running statistics after the merge: re-estimated on target "
                                              "train images (forward passes only)."})
    eval_sources: bool = option(True, "Also evaluate each source alone on the target test split for the report.",
                                group="training", card_skip="what the report measured, not how the model was made: "
                                "the Results show it")
    eval_steps: bool = option(True, "Evaluate the merged model on validation and test after every step, for the "
                              "report's per-step table; off: only the final model is evaluated (the steps show a "
                              "dash). A fine-tuning round's own validation is always recorded.", group="training",
                              card_skip="what the report measured, not how the model was made: the Results show it")

    # --- loading and runtime
    allow_pickle: bool = option(False, "Allow pickle weight files (.bin/.pth) when a source has no safetensors.",
                                group="runtime", card_skip="a permission to read files: the sources table lists the "
                                "weight files read")
    allow_duplicates: bool = option(False, "Merge a checkpoint given twice among the sources (the same directory, "
                                    "repo and commit, or byte-identical weights), counting it twice, instead of "
                                    "refusing it.", group="runtime",
                                    card_skip="a permission: the sources table lists every source, repeats included")
    trust_remote_code: bool = option(False, "Allow model or dataset code from the Hub to run.", group="runtime",
                                     card_skip="a permission to run code, not a setting of the model")
    evict_sources: bool = option(False, "Download each Hub source's weights only when it is streamed, into a "
                                 "scratch directory deleted right after: disk holds one source checkpoint whatever "
                                 "K (online; not the first source, not methods that read every source at once).",
                                 group="runtime", card_skip="a runtime choice that does not change the model")
    gradient_accumulation_steps: int = option(
        1, "Run each batch of --batch-size in this many slices whose gradients add up to the batch's, in "
        "alignment and fine-tuning (TrainingArguments' name; the batch stays --batch-size, as in the released "
        "code): the activations of one slice at a time. The same model up to float rounding, except that "
        "BatchNorm in train mode normalises each slice on its own (refused for such a model when it "
        "fine-tunes).", group="runtime", ge=1, le=MAX_BATCH,
        card={1: "Whole batches (no gradient accumulation).",
              ...: "Each batch run in {value} slices whose gradients add up to the batch's "
                   "(`--gradient-accumulation-steps {value}`; the same model up to float rounding)."})
    gradient_checkpointing: bool = option(
        False, "Recompute activations in the backward pass instead of keeping them, through the model library's "
        "own gradient checkpointing (transformers' activation_checkpointing_enable, timm's set_grad_checkpointing), "
        "in fine-tuning and alignment alike: less memory for more compute. Refused for an architecture its library "
        "cannot checkpoint.", group="runtime",
        card={False: "Activations kept for the backward pass (no gradient checkpointing).",
              True: "Gradient checkpointing: activations recomputed in the backward pass (`--gradient-checkpointing`; "
                    "the same model up to float rounding)."})
    mixed_precision: Literal["no", "fp16", "bf16"] = option(
        "no", "accelerate mixed precision: bf16 autocast runs on CPUs and GPUs; fp16 needs a GPU.", group="runtime",
        card={"no": "Precision: full (no mixed precision).", "fp16": "Precision: fp16 mixed precision (accelerate).",
              "bf16": "Precision: bf16 mixed precision (accelerate)."})
    cpu: bool = option(False, "Force the CPU even when an accelerator is present.", group="runtime",
                       card_skip="a runtime choice that does not change the model")
    threads: int | None = option(None, "CPU threads torch uses for the merge (default: torch's own, one per core). "
                                 "1 is much faster when another CPU-bound job shares the cores.", group="runtime",
                                 card_skip="a runtime choice that does not change the model", ge=1,
                                 le=MAX_THREADS)

    # --- the model card
    license: str | None = option(None, "The merged model's license, stated in its card: a Hub license id "
                                 "(apache-2.0, mit, cc-by-4.0, ...), or 'other' with --license-name and "
                                 "--license-link. Default: the license every source's model card states, when they "
                                 "all state the same one; else none (with a warning).", group="card",
                                 card_skip="stated in the card's metadata and its License section")
    license_name: str | None = option(None, "With --license other: the license's name (the card's license_name), "
                                      "e.g. my-model-license.", group="card",
                                      card_skip="stated in the card's metadata and its License section")
    license_link: str | None = option(None, "With --license other: a link to the license's text (the card's "
                                      "license_link): a URL, or a file of the repo such as LICENSE.", group="card",
                                      card_skip="stated in the card's metadata and its License section")

    @field_validator("order")
    @classmethod
    def _order_form(cls, value: str) -> str:
        if value not in ("given", "reverse", "random"):
            try:
                [int(i) for i in value.split(",")]
            except ValueError:
                raise ValueError("use given, reverse, random or a comma list of 0-based indices") from None
        return value

    @field_validator("license")
    @classmethod
    def _hub_license(cls, value: str | None) -> str | None:
        return None if value is None else hub_license_id(value)

    @field_validator("license_name", "license_link")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value if value is None else value.strip()


#: options that go together: a layer setting the first replaces what earlier layers set of the others
#: (``--license mit`` over a saved merge's ``other`` drops that merge's license name and link)
TOGETHER = {"license": ("license_name", "license_link")}


def _check_license(options: MergeOptions, origin: dict[str, tuple[str, Any]]) -> None:
    """``license_name`` and ``license_link`` both with ``license='other'``, neither without it."""
    extra = ("license_name", "license_link")
    if options.license == "other":
        missing = [flag_name(n) for n in extra if getattr(options, n) is None]
        if missing:
            raise GraspError(f"option license='other'{_where(origin['license'][0])} needs {' and '.join(missing)} "
                             "too: the card must name a license the Hub's list lacks and link to its text")
        return
    for name in extra:
        if getattr(options, name) is not None:
            where, value = origin[name]
            current = f"; the license is {options.license!r}" if options.license else ""
            raise GraspError(f"option {name}={value!r}{_where(where)} applies only with license='other' (a "
                             f"license the Hub's list lacks){current}")


# --------------------------------------------------------------------------- resolving layers

@dataclass(frozen=True)
class Layer:
    """Option values from one place, and how to treat them.

    ``origin`` names the place in error messages ("recipe recipes/x.yaml"; empty
    for the caller's own arguments). ``text``: values are command-line text for
    pydantic to convert (``"0.5"`` -> 0.5); otherwise a text value for a number
    or a flag is refused (YAML reads ``5e-5`` as text). ``lenient``: a parameter of
    another method is ignored rather than refused (a recipe states the paper's
    τ whatever method runs on it).
    """

    values: Mapping[str, Any]
    origin: str = ""
    text: bool = False
    lenient: bool = False


def resolve(method: str, layers: Sequence[Layer], *, methods: Registry,
            complete: bool = True) -> tuple[MergeOptions, MethodParams]:
    """The shared options and ``method``'s parameters from ``layers`` (later layers win; ``None`` means unset).

    A name that is neither a shared option nor any method's parameter is an
    error, and so is a parameter of another method (outside lenient layers).
    Invalid values raise :class:`GraspError` naming the option, the value and
    the layer it came from. ``complete``: ``layers`` are all the merge has, so
    rules across options (``license='other'`` needs a name and a link) apply.
    ``methods``: the registry (``hf_grasp.methods.METHODS``), ``method`` among them.
    """
    params_cls = method_info(method, methods).params
    owners = _param_owners(methods)
    shared: dict[str, Any] = {}
    own: dict[str, Any] = {}
    origin: dict[str, tuple[str, Any]] = {}
    for layer in layers:
        for first, others in TOGETHER.items():
            if layer.values.get(first) is not None:
                for name in others:
                    if layer.values.get(name) is None:
                        shared.pop(name, None)
                        origin.pop(name, None)
        for name, value in layer.values.items():
            if name in MergeOptions.model_fields:
                target, model = shared, MergeOptions
            elif name in params_cls.model_fields:
                target, model = own, params_cls
            elif name in owners:
                if layer.lenient:
                    continue
                raise GraspError(f"option {name}{_where(layer.origin)} is a parameter of "
                                 f"{', '.join(owners[name])}, not of method {method!r}")
            else:
                raise GraspError(f"unknown option {name!r}{_where(layer.origin)}; {_known_hint()}")
            if value is None:
                continue
            if not layer.text:
                _refuse_wrong_kind(model, name, value, layer.origin)
            target[name], origin[name] = value, (layer.origin, value)
    options = _validated(MergeOptions, shared, origin)
    if complete:
        _check_license(options, origin)
    return options, _validated(params_cls, own, origin)


def parse_text(method: str, values: Mapping[str, str], origin: str = "the command line", *,
               methods: Registry) -> dict[str, Any]:
    """Command-line text converted to each option's type for ``method`` (``"0.5"`` -> 0.5), checked (each on
    its own: the rules across options wait for the other layers, a recipe's or a saved merge's)."""
    shared, own = resolve(method, [Layer(values, origin=origin, text=True)], methods=methods, complete=False)
    return {name: getattr(shared if name in MergeOptions.model_fields else own, name) for name in values}


def check_layer(layer: Layer, methods: Registry) -> dict[str, Any]:
    """Validate a layer on its own, whatever method of the registry ``methods`` will run (a recipe at load time):
    every name known, every value valid for every model that declares it. Returns the values as validated
    (``2`` -> ``"2"`` for a text option)."""
    models = [MergeOptions, *{info.params for info in methods.values()}]
    out: dict[str, Any] = {}
    for name, value in layer.values.items():
        declaring = [m for m in models if name in m.model_fields]
        if not declaring:
            raise GraspError(f"unknown option {name!r}{_where(layer.origin)}; {_known_hint()}")
        out[name] = value
        for model in declaring:
            if value is not None:
                if not layer.text:
                    _refuse_wrong_kind(model, name, value, layer.origin)
                out[name] = getattr(_validated(model, {name: value}, {name: (layer.origin, value)}), name)
    return out


def all_option_names(methods: Registry) -> list[str]:
    """Every shared option and every parameter of a method of the registry ``methods``."""
    return [*MergeOptions.model_fields, *_param_owners(methods)]


def method_info(name: str, methods: Registry) -> "MethodInfo":
    """The registry's method ``name``; :class:`GraspError` listing the names if unknown."""
    try:
        return methods[name]
    except KeyError:
        raise GraspError(f"unknown merge method {name!r}; registered: {', '.join(sorted(methods))}") from None


def _refuse_wrong_kind(model: type[_Options], name: str, value: Any, origin: str) -> None:
    """Typed values (YAML, Python) must be of the option's kind: pydantic's lax mode would take the text
    "5e-5" or the number 1 for a flag, which in a recipe are mistakes, not conversions."""
    annotation = model.model_fields[name].annotation
    kinds = _leaf_types(annotation)
    wrong = (isinstance(value, str) and str not in kinds) or (isinstance(value, bool) and bool not in kinds) \
        or (kinds == (bool,) and not isinstance(value, bool))
    if wrong:
        hint = " (YAML reads 5e-5 as text: write 5.0e-5)" if isinstance(value, str) and _is_number(value) else ""
        raise GraspError(f"option {name}={value!r}{_where(origin)} should be {_type_name(annotation)}{hint}")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _where(origin: str) -> str:
    return f" (from {origin})" if origin else ""


def _validated(model: type[_Options], values: dict[str, Any], origin: dict[str, tuple[str, Any]]) -> Any:
    try:
        return model.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else next(iter(values), "?")
        where, value = origin.get(name, ("", values.get(name)))
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise GraspError(f"option {name}={value!r}{_where(where)}: {msg[0].lower() + msg[1:]}") from None


def _param_owners(methods: Mapping[str, Any]) -> dict[str, list[str]]:
    """Parameter name -> the methods that take it."""
    owners: dict[str, list[str]] = {}
    for info in methods.values():
        for name in info.params.model_fields:
            owners.setdefault(name, []).append(info.name)
    return owners


def _known_hint() -> str:
    return "`hf-grasp merge --help` lists every option and method parameter"


# --------------------------------------------------------------------------- types, for help and checks


def _leaf_types(annotation: Any) -> tuple:
    """The concrete types an annotation admits (``float | None`` -> ``(float, NoneType)``; a Literal -> str)."""
    if typing.get_origin(annotation) is Literal:
        return tuple(type(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(annotation) for t in _leaf_types(a))
    return (annotation,)


def _type_name(annotation: Any) -> str:
    names = [t.__name__ for t in _leaf_types(annotation) if t is not type(None)]
    return " or ".join(dict.fromkeys(names))


def _choices(annotation: Any) -> tuple | None:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return None


# --------------------------------------------------------------------------- the command line


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_flag(group, name: str, annotation: Any, help_text: str) -> None:
    kwargs: dict[str, Any] = {"default": None, "dest": name, "help": help_text}
    if bool in _leaf_types(annotation):
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        # argparse passes the text through; pydantic converts and checks it, as it does YAML values
        kwargs["metavar"] = _type_name(annotation).upper().replace(" OR ", "|")
        choices = _choices(annotation)
        if choices:
            kwargs["choices"] = choices
            del kwargs["metavar"]
    group.add_argument(flag_name(name), **kwargs)


def add_option_arguments(parser: argparse.ArgumentParser, methods: Registry) -> None:
    """One flag per shared option (in its group) and per parameter of a method of ``methods`` (in a group
    naming its methods).

    Unset flags parse to None, so recipe values and defaults fill them. A
    parameter several methods take (``--scaling``) is one flag whose help gives
    each method's default.
    """
    groups: dict[str, argparse._ArgumentGroup] = {}

    def group(title: str):
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        return groups[title]

    for name, f in MergeOptions.model_fields.items():
        _add_flag(group(f"{f.json_schema_extra['group']} options"), name, f.annotation,
                  f"{f.description} (default: {f.default})")
    for name, owners in _param_owners(methods).items():
        fields = [(m, methods[m].params.model_fields[name]) for m in owners]
        defaults = {repr(f.default) for _, f in fields}
        default = (f"default: {fields[0][1].default}" if len(defaults) == 1
                   else "defaults: " + ", ".join(f"{m} {f.default}" for m, f in fields))
        title = f"parameters of --method {', '.join(owners)}"
        _add_flag(group(title), name, fields[0][1].annotation, f"{fields[0][1].description} ({default})")


def options_from_args(args: argparse.Namespace, methods: Registry) -> dict[str, Any]:
    """The options and method parameters (of ``methods``) the user actually set on the command line."""
    names = all_option_names(methods)
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def option_table_markdown(methods: Registry) -> str:
    """The option tables of docs/options.md (shared options, then the parameters of ``methods``), from the
    declarations."""
    rows = ["| option (Python / CLI) | default | meaning |", "|---|---|---|"]
    rows += [f"| `{n}` / `{flag_name(n)}` | `{f.default}` | {f.description} |"
             for n, f in MergeOptions.model_fields.items()]
    rows += ["", "| method parameter (Python / CLI) | method: default | meaning |", "|---|---|---|"]
    for name, owners in _param_owners(methods).items():
        fields = [(m, methods[m].params.model_fields[name]) for m in owners]
        defaults = ", ".join(f"{m}: `{f.default}`" for m, f in fields)
        rows.append(f"| `{name}` / `{flag_name(name)}` | {defaults} | {fields[0][1].description} |")
    return "\n".join(rows)
