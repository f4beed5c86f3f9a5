"""The Space's built-in sources: digits-eras (images) or tweet-eras (text) checkpoints, made once and kept.

:func:`ensure_sources` trains a shared base and one source per domain with
:func:`hf_grasp.apps.bench.make_sources.make_sources` (the code ``hf-grasp
make-sources`` runs), the first time a visitor asks for a benchmark's, under the
Space's home directory; later runs and later visitors reuse them. A source is
made for *every* domain, so whichever target domain a visitor picks, the sources
offered are the other five (a source of the target's own domain saw that
domain's rows, so it is never offered).

They are also published into the HF cache as ``demo/digits-eras-resnet-dK`` or
``demo/tweet-eras-bert-dK`` (what ``make-sources --org demo`` does), so the same
checkpoints can be typed as repo ids with ``HF_HUB_OFFLINE=1``. The page itself
passes their local paths: online, a repo id would be looked up on the Hub first,
where no such repo is.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..bench import digits_eras, tweet_eras
# the built-in benchmarks the page offers (each with its data module) are make-sources'
from ..bench.make_sources import BENCHMARKS, DEFAULT_ARCH, make_sources, repo_name

DIGITS, TWEETS = digits_eras.DIGITS_ERAS, tweet_eras.TWEET_ERAS
ORG = "demo"
SEED = 0

# one thread of this process makes a benchmark's at a time (a second visitor waits; a visitor of the other
# benchmark does not); the file lock covers two processes on one home
_made = {name: threading.Lock() for name in BENCHMARKS}
#: roots this process has published into the HF cache already
_published: set[Path] = set()


def sources_root(home: Path, benchmark: str = DIGITS) -> Path:
    """Where a benchmark's built-in sources live under the Space's home directory."""
    return Path(home) / f"sources-{DEFAULT_ARCH[benchmark]}-seed{SEED}"


def domain_order(benchmark: str = DIGITS) -> list[int]:
    """Every domain in merge order: the recipe's (both sides of its target, not nearest-first), then the rest."""
    module = BENCHMARKS[benchmark]
    return list(dict.fromkeys([*module.RECIPE["source_domains"], *range(module.NUM_DOMAINS)]))


def source_domains(target_domain: int, benchmark: str = DIGITS) -> list[int]:
    """The domains offered as sources for ``target_domain``, in :func:`domain_order`; never the target itself."""
    return [d for d in domain_order(benchmark) if d != target_domain]


def source_label(domain: int, benchmark: str = DIGITS) -> str:
    """How the page names domain (and source) ``dK``: its tag and its shift."""
    if benchmark == TWEETS:
        return f"d{domain} ({tweet_eras.domain_level(domain):.0%} of words in ROT13)"
    return f"d{domain} ({digits_eras.ANGLE_STEP * domain}°)"


def repo_id(domain: int, benchmark: str = DIGITS) -> str:
    """The repo id source ``dK`` has in the local HF cache."""
    return f"{ORG}/{repo_name(DEFAULT_ARCH[benchmark], f'd{domain}', benchmark)}"


def is_made(home: Path, benchmark: str = DIGITS) -> bool:
    """Whether the sources exist already (``make_sources`` renames its work into place only when all are done)."""
    return (sources_root(home, benchmark) / "base").is_dir()


def ensure_sources(home: Path, benchmark: str = DIGITS) -> Path:
    """Make ``benchmark``'s built-in sources under ``home`` unless they are there; returns their root.

    About a minute on 2 CPU cores, once per home directory and benchmark. Safe
    to call from several threads or processes at once: the others wait and then
    reuse.
    """
    from filelock import FileLock

    from ..bench.hub_cache import publish_to_cache

    root = sources_root(home, benchmark)
    root.parent.mkdir(parents=True, exist_ok=True)
    with _made[benchmark], FileLock(str(root) + ".lock"):
        if not is_made(home, benchmark):
            make_sources(root, benchmark=benchmark, target_domain=None, seed=SEED)
        if root not in _published:
            # once per process: content-addressed and idempotent, so a cache cleared since is filled again
            for d in range(BENCHMARKS[benchmark].NUM_DOMAINS):
                publish_to_cache(root / f"d{d}", repo_id(d, benchmark))
            _published.add(root)
    return root
