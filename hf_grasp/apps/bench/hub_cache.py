"""Putting checkpoints where the Hub machinery finds them.

:func:`publish_to_cache` writes a folder into the local HF cache exactly as a
download would have left it (``blobs/``, ``snapshots/<commit>/``, ``refs/``),
so the repo resolves by id with ``HF_HUB_OFFLINE=1`` for transformers, timm and
huggingface_hub alike. huggingface_hub has no public call that adds local files
to its cache; this writes the layout its cache guide documents (each file a
blob named by a content hash, SHA-256 here; each snapshot entry a relative
symlink to its blob), with its public ``repo_folder_name`` for the folder's
name. Uploading to a real Hub goes through ``MergeResult.push_to_hub``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from huggingface_hub import constants
from huggingface_hub.file_download import repo_folder_name
from huggingface_hub.utils import sha

from ...runtime.workspace import staged, write_atomically


def publish_to_cache(folder: str | Path, repo_id: str, *, tags: tuple[str, ...] = (),
                     cache_dir: str | Path | None = None) -> str:
    """Add ``folder``'s files to the HF cache as a new commit of model repo ``repo_id``.

    ``refs/main`` and each name in ``tags`` point at the commit, which is a
    content hash of the files (stable for identical content). Returns the commit.
    """
    folder = Path(folder)
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digests = {}
    for f in files:
        with open(f, "rb") as fh:
            digests[f] = sha.sha_fileobj(fh).hex()
    commit = hashlib.sha1(
        "".join(f"{f.relative_to(folder).as_posix()}\0{d}\n" for f, d in digests.items()).encode()
    ).hexdigest()
    snapshot = storage / "snapshots" / commit
    for f, digest in digests.items():
        blob = storage / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            with staged(blob, file=True) as tmp:
                shutil.copyfile(f, tmp)
        dst = snapshot / f.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            # relative, as huggingface_hub makes them: the cache stays valid when moved
            os.symlink(os.path.relpath(blob, dst.parent), dst)
    for ref in ("main", *tags):
        write_atomically(storage / "refs" / ref, commit)
    return commit
