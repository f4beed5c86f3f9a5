"""The Space's built-in sources: digits-eras checkpoints, made once on first use and kept.

:func:`ensure_sources` trains a shared base and one source per domain with
:func:`hf_grasp.apps.bench.make_sources.make_sources` (the code ``hf-grasp
make-sources`` runs), the first time a visitor asks for them, under the Space's
home directory; later runs and later visitors reuse them. A source is made for
*every* domain, so whichever target domain a visitor picks, the sources offered
are the other five (a source of the target's own domain saw that domain's test
rows, so it is never offered).

They are also published into the HF cache as ``demo/digits-eras-resnet-dK``
(what ``make-sources --org demo`` does), so the same checkpoints can be typed as
repo ids with ``HF_HUB_OFFLINE=1``. The page itself passes their local paths:
online, a repo id would be looked up on the Hub first, where no such repo is.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..bench import digits_eras
from ..bench.make_sources import make_sources, repo_name

ARCH = "resnet"
ORG = "demo"
SEED = 0

# one process makes them at a time (a second visitor waits); the file lock covers two processes on one home
_made = threading.Lock()
#: roots this process has published into the HF cache already
_published: set[Path] = set()


def sources_root(home: Path) -> Path:
    """Where the built-in sources live under the Space's home directory."""
    return Path(home) / f"sources-{ARCH}-seed{SEED}"


def domain_order() -> list[int]:
    """Every domain in merge order: the recipe's (both sides of its target, not nearest-first), then the rest."""
    return list(dict.fromkeys([*digits_eras.RECIPE["source_domains"], *range(digits_eras.NUM_DOMAINS)]))


def source_domains(target_domain: int) -> list[int]:
    """The domains offered as sources for ``target_domain``, in :func:`domain_order`; never the target itself."""
    return [d for d in domain_order() if d != target_domain]


def source_label(domain: int) -> str:
    """How the page names source ``dK``: its tag and its rotation."""
    return f"d{domain} ({digits_eras.ANGLE_STEP * domain}°)"


def repo_id(domain: int) -> str:
    """The repo id source ``dK`` has in the local HF cache."""
    return f"{ORG}/{repo_name(ARCH, f'd{domain}')}"


def is_made(home: Path) -> bool:
    """Whether the sources exist already (``make_sources`` renames its work into place only when all are done)."""
    return (sources_root(home) / "base").is_dir()


def ensure_sources(home: Path) -> Path:
    """Make the built-in sources under ``home`` unless they are there; returns their root.

    30-60 s on 2 CPU cores, once per home directory. Safe to call from
    several threads or processes at once: the others wait and then reuse.
    """
    from filelock import FileLock

    from ..bench.hub_cache import publish_to_cache

    root = sources_root(home)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _made, FileLock(str(root) + ".lock"):
        if not is_made(home):
            make_sources(root, arch=ARCH, target_domain=None, seed=SEED)
        if root not in _published:
            # once per process: content-addressed and idempotent, so a cache cleared since is filled again
            for d in range(digits_eras.NUM_DOMAINS):
                publish_to_cache(root / f"d{d}", repo_id(d))
            _published.add(root)
    return root
