"""What the built-in datasets share: splits made from a plan of rows, and one copy per seed kept on disk."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # `datasets` is imported where it is used: `--help` texts read the modules that import this one
    import datasets
    import numpy as np

#: one row of a plan: its index in the corpus, its shift (an angle, a drift level) and its domain
Row = tuple[int, Any, int]


def dataset_from_plan(plan: dict[str, list[Row]], features: "datasets.Features", columns: Callable[[list[Row]], dict],
                      *, description: str, citation: str, license: str) -> "datasets.DatasetDict":
    """A DatasetDict with one split per entry of ``plan``: the columns ``columns(rows)`` gives, and ``domain``."""
    import datasets

    splits = {}
    for split, rows in plan.items():
        info = datasets.DatasetInfo(description=description, citation=citation, license=license, features=features)
        splits[split] = datasets.Dataset.from_dict({**columns(rows), "domain": [d for _, _, d in rows]}, info=info,
                                                   split=split)
    return datasets.DatasetDict(splits)


def cache_path(name: str, version: str, seed: int) -> Path:
    """Where the built dataset ``name`` (``version``) of ``seed`` is kept: under ``HF_DATASETS_CACHE``."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "hf_grasp" / f"{name}-{version}-seed{seed}"


def load_cached(name: str, version: str, seed: int, build: Callable[[int], "datasets.DatasetDict"]
                ) -> "datasets.DatasetDict":
    """``build(seed)``, made once and kept with ``save_to_disk``; later calls ``load_from_disk`` the kept copy.

    The build goes to a temporary directory beside the cache entry and is renamed into place
    (:func:`~hf_grasp.runtime.workspace.staged`), so concurrent processes never see a half-written dataset.
    """
    import datasets

    from ...runtime.workspace import staged

    final = cache_path(name, version, seed)
    marker = final / datasets.config.DATASETDICT_JSON_FILENAME
    if not marker.is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        # A copy another process puts in place meanwhile is kept (and used); an entry already there without its
        # marker is broken and replaced.
        with staged(final, replace=final.exists()) as tmp:
            # Its per-split progress bars are noise for a few-second build: mute them briefly.
            quiet = datasets.are_progress_bars_disabled()
            datasets.disable_progress_bars()
            try:
                build(seed).save_to_disk(str(tmp))
            finally:
                if not quiet:
                    datasets.enable_progress_bars()
    return datasets.load_from_disk(str(final))


def plan_by_class(y: "np.ndarray", seed: int, *, num_domains: int, pretrain: int, per_domain: int, train: int,
                  validation: int, pool_high: float, shift_of: Callable[[int], float],
                  shortage: Callable[[int, int, int], str]) -> dict[str, list[Row]]:
    """Which corpus row goes to which split, domain and shift, decided from the labels ``y`` and ``seed`` alone.

    Per class (stratified, disjoint, one seeded permutation of the class's rows): ``pretrain`` rows for the pool,
    each at its own shift drawn uniformly from [0, ``pool_high``] (domain -1); then ``per_domain`` rows for each
    domain k at shift ``shift_of(k)``, the first ``train`` of them for train, the next ``validation`` for
    validation, the rest for test. ``shortage(class, have, need)`` is the message when a class has too few rows.
    Returns split -> ``(row, shift, domain)``, each split shuffled (domains kept in order).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    plan: dict[str, list[Row]] = {"pretrain": [], "train": [], "validation": [], "test": []}
    domains: dict[str, list[list[Row]]] = {s: [[] for _ in range(num_domains)] for s in ("train", "validation", "test")}
    needed = pretrain + num_domains * per_domain
    for c in range(int(y.max()) + 1 if len(y) else 0):
        rows = np.flatnonzero(y == c)
        if len(rows) < needed:
            raise RuntimeError(shortage(c, len(rows), needed))
        rows = rng.permutation(rows)
        pool, rest = rows[:pretrain], rows[pretrain:needed]
        shifts = rng.uniform(0.0, pool_high, size=len(pool))
        plan["pretrain"] += [(int(r), float(s), -1) for r, s in zip(pool, shifts)]
        for k in range(num_domains):
            chunk, shift = rest[k * per_domain:(k + 1) * per_domain], shift_of(k)
            domains["train"][k] += [(int(r), shift, k) for r in chunk[:train]]
            domains["validation"][k] += [(int(r), shift, k) for r in chunk[train:train + validation]]
            domains["test"][k] += [(int(r), shift, k) for r in chunk[train + validation:]]
    # rows grouped by class above: shuffled within each split (and each domain) so no consumer sees sorted data
    plan["pretrain"] = [plan["pretrain"][i] for i in rng.permutation(len(plan["pretrain"]))]
    for split, per in domains.items():
        for rows in per:
            plan[split] += [rows[i] for i in rng.permutation(len(rows))]
    return plan
