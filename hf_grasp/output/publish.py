"""Publishing a saved merge: every file of its folder to a Hub model repo, in one commit.

``hf-grasp merge --push-to-hub`` and ``MergeResult.push_to_hub`` / ``save_pretrained(push_to_hub=True)`` all send
the folder a save wrote through :func:`push_folder`, so the Hub holds exactly the local files.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError
from huggingface_hub.utils import filter_repo_objects
from huggingface_hub.utils import httpx  # the HTTP library huggingface_hub itself uses

from ..runtime.errors import GraspError, first_line

__all__ = ["push_folder"]


def push_folder(folder: str | Path, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                create_pr: bool = False, commit_message: str | None = None, token: str | bool | None = None,
                allow_patterns: list[str] | str | None = None, ignore_patterns: list[str] | str | None = None,
                delete_patterns: list[str] | str | None = None) -> str:
    """Upload every file of a saved merge ``folder`` to the Hub model repo ``repo_id`` in one commit.

    The repo is created if missing (``private`` then applies); a ``revision``
    branch too. One ``create_commit`` rather than ``upload_folder``: with Xet,
    ``upload_folder`` may split a folder over several commits, and weights
    without their card or report must never be a revision of the repo.
    ``allow_patterns`` / ``ignore_patterns`` choose the files sent, and
    ``delete_patterns`` the remote files deleted in that same commit (never
    ``.gitattributes``, nor a file being sent), as ``upload_folder`` reads them.
    Returns the commit's URL, or the pull request's with ``create_pr``. A
    failure is a :class:`GraspError` naming the repo, never the token.
    """
    folder = Path(folder)
    api = HfApi(token=token)
    files = [f.relative_to(folder).as_posix() for f in sorted(folder.rglob("*")) if f.is_file()]
    files = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
    if not files:
        raise GraspError(f"pushing to Hub repo {repo_id}: no file of {folder} matches allow_patterns "
                         f"{allow_patterns!r} / ignore_patterns {ignore_patterns!r}; nothing was committed")
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision and revision != "main":  # a new branch must exist before a commit to it
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        deletions = _deletions(api, repo_id, revision, delete_patterns, keep=set(files))
        info = api.create_commit(repo_id, deletions + operations, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message or f"Upload merged model ({len(operations)} files) "
                                                                  "with hf-grasp")
    except (HfHubHTTPError, OSError, ValueError, httpx.HTTPError) as e:
        # httpx: a refused or dropped connection surfaces as the HTTP library's own error, unwrapped
        raise GraspError(f"pushing to Hub repo {repo_id} failed ({_redact(first_line(e), token)}); nothing was "
                         "committed") from None
    return info.pr_url or info.commit_url


def _deletions(api: HfApi, repo_id: str, revision: str | None, delete_patterns: list[str] | str | None,
               keep: set[str]) -> list[CommitOperationDelete]:
    """The remote files ``delete_patterns`` match at ``revision``, as ``upload_folder`` picks them: never
    ``.gitattributes`` (the repo needs it), nor a file the commit sends anew."""
    if delete_patterns is None:
        return []  # no listing: a push without deletions asks the Hub nothing more
    try:
        remote = api.list_repo_files(repo_id, revision=revision)
    except RevisionNotFoundError:  # a repo just created, without a first commit: nothing to delete
        return []
    return [CommitOperationDelete(path_in_repo=name)
            for name in filter_repo_objects(remote, allow_patterns=delete_patterns)
            if name != ".gitattributes" and name not in keep]


def _redact(text: str, token: str | bool | None) -> str:
    """``text`` without the token in it: an error message is printed, the token must never be."""
    return text.replace(token, "***") if isinstance(token, str) and token else text
