"""Source references: parse, resolve through huggingface_hub, pre-flight, stream.

Data flows one way here: a reference string becomes a :class:`ResolvedSource`
(a directory of files in the HF cache or on disk, with the commit it came
from), whose safetensors headers are checked against the target architecture
before anything runs, and whose tensors are later copied one at a time into a
model that already exists (the "probe"), so no second model is ever built.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Sequence

import torch
from huggingface_hub import HfApi, constants, get_safetensors_metadata, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    NotASafetensorsRepoError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    SafetensorsParsingError,
)
from huggingface_hub.file_download import REGEX_SHA256
from huggingface_hub.utils import get_session, httpx, sha  # httpx: the HTTP library huggingface_hub uses
from safetensors import safe_open
from torch import Tensor, nn

from ..runtime.errors import NonFiniteSourceError, ShapeMismatchError, SourceError, flag
from ..runtime.progress import log
from .families.base import SAME_NAMES, Read, TensorNaming
from .references import SourceRef
from ..plan.licenses import License, card_license

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
PICKLE_PATTERNS = ("*.bin", "*.pth", "*.pt", "*.ckpt", "*.pkl")
# what a checkpoint needs besides weights: configs and preprocessing files
META_PATTERNS = ["*.json", "*.md", "*.txt"]

# safetensors dtype names as they appear in headers -> torch dtypes
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


@dataclass
class ResolvedSource:
    """A source whose files are on local disk, ready to be read.

    A *deferred* source (``--evict-sources``) has only its config files on
    disk; :meth:`present` fetches its weights for the duration of a block.
    """

    ref: SourceRef
    path: Path
    weight_files: list[Path]
    commit: str | None = None
    hashes: dict[str, str] = field(default_factory=dict)
    remote_specs: dict | None = None   # tensor specs read on the Hub, when they were
    deferred: bool = False
    token: str | bool | None = field(default=None, repr=False, compare=False)  # for a deferred fetch
    license: License | None = None     # as its own model card (README.md) states it
    # how its labels line up with the target's (hf_grasp.inputs.labels.LabelMatch): set at resolution, it permutes
    # the head rows of a source holding the target's labels in another order as its tensors are read
    labels: Any = field(default=None, repr=False, compare=False)

    @contextlib.contextmanager
    def present(self):
        """Within the block the weights are on disk: a deferred source's are downloaded
        (pinned to the resolved commit) into a scratch directory, hashed, and deleted on leaving."""
        if not self.deferred:
            yield self
            return
        from ..runtime.workspace import run_dir  # the run's scratch: a killed run's download is swept by the next

        scratch = Path(tempfile.mkdtemp(prefix="hf-grasp-fetch-", dir=run_dir()))
        try:
            ref = SourceRef(self.ref.text, repo_id=self.ref.repo_id, revision=self.commit or self.ref.revision)
            _snapshot(ref, ["*.safetensors", SAFE_INDEX], self.token, local_dir=scratch)
            self.weight_files = _weight_files(scratch, self.name)
            if not self.weight_files:
                raise SourceError(f"source {self.name!r}: no *.safetensors at commit {self.commit}")
            hash_files(self)
            yield self
        finally:
            self.weight_files = []
            shutil.rmtree(scratch, ignore_errors=True)

    @property
    def name(self) -> str:
        return self.ref.text

    def describe(self) -> dict:
        """The JSON record the report keeps for this source."""
        return {
            "ref": self.ref.text,
            "repo_id": self.ref.repo_id,
            "revision": self.ref.revision,
            "commit": self.commit,
            "path": str(self.path),
            "files": dict(self.hashes),
            "license": asdict(self.license) if self.license else None,
            "label_order": self.labels.order if self.labels is not None else None,
        }


# --- the network ----------------------------------------------------------------
#
# huggingface_hub's shared HTTP client has no timeout of its own, and most of its calls pass none (repo_info,
# list_repo_tree, get_safetensors_metadata...): an endpoint that accepts the connection and never answers held a
# merge forever. Every request made through it is given huggingface_hub's own download timeout
# (HF_HUB_DOWNLOAD_TIMEOUT, 10 s unless set: the bound its downloads already use) where its caller gave none, for
# the connection and for each wait on the answer, so a hung endpoint costs one such wait, then one error line.
# huggingface_hub already retries only reads (GET and HEAD, which are safe to repeat) and leaves writes alone.

#: URLs whose endpoint did not answer within its timeout, in the order met (read by :func:`_no_timeout_since`)
_TIMED_OUT: list[str] = []


def hub_timeout() -> float:
    """Seconds one Hub request may wait on the network, to connect or for the next bytes of an answer."""
    return float(constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _on_trace(url: str):
    def trace(event: str, info: dict) -> None:  # httpcore's "trace" request extension: each step of the exchange
        if event.endswith(".failed") and "Timeout" in type(info.get("exception")).__name__:
            _TIMED_OUT.append(url)
    return trace


def _bound(request: httpx.Request) -> None:
    """Request hook: :func:`hub_timeout` wherever the caller set no timeout; a timeout met is noted.

    A request to an endpoint that has already timed out fails at once, as huggingface_hub's offline mode fails
    it: not retried (its backoff retried a timeout five times, for each of the many requests of a download).
    """
    if _endpoint(str(request.url)) in {_endpoint(u) for u in _TIMED_OUT}:
        raise OfflineModeIsEnabled(f"{_hung(str(request.url))}: not asked again")
    limits = request.extensions.get("timeout") or {}
    request.extensions["timeout"] = {k: hub_timeout() if limits.get(k) is None else limits[k]
                                     for k in ("connect", "read", "write", "pool")}
    request.extensions.setdefault("trace", _on_trace(str(request.url)))


@contextlib.contextmanager
def bounded_hub_requests():
    """Within the block (or the decorated function), every request of huggingface_hub's shared client has a
    timeout (see :func:`hub_timeout`). Scoped: the hook is taken off again, so huggingface_hub behaves as the
    caller set it up everywhere else (library code changes no process-wide state)."""
    session = get_session()
    hooks = session.event_hooks
    if _bound in hooks["request"]:  # nested
        yield
        return
    session.event_hooks = {**hooks, "request": [*hooks["request"], _bound]}
    try:
        yield
    finally:
        current = session.event_hooks
        session.event_hooks = {**current, "request": [h for h in current["request"] if h is not _bound]}


def _endpoint(url: str) -> str:
    """The scheme, host and port of ``url``: the endpoint a message names."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.netloc.decode()}"


def _hung(url: str) -> str:
    return (f"the Hub at {_endpoint(url)} did not answer within {hub_timeout():g} s (HF_HUB_DOWNLOAD_TIMEOUT; "
            f"HF_ENDPOINT is {constants.ENDPOINT})")


def _no_timeout_since(mark: int, ref: SourceRef) -> None:
    """Refuse ``ref`` when a request made since ``_TIMED_OUT[mark:]`` timed out.

    huggingface_hub answers a timeout by falling back on the cache silently; but an endpoint that hangs is set up
    wrong (a proxy, HF_ENDPOINT) and would cost the same wait on every further call: said once, at once.
    """
    if len(_TIMED_OUT) > mark:
        cached = "; its weights are in the HF cache: set HF_HUB_OFFLINE=1 to use the cached copy" \
            if _weights_cached(ref) else " and it is not in the HF cache: check the network connection and HF_ENDPOINT"
        raise SourceError(f"source {ref.text!r}: {_hung(_TIMED_OUT[-1])}{cached}")


@bounded_hub_requests()
def _snapshot(ref: SourceRef, patterns: list[str], token: str | bool | None, local_dir: Path | None = None) -> Path:
    mark = len(_TIMED_OUT)
    try:
        root = Path(snapshot_download(ref.repo_id, revision=ref.revision, allow_patterns=patterns, token=token,
                                      local_dir=local_dir))
        _no_timeout_since(mark, ref)
        return root
    except HFValidationError as e:
        raise SourceError(f"source {ref.text!r}: not a valid Hub repo id or revision ({e})") from e
    except GatedRepoError as e:
        raise SourceError(f"source {ref.text!r}: the repo is gated and this account has no access to it: request "
                          "access on its Hub page, then log in (hf auth login) or set HF_TOKEN") from e
    except RepositoryNotFoundError as e:
        raise SourceError(f"source {ref.text!r}: {_not_a_model_repo(ref.repo_id, token)}") from e
    except RevisionNotFoundError as e:
        raise SourceError(f"source {ref.text!r}: revision {ref.revision!r} not found") from e
    except (LocalEntryNotFoundError, EntryNotFoundError, OSError, httpx.HTTPError) as e:
        # httpx: a connection dropped mid-download surfaces as the HTTP library's own error, unwrapped
        _no_timeout_since(mark, ref)
        raise SourceError(f"source {ref.text!r}: {_why_not_fetched(ref, e)}") from e


def _not_a_model_repo(repo_id: str, token: str | bool | None) -> str:
    """What to check when the Hub has no model repo ``repo_id``: it answers the same for a private repo, a
    typo and a dataset's id (sources must be models; a dataset goes to --target)."""
    try:
        dataset = HfApi().repo_exists(repo_id, repo_type="dataset", token=token)
    except (OSError, httpx.HTTPError):  # no answer: say what holds in every case
        dataset = False
    if dataset:
        return (f"not found as a model repo: {repo_id} is a dataset repo on the Hub, and sources must be models "
                "(check the id; a dataset is what --target takes)")
    return ("not found as a model repo on the Hub: check the repo id's spelling, and for a private repo log in "
            "(hf auth login) or set HF_TOKEN")


def _why_not_fetched(ref: SourceRef, error: BaseException) -> str:
    """Why a Hub source could not be brought to disk (offline, no network, anything else) and what to do."""
    if constants.is_offline_mode():
        return ("HF_HUB_OFFLINE is set and it is not (completely) in the HF cache: unset HF_HUB_OFFLINE so it can "
                f"be downloaded ({type(error).__name__})")
    network = _network_error(error)
    if network is None:
        detail = str(error).strip().splitlines()[:1]
        return f"cannot be fetched ({': '.join([type(error).__name__, *detail])})"
    unreachable = _hung(_TIMED_OUT[-1]) if isinstance(network, httpx.TimeoutException) and _TIMED_OUT \
        else f"the Hub at {constants.ENDPOINT} cannot be reached ({type(network).__name__})"
    if _weights_cached(ref):
        return f"{unreachable}; its weights are in the HF cache: set HF_HUB_OFFLINE=1 to use the cached copy"
    return f"{unreachable} and it is not in the HF cache: check the network connection and HF_ENDPOINT"


def _network_error(error: BaseException | None) -> BaseException | None:
    """The connection failure behind ``error`` (huggingface_hub wraps it in its own errors), if any."""
    for _ in range(8):  # the chain is short; bounded in case it loops
        if error is None:
            return None
        if isinstance(error, (httpx.TransportError, ConnectionError)) and not isinstance(error, OfflineModeIsEnabled):
            return error
        error = error.__cause__ or error.__context__
    return None


def _weights_cached(ref: SourceRef) -> bool:
    """Whether the HF cache holds safetensors weights of ``ref``'s revision (what HF_HUB_OFFLINE=1 would use)."""
    return any(isinstance(try_to_load_from_cache(ref.repo_id, name, revision=ref.revision), str)
               for name in (SAFE_SINGLE, SAFE_INDEX))


def _weight_files(root: Path, source: str, *, allow_pickle: bool = False) -> list[Path]:
    """The weight files of the checkpoint in ``root``: the shards its safetensors index names, else
    ``model.safetensors``, else every top-level ``*.safetensors``; each checked to lie inside the source."""
    index = root / SAFE_INDEX
    if index.is_file():
        _confined(root, source, [index])
        files = list(dict.fromkeys(_shard_path(root, index, source, shard, allow_pickle=allow_pickle)
                                   for shard in _index_shards(index, source)))
        missing = [f.relative_to(root).as_posix() for f in files if not _is_file(f)]
        if missing:
            raise SourceError(f"source {source!r}: shard(s) {', '.join(map(repr, missing))} listed in {index} are "
                              "missing: the checkpoint is incomplete, fetch it again")
        return _confined(root, source, files)
    if (root / SAFE_SINGLE).is_file():
        return _confined(root, source, [root / SAFE_SINGLE])
    return _confined(root, source, sorted(f for f in root.glob("*.safetensors") if _is_file(f)))


def _index_shards(index: Path, source: str) -> list:
    """The ``weight_map`` values of a safetensors index, whatever they are (:func:`_shard_path` checks them)."""
    try:
        content = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # unreadable, not UTF-8, not JSON, nested beyond reason
        raise SourceError(f"source {source!r}: {index} is not valid JSON ({type(e).__name__}): fix or delete it, "
                          "or fetch the checkpoint again") from e
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise SourceError(f"source {source!r}: {index} has no 'weight_map' object naming the shards: fix or delete "
                          "it, or fetch the checkpoint again")
    return list(weight_map.values())


def _shard_path(root: Path, index: Path, source: str, shard: object, *, allow_pickle: bool) -> Path:
    """The file an index entry names, once the name is known to be a weight file inside ``root``.

    Refused: anything but a relative path without ``..`` (an index must not reach
    outside its checkpoint), and a pickle shard without ``allow_pickle`` (the
    index must not be a way round the pickle refusal).
    """
    named = f"source {source!r}: {index} names shard {shard!r}"
    if not isinstance(shard, str) or not shard.strip() or "\0" in shard:
        raise SourceError(f"{named}, which is not a file name: fix the index or fetch the checkpoint again")
    rel = PurePosixPath(shard)
    if rel.is_absolute() or ".." in rel.parts:
        raise SourceError(f"{named}, which is not inside the source directory: refusing to read it; a checkpoint's "
                          "shards sit in its own directory, so fix the index or fetch the checkpoint again")
    if rel.suffix == ".safetensors":
        return root / shard
    if not any(rel.match(p) for p in PICKLE_PATTERNS):
        raise SourceError(f"{named}, which is not a weight file (.safetensors): fix the index or fetch the "
                          "checkpoint again")
    if not allow_pickle:
        raise SourceError(f"{named}, a pickle file; pickle files can run code when loaded, so it is refused — "
                          f"convert the checkpoint to safetensors or pass {flag('allow_pickle')}")
    return root / shard


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False too for names the OS cannot even look up (too long, undecodable)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _cache_repo_folder(root: Path) -> Path | None:
    """The HF cache repo folder (``.../models--org--name``, resolved) when ``root`` is one of its snapshots."""
    snapshots = root.resolve().parent
    if snapshots.name == "snapshots" and snapshots.parent.name.startswith("models--"):
        return snapshots.parent
    return None


def _confined(root: Path, source: str, files: list[Path]) -> list[Path]:
    """``files``, once each is known to resolve (links followed) inside the source.

    Inside means ``root`` itself, or for a snapshot of the HF cache its repo
    folder: a snapshot's files are links into that folder's ``blobs/``.
    """
    home = _cache_repo_folder(root) or root.resolve()
    for f in files:
        try:
            target = f.resolve()
        except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: a symlink loop
            raise SourceError(f"source {source!r}: {f} cannot be resolved ({e}): fix or remove it") from e
        if not target.is_relative_to(home):
            raise SourceError(f"source {source!r}: {f} links to {target}, outside {home}: refusing to read it; "
                              "put the file itself in the source directory instead of a link to it")
    return files


def resolve(ref: SourceRef | str | os.PathLike, *, allow_pickle: bool = False, token: str | bool | None = None,
            defer_weights: bool = False) -> ResolvedSource:
    """Bring a source's config and safetensors weights to local disk (through the HF cache).

    ``defer_weights``: for a Hub source whose safetensors headers can be read on
    the Hub, bring only its config files now; the weights come with
    :meth:`ResolvedSource.present`. Elsewhere (local, offline) it has no effect.

    Pickle weights are refused unless ``allow_pickle`` (unpickling can run code);
    with it, a pickle-only checkpoint is converted by loading it with
    ``weights_only=True`` only at streaming time.
    """
    ref = ref if isinstance(ref, SourceRef) else SourceRef.parse(str(ref))
    if defer_weights and ref.local_path is None and not constants.is_offline_mode():
        root = _snapshot(ref, META_PATTERNS, token)
        commit = root.name if root.parent.name == "snapshots" else None
        # headers of the very commit the configs came from, and later the weights
        specs = remote_header(SourceRef(ref.text, repo_id=ref.repo_id, revision=commit or ref.revision), token=token)
        if specs is not None:
            if not (root / "config.json").is_file():
                raise SourceError(f"source {ref.text!r}: no config.json in {root}")
            return ResolvedSource(ref=ref, path=root, weight_files=[], commit=commit, remote_specs=specs,
                                  deferred=True, token=token, license=card_license(root))
    if ref.local_path is not None:
        root = ref.local_path
        if not root.is_dir():
            raise SourceError(f"source {ref.text!r}: directory {root} does not exist")
        commit = None
    else:
        root = _snapshot(ref, META_PATTERNS + ["*.safetensors"], token)
        commit = root.name if root.parent.name == "snapshots" else None
    if not (root / "config.json").is_file():
        raise SourceError(f"source {ref.text!r}: no config.json in {root}")
    files = _weight_files(root, ref.text, allow_pickle=allow_pickle)
    if not files:
        pickles = [p for pat in PICKLE_PATTERNS for p in root.glob(pat)]
        if ref.local_path is None and not pickles and allow_pickle:
            root = _snapshot(ref, META_PATTERNS + list(PICKLE_PATTERNS), token)
            pickles = [p for pat in PICKLE_PATTERNS for p in root.glob(pat)]
        if not allow_pickle:
            what = "only pickle weights" if pickles or ref.local_path is None else "no weight files"
            raise SourceError(
                f"source {ref.text!r}: {what} (no *.safetensors); pickle files can run code when loaded, "
                f"so they are refused — convert the checkpoint to safetensors or pass {flag('allow_pickle')}"
            )
        if not pickles:
            raise SourceError(f"source {ref.text!r}: no *.safetensors or pickle weight files in {root}")
        files = _confined(root, ref.text, sorted(p for p in pickles if _is_file(p)))
    # the card came with the config (META_PATTERNS): its license is read now, from disk
    return ResolvedSource(ref=ref, path=root, weight_files=files, commit=commit, license=card_license(root))


def hash_files(source: ResolvedSource) -> dict[str, str]:
    """sha256 of every weight file read, recorded in the report.

    The same pass checks the files of the HF cache: a file whose bytes no
    longer have the sha256 the Hub gave it is refused before it is used.
    """
    for f in source.weight_files:
        try:
            with open(f, "rb") as fh:
                digest = sha.sha_fileobj(fh).hex()
        except OSError as e:
            raise SourceError(f"source {source.name!r}: cannot read {f} ({e.strerror or e})") from e
        _check_cached_blob(source, f, digest)
        source.hashes[f.name] = digest
    return source.hashes


def check_finite(source: ResolvedSource) -> None:
    """Refuse a NaN or inf in any of ``source``'s safetensors files, one tensor at a time (its headers checked
    first, by :func:`preflight`): every source is checked before the first training step, not when its turn to
    stream comes."""
    for file in source.weight_files:
        if file.suffix != ".safetensors":
            continue
        for key, tensor in read_tensors(file, safetensors_keys(file)):
            # a finite sum has no NaN or inf in it; only a sum that overflowed needs the full check
            if tensor.is_floating_point() and not (tensor.sum().isfinite() or tensor.isfinite().all()):
                raise NonFiniteSourceError.of(source.name, key, tensor)


def _check_cached_blob(source: ResolvedSource, file: Path, digest: str) -> None:
    """Refuse ``file`` of the HF cache when its sha256 is not ``digest``, the one the Hub gave it.

    An LFS file (every weight file on the Hub) is stored as ``blobs/<its sha256>``,
    so a link's target names the Hub's own hash. A plain file in a snapshot (a
    cache made where links cannot be, or a link replaced by a copy) names none:
    the Hub is asked for the file's hash at the snapshot's commit (one HEAD
    request), unless offline, which is said once. Other blobs are named by
    git's sha1 and local directories have no reference at all: nothing checked.
    """
    blob = file.resolve()
    repo = blob.parent.parent
    if blob.parent.name == "blobs" and repo.name.startswith("models--") and REGEX_SHA256.fullmatch(blob.name):
        expected = blob.name
    elif not file.is_symlink() and file.is_relative_to(source.path) and \
            (repo := _cache_repo_folder(source.path)) is not None:  # (a deferred source's weights are elsewhere)
        expected = _hub_sha256(source, file, repo)
    else:
        return
    if expected is None or expected == digest:
        return
    repo_id = repo.name.removeprefix("models--").replace("--", "/")  # the cache's folder naming, reversed
    raise SourceError(f"source {source.name!r}: cached file {file.name} is corrupt (its sha256 is {digest[:12]}..., "
                      f"the Hub's is {expected[:12]}...): delete the cache entry (hf cache rm model/{repo_id}, or "
                      f"rm -r {repo}) and download it again")


def _hub_sha256(source: ResolvedSource, file: Path, repo: Path) -> str | None:
    """The sha256 the Hub gives ``file`` (a plain file in a snapshot folder of cache ``repo``) at the snapshot's
    commit; None, said in one warning line, when it cannot be asked (offline, no answer) or holds none (not LFS)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, is_offline_mode

    why = "HF_HUB_OFFLINE is set"
    if not is_offline_mode():
        repo_id = repo.name.removeprefix("models--").replace("--", "/")
        url = hf_hub_url(repo_id, file.relative_to(source.path).as_posix(), revision=source.path.resolve().name)
        try:
            with bounded_hub_requests():
                etag = get_hf_file_metadata(url, token=source.token).etag
            if etag and REGEX_SHA256.fullmatch(etag):
                return etag
            why = "the Hub gave no sha256 for it"
        except (HfHubHTTPError, OSError, ValueError, httpx.HTTPError) as e:
            why = f"the Hub did not answer ({type(e).__name__})"
    log.warning("source %r: cached file %s is a plain copy, not a link to a blob named by its hash, so its bytes "
                "could not be checked (%s)", source.name, file.name, why)
    return None


# --- headers and pre-flight -------------------------------------------------


def read_header(source: ResolvedSource) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of every tensor in a source, from headers only."""
    specs = {}
    for f in source.weight_files:
        if f.suffix != ".safetensors":
            specs.update(_pickle_specs(source, f))
            continue
        try:
            with safe_open(f, framework="pt") as h:
                for k in h.keys():
                    sl = h.get_slice(k)
                    specs[k] = (tuple(sl.get_shape()), _DTYPES.get(sl.get_dtype(), sl.get_dtype()))
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise SourceError(f"source {source.name!r}: cannot read safetensors header of {f.name}: {e}") from e
    return specs


def _pickle_specs(source: ResolvedSource, path: Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes of a pickle weight file (``--allow-pickle``), which must hold a dict of tensors."""
    try:
        state = _load_pickle(path)
    except Exception as e:  # torch raises many types for a file that is not a weights-only pickle
        raise SourceError(f"source {source.name!r}: cannot load {path.name} as a weights-only pickle "
                          f"({type(e).__name__}): convert the checkpoint to safetensors") from e
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise SourceError(f"source {source.name!r}: {path.name} does not hold a state dict (name -> tensor): "
                          "convert the checkpoint to safetensors")
    return {k: (tuple(t.shape), t.dtype) for k, t in state.items()}


def preflight(
    source: ResolvedSource,
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
    *,
    num_labels: int,
    skip_mismatched_heads: bool = False,
    naming: TensorNaming | None = None,
) -> list[str]:
    """Check a source's tensors against the target architecture before any work.

    Returns the names of head tensors to skip (only with ``skip_mismatched_heads``);
    raises :class:`ShapeMismatchError` naming source, tensor, expected and found.
    A head mismatch is a tensor whose leading dimension is the target's label
    count in the architecture but something else in the source. ``naming``: how
    the checkpoint's names become ``expected``'s (see :func:`check_specs`).
    """
    found = source.remote_specs if source.deferred else read_header(source)
    return check_specs(source.name, found, expected, num_labels=num_labels,
                       skip_mismatched_heads=skip_mismatched_heads, naming=naming)


def remote_header(ref: SourceRef, *, token: str | bool | None = None
                  ) -> dict[str, tuple[tuple[int, ...], torch.dtype]] | None:
    """Names, shapes and dtypes of a Hub source's tensors, from its safetensors headers on the Hub.

    ``get_safetensors_metadata`` reads only the headers (HTTP range requests,
    nothing downloaded), so a merge can refuse a mismatched source before it
    fetches anyone's weights. ``None`` when there is nothing to ask or no
    answer (a local directory, offline mode, a repo without safetensors, an
    unreachable or refusing Hub): the same checks then run on the downloaded
    headers, and the download reports what is wrong with the repo.
    """
    if ref.local_path is not None or constants.is_offline_mode():
        return None
    mark = len(_TIMED_OUT)
    try:
        with bounded_hub_requests():
            meta = get_safetensors_metadata(ref.repo_id, revision=ref.revision, token=token)
    except SafetensorsParsingError as e:
        raise SourceError(f"source {ref.text!r}: cannot read its safetensors header on the Hub: {e}") from e
    except (NotASafetensorsRepoError, HfHubHTTPError, OSError, httpx.HTTPError):  # OSError: requests' errors too
        _no_timeout_since(mark, ref)  # a hung Hub is said at once, not waited on again by the download
        return None
    except (ValueError, TypeError, AttributeError):  # a malformed remote index: its download reports it
        return None
    return {name: (tuple(info.shape), _DTYPES.get(info.dtype, info.dtype))
            for file_meta in meta.files_metadata.values() for name, info in file_meta.tensors.items()}


def check_specs(
    source_name: str,
    found: dict[str, tuple[tuple[int, ...], torch.dtype]],
    expected: dict[str, tuple[tuple[int, ...], torch.dtype]],
    *,
    num_labels: int,
    skip_mismatched_heads: bool = False,
    naming: TensorNaming | None = None,
) -> list[str]:
    """:func:`preflight` on tensor specs already read (locally or from the Hub) for source ``source_name``.

    ``found`` names tensors as the checkpoint does, ``expected`` (and the head
    tensors returned) as the model does; ``naming`` (the family's) relates the
    two as the library's loader does, and every message names a tensor as the
    checkpoint does.
    """
    naming = naming or SAME_NAMES
    found, origin = _as_loaded(source_name, found, naming)
    missing = [k for k in expected if k not in found]
    if missing:
        raise ShapeMismatchError(
            f"source {source_name!r}: tensor {naming.checkpoint_name(missing[0])!r} of the target architecture is "
            "missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    extra = [k for k in found if k not in expected]
    if extra:
        raise ShapeMismatchError(
            f"source {source_name!r}: tensor {origin[extra[0]]!r} is not in the target architecture"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
        )
    skipped = []
    for model_name, (shape, dtype) in expected.items():
        fshape, fdtype = found[model_name]
        name = origin[model_name]  # as the checkpoint names it, for the messages
        if fshape != shape:
            is_head = bool(shape) and bool(fshape) and shape[0] == num_labels and fshape[0] != num_labels \
                and shape[1:] == fshape[1:]
            if is_head and skip_mismatched_heads:
                skipped.append(model_name)
                continue
            hint = (
                f"; it is a classifier head with {fshape[0]} outputs but the target has {num_labels} labels "
                f"(pass {flag('skip_mismatched_heads')} to keep the target's head)"
            ) if is_head else ""
            raise ShapeMismatchError(
                f"source {source_name!r}: tensor {name!r} expected shape {list(shape)}, found {list(fshape)}{hint}"
            )
        if not isinstance(fdtype, torch.dtype):  # a safetensors dtype torch has no counterpart for
            raise ShapeMismatchError(f"source {source_name!r}: tensor {name!r} has dtype {fdtype}, which torch "
                                     f"cannot load (expected {dtype})")
        if fdtype != dtype and not (fdtype.is_floating_point and dtype.is_floating_point):
            raise ShapeMismatchError(
                f"source {source_name!r}: tensor {name!r} expected dtype {dtype}, found {fdtype}"
            )
    return skipped


def _as_loaded(source: str, found: dict[str, tuple[tuple[int, ...], torch.dtype]], naming: TensorNaming
               ) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype]], dict[str, str]]:
    """``found`` (checkpoint names) as the model will hold it: model name -> (shape, dtype), and model name ->
    the checkpoint tensor it comes from (``key[i/n]`` for part i of n of a split one)."""
    specs, origin = {}, {}
    for read in naming.reads(found, source=source):
        shape, dtype = found[read.key]
        parts = [(shape, dtype)]
        if read.split is not None:  # the library's own conversion, run on a tensor without storage: its shapes
            meta = torch.empty(shape, dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32, device="meta")
            try:
                parts = [(tuple(t.shape), dtype) for t in read.split(meta)]
            except (RuntimeError, ValueError, IndexError) as e:
                raise ShapeMismatchError(f"source {source!r}: tensor {read.key!r} of shape {list(shape)} cannot be "
                                         f"converted as its library loads it ({e})") from e
        for i, (target, spec) in enumerate(zip(read.targets, parts)):
            specs[target] = spec
            origin[target] = read.key if len(read.targets) == 1 else f"{read.key}[{i + 1}/{len(read.targets)}]"
    return specs, origin


def expected_specs(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names, shapes and dtypes a checkpoint of ``model``'s architecture must hold."""
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}


# --- streaming ----------------------------------------------------------------


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    # Only reached with allow_pickle; weights_only still refuses arbitrary objects.
    return torch.load(path, map_location="cpu", weights_only=True)


def in_target_order(source: ResolvedSource, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Source ``source``'s tensor ``name`` as every method sees it: a head holding the target's labels in
    another order has its rows permuted into the target's (:mod:`hf_grasp.inputs.labels`); anything else as read."""
    return source.labels.apply(name, tensor) if source.labels is not None else tensor


def iter_tensors(source: ResolvedSource, skip: Iterable[str] = (),
                 naming: TensorNaming | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` one at a time, lazily, shard by shard, ``name`` as the model names it.

    ``naming`` (the family's) says how the checkpoint's tensors load into the
    model: renamed, or converted as read (one checkpoint tensor split in
    several); ``skip`` names model tensors not to yield.

    Each floating-point tensor is checked finite right after it is read, by
    its sum (one reduction over memory just touched, no temporary, no second
    read of the file): a NaN or inf raises
    :class:`~hf_grasp.runtime.errors.NonFiniteSourceError` naming the source and the
    tensor before it can reach a model. Integer tensors
    (``num_batches_tracked``) cannot hold either.
    """

    skip = set(skip)
    keys = {f: _file_keys(f) for f in source.weight_files}
    # renamed over the whole checkpoint at once, as the library's loader does (some renames depend on the others)
    reads = {r.key: r for r in (naming or SAME_NAMES).reads([k for ks in keys.values() for k in ks],
                                                             source=source.name)}
    for f in source.weight_files:
        wanted = [k for k in keys[f] if not skip.issuperset(reads[k].targets)]
        if f.suffix == ".safetensors":
            tensors = read_tensors(f, wanted)
        else:
            wanted = set(wanted)
            tensors = ((k, v) for k, v in _load_pickle(f).items() if k in wanted)
        for key, tensor in tensors:
            # A NaN or inf entry makes the sum non-finite; only then (or when finite entries overflow
            # it) is the exact, several times costlier isfinite pass paid.
            if tensor.is_floating_point() and not (tensor.sum().isfinite() or tensor.isfinite().all()):
                raise NonFiniteSourceError.of(source.name, key, tensor)
            for name, part in reads[key].convert(tensor):
                if name not in skip:
                    yield name, in_target_order(source, name, part)


def _file_keys(path: Path) -> list[str]:
    """The tensor names of one weight file: a safetensors header, or (``--allow-pickle``) the loaded pickle's."""
    return safetensors_keys(path) if path.suffix == ".safetensors" else list(_load_pickle(path))


def safetensors_keys(path: Path) -> list[str]:
    """The tensor names of a safetensors file (its header only)."""
    with safe_open(path, framework="pt", device="cpu") as h:
        return list(h.keys())


def read_tensor(path: Path, name: str) -> torch.Tensor:
    """One tensor of a safetensors file, whose pages stay mapped only while the tensor lives.

    safetensors memory-maps the file: a handle kept open over a whole file keeps
    every page read through it resident (one more checkpoint's size in RSS by the
    last tensor, K of them for a method reading K sources side by side). A handle
    per tensor costs a header parse and bounds that to the tensors alive.
    """
    with safe_open(path, framework="pt", device="cpu") as h:
        return h.get_tensor(name)


#: bytes read through one safetensors handle before it is closed (see :func:`read_tensors`)
MAPPED_BYTES = 16 << 20


def read_tensors(path: Path, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for ``names`` of one safetensors file, a new handle every :data:`MAPPED_BYTES`.

    The pages a handle has read stay mapped until it is closed and its tensors
    are gone (see :func:`read_tensor`): reopening the file every 16 MiB bounds
    them to that, for the price of a header parse per 16 MiB (a handle per
    tensor tripled the time to stream a ResNet-18).
    """
    i = 0
    while i < len(names):
        with safe_open(path, framework="pt", device="cpu") as h:
            read = 0
            while i < len(names) and read < MAPPED_BYTES:
                tensor = h.get_tensor(names[i])
                read += tensor.nbytes
                yield names[i], tensor
                del tensor
                i += 1


def stream_into(model: nn.Module, source: ResolvedSource, skip: Iterable[str] = (),
                naming: TensorNaming | None = None) -> None:
    """Copy a source's tensors into ``model`` in place, one tensor resident at a time.

    Parameters and buffers both come from the source: a source evaluated in
    eval mode must use its own BatchNorm statistics. A NaN or inf in the source
    raises (see :func:`iter_tensors`), leaving ``model`` partly overwritten.
    ``naming``: the model family's (:meth:`~hf_grasp.inputs.families.base.ModelFamily.naming`).
    """
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in iter_tensors(source, skip, naming):
            state[name].copy_(tensor)
            del tensor


def iter_across(
    sources: Sequence[ResolvedSource],
    names: Iterable[str],
    skips: Sequence[Iterable[str]] | None = None,
    *,
    dtype: torch.dtype | None = torch.float32,
    device: torch.device | str = "cpu",
    naming: TensorNaming | None = None,
) -> Iterator[tuple[str, list[Tensor | None]]]:
    """Yield ``(name, [tensor of source 0, tensor of source 1, ...])`` for each of ``names`` (model names;
    ``naming``, the family's, says which checkpoint tensor each is read from, and how it is converted).

    Each source's safetensors headers (shards included) are read once up front,
    and only the K tensors of the current name are ever mapped (see
    :func:`read_tensor`). An entry is ``None``
    where that source's ``skips`` list names the tensor (a mismatched head left
    out by pre-flight). Tensors are cast to ``dtype`` (None keeps the stored one).

    Raises :class:`SourceError` for a source whose weights are pickle files:
    they cannot be read one tensor at a time, and
    :class:`~hf_grasp.runtime.errors.NonFiniteSourceError` for a floating-point tensor
    holding NaN or inf (checked as read, before the cast).
    """

    naming = naming or SAME_NAMES
    skip_sets = [set(s) for s in skips] if skips is not None else [set() for _ in sources]
    where: list[dict[str, tuple[Path, Read]]] = []  # per source: model name -> the file and the read giving it
    for src in sources:
        files: dict[str, Path] = {}
        for f in src.weight_files:
            if f.suffix != ".safetensors":
                raise SourceError(
                    f"source {src.name!r}: {f.name} is a pickle file, but this method reads one tensor of "
                    "every source at a time, which needs safetensors — convert the checkpoint"
                )
            files.update(dict.fromkeys(safetensors_keys(f), f))
        where.append({target: (files[r.key], r) for r in naming.reads(files, source=src.name) for target in r.targets})
    for name in names:
        row: list[Tensor | None] = []
        for src, held, skip in zip(sources, where, skip_sets):
            if name in skip:
                row.append(None)
                continue
            if name not in held:
                raise SourceError(f"source {src.name!r}: tensor {naming.checkpoint_name(name)!r} is missing")
            path, read = held[name]
            t = read_tensor(path, read.key)
            if t.is_floating_point() and not (t.sum().isfinite() or t.isfinite().all()):  # as iter_tensors
                raise NonFiniteSourceError.of(src.name, read.key, t)
            t = in_target_order(src, name, dict(read.convert(t))[name])
            row.append(t.to(device=device, dtype=dtype) if dtype is not None else t.to(device))
        yield name, row
