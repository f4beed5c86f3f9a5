"""Labels matched by name: a source's classes against the target's, and its head rows put in the target's order.

Two checkpoints fine-tuned on the same classes often number them differently
(``id2label`` ``{0: "cat", 1: "dog"}`` in one, ``{0: "dog", 1: "cat"}`` in the
other). Merged position by position, row *i* of one head would be averaged with
(or replaced by) a row that scores another class. So every source's label names
(transformers' ``id2label``, timm's ``label_names``) are compared with the
target's, from the configs alone, before any weight is read:

* the same names in the same order: used as they are (``as the target``);
* the same names in another order: its head rows are permuted into the target's
  order as the source streams into a model (``permuted``), so every method sees
  a source that predicts the target's classes at the target's indices;
* no names to compare (none, or only transformers' generic ``LABEL_i``, on
  either side): taken position by position (``positional``);
* other names: one error line naming them, or with ``--skip-mismatched-heads``
  its head is not read (``left out``), like a head of another size.

The core (names from a config, the comparison, the permutation, applying it to a
tensor) is pure; :func:`head_tensors` and :func:`match_sources` read configs and
build an empty model on the meta device.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from ..runtime.errors import SourceError, flag

#: what :attr:`LabelMatch.order` says, also the report's ``label_order`` of each source
AS_TARGET, PERMUTED, POSITIONAL, LEFT_OUT = "as the target", "permuted", "positional", "left out"

# transformers names the classes of a config that names none LABEL_0, LABEL_1, ...: not names to match
_GENERIC = re.compile(r"LABEL_(\d+)")
#: label names quoted in an error line before "and N more"
_SHOWN = 5


@dataclass(frozen=True)
class LabelMatch:
    """How one source's labels line up with the target's.

    ``rows[i]`` is the source's head row for the target's class ``i`` (only when
    ``permuted``); ``heads`` names the tensors whose leading dimension is the
    label count (the classifier weight rows and bias entries): those permuted,
    or those not read when ``left out``.
    """

    order: str
    rows: tuple[int, ...] | None = None
    heads: frozenset[str] = frozenset()

    def apply(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (the source's ``name``) in the target's class order: head rows permuted, else as is."""
        if self.rows is None or name not in self.heads:
            return tensor
        return permute_rows(tensor, self.rows)

    @property
    def left_out(self) -> list[str]:
        """The head tensors not to read from this source (its labels are not the target's)."""
        return sorted(self.heads) if self.order == LEFT_OUT else []


# --- pure functions ---------------------------------------------------------------


def config_label_names(config: dict[str, Any]) -> list[str] | None:
    """The class names a parsed ``config.json`` gives, by index; None when it gives none worth matching.

    transformers' ``id2label``; timm's ``label_names`` (a list, or an index ->
    name object; top level as ``save_for_hf`` writes it, or in
    ``pretrained_cfg``). Generic names (``LABEL_0``, ``LABEL_1``, ... as
    transformers makes up when a config names none), or indices that are not
    exactly 0..n-1, give None: such a head can only be taken by position.
    """
    timm_cfg = config.get("pretrained_cfg") if isinstance(config.get("pretrained_cfg"), dict) else {}
    raw = config.get("id2label") or config.get("label_names") or timm_cfg.get("label_names")
    if isinstance(raw, (list, tuple)):
        raw = dict(enumerate(raw))
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        by_index = {int(i): n for i, n in raw.items()}
    except (TypeError, ValueError):  # keys that are not indices: nothing to line up
        return None
    if sorted(by_index) != list(range(len(by_index))):
        return None
    names = [str(by_index[i]) for i in range(len(by_index))]
    return None if is_generic(names) else names


def is_generic(names: Sequence[str]) -> bool:
    """Whether ``names`` are transformers' placeholders ``LABEL_0`` .. ``LABEL_{n-1}``, in order."""
    return all((m := _GENERIC.fullmatch(n)) is not None and int(m.group(1)) == i for i, n in enumerate(names))


def difference(names: Sequence[str], target: Sequence[str]) -> str:
    """What tells ``names`` from ``target`` as sets: ``missing 'seven', extra 'siete'`` (a few of each named)."""
    missing = [n for n in target if n not in set(names)]
    extra = [n for n in names if n not in set(target)]
    twice = list(dict.fromkeys(n for n in names if names.count(n) > 1))
    parts = [f"{what} {_quoted(found)}" for what, found in (("missing", missing), ("extra", extra),
                                                             ("named more than once", twice)) if found]
    return ", ".join(parts)


def _quoted(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def permutation(names: Sequence[str], target: Sequence[str]) -> tuple[int, ...]:
    """For each of the target's classes, the index ``names`` gives it: ``rows[i] = names.index(target[i])``.

    ``names`` must hold the target's names, each once (:func:`difference` is empty).
    """
    index = {n: i for i, n in enumerate(names)}
    if len(index) != len(names) or sorted(index) != sorted(target) or len(set(target)) != len(target):
        raise ValueError(f"not the same labels in another order: {difference(names, target)}")
    return tuple(index[n] for n in target)


def permute_rows(tensor: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
    """``tensor`` with its leading dimension reordered: row ``i`` of the result is row ``rows[i]``.

    A new tensor: the one read from a checkpoint (memory-mapped) is never written.
    """
    if tensor.dim() == 0 or tensor.shape[0] != len(rows):
        raise ValueError(f"a tensor of shape {list(tensor.shape)} has no {len(rows)} rows to reorder")
    return tensor.index_select(0, torch.as_tensor(rows, dtype=torch.long, device=tensor.device))


def match_labels(source: str, names: Sequence[str] | None, target: Sequence[str] | None, *,
                 skip_mismatched_heads: bool = False) -> LabelMatch:
    """Compare source ``source``'s label ``names`` with the ``target``'s (both by index; None: not named).

    Raises :class:`SourceError` (one line naming the labels that differ) for a
    source with as many labels as the target but other names, unless
    ``skip_mismatched_heads`` (then its head is ``left out``). A source with
    another label count is left to the head's shape check (pre-flight refuses it
    or leaves its head out). ``heads`` is filled in later (:func:`match_sources`).
    """
    if names is None or target is None or is_generic(target):
        return LabelMatch(POSITIONAL)
    names, target = list(names), list(target)
    if names == target:
        return LabelMatch(AS_TARGET)
    if len(names) != len(target):  # a head of another size: pre-flight's shape check speaks for it
        return LabelMatch(POSITIONAL)
    differs = difference(names, target)
    if not differs:
        return LabelMatch(PERMUTED, rows=permutation(names, target))
    if skip_mismatched_heads:
        return LabelMatch(LEFT_OUT)
    raise SourceError(f"source {source!r}: its labels differ from the target's: {differs} (labels are matched by "
                      f"name; pass {flag('skip_mismatched_heads')} to leave its head out and keep the target's)")


def after_preflight(match: LabelMatch | None, skipped: Iterable[str]) -> tuple[LabelMatch | None, list[str]]:
    """A source's match and head tensors not to read, once pre-flight has named the heads it ``skipped``
    (of another size): a head left out for its names joins them, and a skipped head is ``left out`` whatever
    the names said."""
    skipped = list(skipped)
    if match is not None and match.order == LEFT_OUT:
        return match, sorted({*skipped, *match.left_out})
    if skipped:
        return LabelMatch(LEFT_OUT, heads=frozenset(skipped)), skipped
    return match, skipped


def relabelled_config(config: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``config`` (a saved model's ``config.json``) naming its classes ``names``, by index.

    transformers' ``id2label`` / ``label2id`` where the config has them (or it
    is a transformers config), timm's ``label_names`` where it has them (or it is
    a timm config); a ``label_names`` inside ``pretrained_cfg`` too.
    """
    out = copy.deepcopy(config)
    timm = "architecture" in out
    if "id2label" in out or not timm:
        out["id2label"] = {str(i): n for i, n in enumerate(names)}
        out["label2id"] = {n: i for i, n in enumerate(names)}
    if "label_names" in out or timm:
        out["label_names"] = list(names)
    if isinstance(out.get("pretrained_cfg"), dict) and "label_names" in out["pretrained_cfg"]:
        out["pretrained_cfg"]["label_names"] = list(names)
    return out


# --- reading configs and building ------------------------------------------------


def relabel_saved(model_dir: Path, names: Sequence[str] | None) -> None:
    """Name the classes of the model saved in ``model_dir`` (its ``config.json``) ``names`` (None: leave it).

    The merged model's head is in the target's class order whatever its lead
    source's order was, so it carries the target's names.
    """
    if not names:
        return
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps(relabelled_config(config, names), indent=2) + "\n", encoding="utf-8")


def relabel_model(model: torch.nn.Module, names: Sequence[str] | None) -> None:
    """Name a transformers ``model``'s classes ``names`` in memory (``config.id2label``); others unchanged."""
    config = getattr(model, "config", None)
    if names and config is not None and hasattr(config, "id2label"):
        config.id2label = dict(enumerate(names))
        config.label2id = {n: i for i, n in enumerate(names)}


def _with_label_count(config: dict[str, Any], n: int) -> dict[str, Any]:
    """``config`` with ``n`` classes, set wherever its library reads the count (timm's ``num_classes``,
    also in ``model_args`` / ``pretrained_cfg``; transformers' ``id2label``)."""
    out = copy.deepcopy(config)
    for key in ("label_names", "label2id", "num_labels"):
        out.pop(key, None)
    if "architecture" in out:
        out["num_classes"] = n
        for inner in ("model_args", "pretrained_cfg"):
            if isinstance(out.get(inner), dict):
                out[inner].pop("label_names", None)
                if "num_classes" in out[inner]:
                    out[inner]["num_classes"] = n
    else:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
    return out


def head_tensors(family: Any, model_dir: Path, num_labels: int, *, trust_remote_code: bool = False) -> frozenset[str]:
    """The tensors of ``model_dir``'s architecture whose leading dimension is its label count (the head).

    Found as pre-flight finds a head of another size: the architecture is built
    (on the meta device, no memory) once as it is and once with one more label,
    and the tensors whose leading dimension moved are the head. A rule on
    shapes alone would take any layer that happens to have ``num_labels``
    channels for a head. :class:`SourceError` when there is none, or one whose
    other dimensions also depend on the label count (its rows could not be
    reordered).
    """
    from .families import read_config
    from .sources import expected_specs

    config = read_config(model_dir)
    with tempfile.TemporaryDirectory(prefix="hf-grasp-labels-") as tmp:
        for code in Path(model_dir).glob("*.py"):  # custom code the config names (--trust-remote-code)
            shutil.copyfile(code, Path(tmp) / code.name)
        (Path(tmp) / "config.json").write_text(json.dumps(_with_label_count(config, num_labels + 1)),
                                               encoding="utf-8")
        with torch.device("meta"):
            specs = expected_specs(family.build(model_dir, trust_remote_code=trust_remote_code))
            wider = expected_specs(family.build(Path(tmp), trust_remote_code=trust_remote_code))
    heads = {name for name, (shape, _) in specs.items() if wider.get(name, (shape,))[0] != shape}
    odd = [n for n in heads if not specs[n][0] or specs[n][0][0] != num_labels
           or wider[n][0][0] != num_labels + 1 or wider[n][0][1:] != specs[n][0][1:]]
    if not heads or odd:
        why = f"tensor {odd[0]!r} depends on the label count otherwise" if odd else "no tensor depends on it"
        raise SourceError(f"{model_dir}: cannot tell the rows of its architecture's classifier head for {num_labels} "
                          f"labels ({why}), so a source's labels cannot be put in the target's order")
    return frozenset(heads)


def match_config(source: str, config: dict[str, Any] | None, target: Sequence[str] | None, *,
                 skip_mismatched_heads: bool = False) -> LabelMatch:
    """:func:`match_labels` for a source's parsed ``config.json`` (None: not to be had, taken by position)."""
    names = config_label_names(config) if config is not None else None
    return match_labels(source, names, target, skip_mismatched_heads=skip_mismatched_heads)


def match_sources(sources: Iterable[Any], target: Sequence[str] | None, *, model_dir: Path, num_labels: int,
                  skip_mismatched_heads: bool = False, trust_remote_code: bool = False) -> None:
    """Set ``labels`` on each resolved source: how its labels (its ``config.json``) line up with ``target``'s.

    Raises for a source whose labels differ (see :func:`match_labels`). The
    head tensors, found on the architecture of ``model_dir`` (the lead
    checkpoint; :func:`head_tensors`), are looked for only when a source needs
    its head permuted or left out.
    """
    from .families import family_for, read_config

    sources = list(sources)
    matches = [match_config(s.name, read_config(s.path), target, skip_mismatched_heads=skip_mismatched_heads)
               for s in sources]
    heads: frozenset[str] = frozenset()
    if any(m.order in (PERMUTED, LEFT_OUT) for m in matches):
        family = family_for(read_config(model_dir), source=str(model_dir))
        heads = head_tensors(family, model_dir, num_labels, trust_remote_code=trust_remote_code)
    for s, m in zip(sources, matches):
        s.labels = LabelMatch(m.order, m.rows, heads) if m.order in (PERMUTED, LEFT_OUT) else m
