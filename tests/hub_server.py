"""A hub-compatible HTTP server on 127.0.0.1 for the tests: the read side and the write side.

Read: ``GET /api/models/{id}/revision/{rev}``, ``GET /api/models/{id}/tree/{rev}``,
``HEAD|GET /{id}/resolve/{rev}/{file}`` (ranged too), from one directory per
(repo, revision).

Write, as huggingface_hub's ``create_repo`` and ``create_commit`` call it with
``HF_HUB_DISABLE_XET=1``: ``POST /api/repos/create``, ``POST /api/validate-yaml``,
``POST /api/models/{id}/branch/{branch}``, ``POST /api/models/{id}/preupload/{rev}``,
the LFS batch ``POST /{id}.git/info/lfs/objects/batch`` and the ``PUT`` it points
to, and ``POST /api/models/{id}/commit/{rev}`` (ndjson). A commit becomes a new
directory, the new head of its revision, so the read side then serves it by repo id.

``/api/validate-yaml`` (what ``RepoCard.validate`` and ``create_commit`` call for a
README.md) checks a card's metadata as the Hub does for licenses
(:func:`card_errors`): a refusal is a 400 with the Hub's messages, as text for
``validate`` and as ``{"errors": [{"message"}]}`` for ``create_commit``; both raise
them as a ``ValueError``.

Every request is recorded: :attr:`HubServer.log` as ``(method, path, range)``
and :attr:`HubServer.requests` with headers and body.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import pytest
import yaml
from huggingface_hub.repocard import REGEX_YAML_BLOCK

from hf_grasp.plan.licenses import HUB_LICENSES

#: file suffixes the server asks to receive through LFS, as the Hub's default .gitattributes does
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".png", ".jpg")


def commit_sha(repo_id: str, revision: str) -> str:
    """The commit id the server gives a directory published with :meth:`HubServer.serve`."""
    return hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()


class HubServer:
    """The server's state; :meth:`start` runs it on a free port of 127.0.0.1 in a daemon thread."""

    def __init__(self, root: Path):
        self.root = Path(root)  # where commits and LFS uploads are kept
        self.repos: dict[str, dict[str, tuple[str, Path]]] = {}  # repo -> revision or sha -> (sha, directory)
        self.created: dict[str, dict] = {}  # repo -> the create_repo request body
        self.log: list[tuple[str, str, str | None]] = []
        self.requests: list[dict] = []  # {"method", "path", "query", "headers", "body"}
        self.lfs: dict[str, bytes] = {}  # sha256 -> uploaded content
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None

    # -- set-up ----------------------------------------------------------------------------------------
    def serve(self, repo_id: str, path: Path, revision: str = "main") -> str:
        """Publish the directory ``path`` as ``revision`` of ``repo_id``; returns its commit id."""
        sha = commit_sha(repo_id, revision)
        self.repos.setdefault(repo_id, {})[revision] = self.repos[repo_id][sha] = (sha, Path(path))
        return sha

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def env(self, hf_home: Path) -> dict[str, str]:
        """The environment of a process that talks to this server (Xet off: uploads go through LFS)."""
        return {"HF_ENDPOINT": self.endpoint, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "0",
                "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}

    def start(self) -> "HubServer":
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    # -- what the tests read ---------------------------------------------------------------------------
    def commits(self) -> list[dict]:
        """The commit requests received: ``{"repo", "revision", "header", "files": {path: bytes}}``."""
        out = []
        for r in self.requests:
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", r["path"])
            if r["method"] == "POST" and m:
                lines = [json.loads(line) for line in r["body"].splitlines() if line.strip()]
                out.append({"repo": m[1], "revision": unquote(m[2]), "header": lines[0]["value"],
                            "files": {v["path"]: self._content(k, v) for k, v in
                                      ((x["key"], x["value"]) for x in lines[1:])}})
        return out

    def received_bodies(self) -> list[bytes]:
        """Every request body and every file the server was sent (LFS uploads included)."""
        return [r["body"] for r in self.requests] + list(self.lfs.values())

    def _content(self, key: str, value: dict) -> bytes:
        return base64.b64decode(value["content"]) if key == "file" else self.lfs[value["oid"]]

    # -- write side ------------------------------------------------------------------------------------
    def create_repo(self, body: dict) -> tuple[int, dict]:
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = {"url": f"{self.endpoint}/{repo_id}"}
        with self._lock:
            if repo_id in self.repos:
                return 409, {"error": "You already created this model repo", **url}
            self.repos[repo_id] = {}
            self.created[repo_id] = body
        return 200, url

    def create_branch(self, repo_id: str, branch: str) -> tuple[int, dict]:
        with self._lock:
            revs = self.repos.get(repo_id)
            if revs is None:
                return 404, {"error": "Repository not found"}
            if branch in revs:
                return 409, {"error": "Reference already exists"}
            revs[branch] = revs.get("main") or self._new_commit(repo_id, None, {})
        return 200, {}

    def commit(self, repo_id: str, revision: str, lines: list[dict], create_pr: bool) -> tuple[int, dict]:
        files = {v["path"]: self._content(k, v) for k, v in ((x["key"], x["value"]) for x in lines[1:])}
        with self._lock:
            revs = self.repos.get(repo_id)
            if revs is None:
                return 404, {"error": "Repository not found"}
            parent = revs.get(revision)
            if parent is None and revision != "main":
                return 404, {"error": f"Invalid rev id: {revision}"}
            sha, path = self._new_commit(repo_id, parent, files)
            url = {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha}
            if create_pr:
                number = sum(1 for r in revs if r.startswith("refs/pr/")) + 1
                revs[f"refs/pr/{number}"] = (sha, path)
                return 200, {**url, "pullRequestUrl": f"{self.endpoint}/{repo_id}/discussions/{number}"}
            revs[revision] = (sha, path)
        return 200, url

    def _new_commit(self, repo_id: str, parent: tuple[str, Path] | None, files: dict[str, bytes]):
        """A new directory: the parent's files, then ``files`` over them."""
        sha = hashlib.sha1(f"{repo_id}#{next(self._counter)}".encode()).hexdigest()
        path = self.root / sha
        if parent is not None:
            shutil.copytree(parent[1], path)
        path.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        self.repos[repo_id][sha] = (sha, path)
        return sha, path


def card_errors(content: str) -> list[str]:
    """What the Hub's validator refuses in a card's license fields, in its words (the YAML block found as
    ``RepoCard`` finds it): a ``license`` off its list, and ``license: other`` without the ``license_name``
    and ``license_link`` its docs ask for (checked strictly here)."""
    match = REGEX_YAML_BLOCK.search(content)
    try:
        data = (yaml.safe_load(match.group(2)) if match else None) or {}
    except yaml.YAMLError as e:
        return [f"Invalid YAML: {str(e).splitlines()[0]}"]
    if not isinstance(data, dict):
        return ["Invalid YAML: the metadata block should be an object"]
    licenses = data.get("license")
    errors = []
    if any(lic not in HUB_LICENSES for lic in (licenses if isinstance(licenses, list) else [licenses])
           if lic is not None):  # a dataset card may list several
        errors.append(f'"license" must be one of [{", ".join(HUB_LICENSES)}]')
    if licenses == "other":
        errors += [f'"{key}" is required when "license" is "other"' for key in ("license_name", "license_link")
                   if not data.get(key)]
    return errors


def preupload_answer(files: list[dict]) -> dict:
    """Which files go through LFS (by suffix or size, as the Hub's .gitattributes decides)."""
    return {"files": [{"path": f["path"], "shouldIgnore": False, "oid": None,
                       "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) or f["size"] > 10 * 2**20
                       else "regular"} for f in files]}


def _handler(hub: HubServer):
    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self._record(b"")
            self._read_side(with_body=False)

        def do_GET(self):
            self._record(b"")
            self._read_side(with_body=True)

        def do_POST(self):
            self._write_side(self._record(self._body()))

        def do_PUT(self):
            body = self._record(self._body())
            m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", urlparse(self.path).path)
            if not m or hashlib.sha256(body).hexdigest() != m[1]:
                return self._json(400, {"error": "content does not match its oid"})
            hub.lfs[m[1]] = body
            return self._send(200)

        # -- plumbing ----------------------------------------------------------------------------------
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _record(self, body: bytes) -> bytes:
            url = urlparse(self.path)
            hub.log.append((self.command, url.path, self.headers.get("range")))
            hub.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                 "headers": dict(self.headers.items()), "body": body})
            return body

        def _send(self, status: int, data: bytes = b"", with_body: bool = True, **headers):
            self.send_response(status)
            for k, v in {"Content-Length": str(len(data)), **headers}.items():
                self.send_header(k.replace("_", "-"), v)
            self.end_headers()
            if with_body:
                self.wfile.write(data)

        def _json(self, status: int, body) -> None:
            self._send(status, json.dumps(body).encode(), Content_Type="application/json")

        def log_message(self, *args):
            pass

        # -- write side --------------------------------------------------------------------------------
        def _write_side(self, body: bytes):
            url = urlparse(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            if path == "/api/repos/create":
                return self._json(*hub.create_repo(json.loads(body)))
            if path == "/api/validate-yaml":
                errors = card_errors(json.loads(body)["content"])
                if errors and "text/plain" in self.headers.get("Accept", ""):  # RepoCard.validate raises the text
                    return self._send(400, "\n".join(f"- {e}" for e in errors).encode(), Content_Type="text/plain")
                # create_commit and upload_folder read {"errors": [{"message"}], "warnings": [...]}
                return self._json(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/branch/(.+)", path):
                return self._json(*hub.create_branch(m[1], m[2]))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/(.+)", path):
                return self._json(200, preupload_answer(json.loads(body)["files"]))
            if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
                objects = [{"oid": o["oid"], "size": o["size"],
                            "actions": {"upload": {"href": f"{hub.endpoint}/lfs-upload/{o['oid']}"}}}
                           for o in json.loads(body)["objects"] if o["oid"] not in hub.lfs]
                return self._json(200, {"transfer": "basic", "objects": objects})
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/(.+)", path):
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                return self._json(*hub.commit(m[1], m[2], lines, create_pr=query.get("create_pr") == ["1"]))
            return self._json(404, {"error": f"no such endpoint: POST {path}"})

        # -- read side ---------------------------------------------------------------------------------
        def _read_side(self, with_body: bool):
            path = unquote(urlparse(self.path).path)
            api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+(?:/pr/\d+)?)", path)
            resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            repo_id, rev = (api or resolve or [None] * 4)[1], (api[3] if api else resolve[2] if resolve else None)
            if repo_id not in hub.repos:
                return self._send(404, with_body=with_body, X_Error_Code="RepoNotFound")
            if rev not in hub.repos[repo_id]:
                return self._send(404, with_body=with_body, X_Error_Code="RevisionNotFound")
            commit, root = hub.repos[repo_id][rev]
            files = sorted(f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file())
            if api and api[2] == "revision":
                return self._json(200, {"id": repo_id, "sha": commit, "siblings": [{"rfilename": f} for f in files]})
            if api:
                return self._json(200, [{"type": "file", "path": f, "size": (root / f).stat().st_size,
                                         "oid": hashlib.sha1((root / f).read_bytes()).hexdigest()} for f in files])
            f = root / resolve[3]
            if not f.is_file():
                return self._send(404, with_body=with_body, X_Error_Code="EntryNotFound")
            data = f.read_bytes()
            headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X_Repo_Commit": commit}
            if self.headers.get("range"):
                start, end = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers["range"]).groups())
                return self._send(206, data[start:end + 1], with_body, **headers)
            return self._send(200, data, with_body, **headers)

    return Handler


@pytest.fixture
def hub_server(tmp_path):
    """A running :class:`HubServer` with its state under ``tmp_path / "hub-store"``."""
    server = HubServer(tmp_path / "hub-store").start()
    yield server
    server.stop()
