"""Pre-flight on the Hub's safetensors headers, before any weights are downloaded.

A hub-compatible server on 127.0.0.1 answers what ``get_safetensors_metadata``
asks (HEAD and ranged GET on ``/{repo}/resolve/{revision}/{file}``) from
checkpoint directories the test builds, and records every request. It serves
nothing else of the Hub API, so a merge that gets past the header check would
fail to download: the tests pass only if the check alone decided.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pytest

from conftest import last_json, run_cli, run_python


@pytest.fixture
def hub(tmp_path):
    """Start the server; returns ``(serve, env, log)``: ``serve(repo_id, dir)`` publishes a checkpoint dir."""
    repos, log = {}, []

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self._answer(with_body=False)

        def do_GET(self):
            self._answer(with_body=True)

        def _answer(self, with_body: bool):
            log.append((self.command, urlparse(self.path).path, self.headers.get("range")))
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urlparse(self.path).path)
            path = repos[m[1]] / m[3] if m and m[1] in repos else None
            if path is None or not path.is_file():
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound" if m and m[1] in repos else "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            etag = hashlib.sha256(data).hexdigest()
            status = 200
            if self.headers.get("range"):
                start, end = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers["range"]).groups())
                data, status = data[start:end + 1], 206
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{etag}"')
            self.send_header("X-Repo-Commit", "0" * 40)
            self.end_headers()
            if with_body:
                self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "0"}
    yield (lambda repo_id, path: repos.__setitem__(repo_id, path)), env, log
    server.shutdown()


def _downloads(log):
    """Requests that fetched a whole repo file rather than a header range."""
    return [(m, p) for m, p, r in log if m == "GET" and "/resolve/" in p and r is None]


SAME_AS_LOCAL = """
import json, sys
from hf_grasp.sources import SourceRef, read_header, remote_header, resolve
as_text = lambda specs: {k: [list(shape), str(dtype)] for k, (shape, dtype) in specs.items()}
remote = remote_header(SourceRef.parse("org/good"))
print(json.dumps([remote is not None and as_text(remote) == as_text(read_header(resolve(sys.argv[1]))),
                  remote_header(SourceRef.parse("org/missing"))]))
"""


def test_remote_header_matches_the_local_one_without_downloading(hub, checkpoints):
    serve, env, log = hub
    good = checkpoints("resnet", 1)[0]
    serve("org/good", good)
    same, missing = last_json(run_python(SAME_AS_LOCAL, good, env=env))
    assert same and missing is None  # an unknown repo: no answer here, the download reports it
    assert any(p == "/org/good/resolve/main/model.safetensors" and r for _, p, r in log)
    assert not _downloads(log)


def test_mismatched_hub_source_is_refused_before_any_download(hub, checkpoints, tmp_path):
    serve, env, log = hub
    good = checkpoints("resnet", 1)[0]
    five = checkpoints("resnet", 1, seed0=50, num_labels=5)[0]
    serve("org/five-labels", five)
    out = tmp_path / "merged"
    proc = run_cli("merge", "--target", "digits-eras", "--sources", str(good), "org/five-labels",
                   "--output", str(out), "--initial-epochs", "0", "--finetune-epochs", "0", env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert "org/five-labels" in err and "classifier" in err and "--skip-mismatched-heads" in err
    assert any(p.startswith("/org/five-labels/") for _, p, _ in log)  # the check did ask the server
    assert not _downloads(log) and not out.exists()
    assert not list((tmp_path / "hf").glob("hub/models--org--five-labels/blobs/*"))
