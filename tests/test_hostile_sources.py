"""Hostile or broken source files: each refused with one line naming the culprit and what to do.

Pickle shards smuggled in through a safetensors index, index entries and links
reaching outside the source, HF cache blobs whose bytes changed, no network,
repo ids that are not model repos, mixed architectures, a first source with the
wrong head; then fuzzing of safetensors headers and indexes, where anything but
a :class:`GraspError` (a traceback instead of an ``error:`` line) fails.
"""

from __future__ import annotations

import json
import shutil
import socket
import struct
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors.torch import load_file

from conftest import OFFLINE, last_json, merge_fails, run_python
from hf_grasp.apps.bench.hub_cache import publish_to_cache
from hf_grasp.runtime.errors import GraspError, SourceError
from hf_grasp.inputs.sources import SAFE_INDEX, hash_files, preflight, read_header, resolve


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _sharded(src: Path, dst: Path, shard: str) -> Path:
    """A copy of checkpoint ``src`` whose safetensors index sends every tensor to ``shard``."""
    d = _copy(src, dst)
    keys = load_file(str(d / "model.safetensors")).keys()
    (d / SAFE_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": dict.fromkeys(keys, shard)}))
    (d / "model.safetensors").rename(d / "moved.safetensors")
    return d


def _cached(src: Path, repo_id: str, hf_home: Path) -> Path:
    """``src`` published into the HF cache under ``hf_home`` as ``repo_id``; returns its snapshot directory."""
    commit = publish_to_cache(src, repo_id, cache_dir=hf_home / "hub")
    return hf_home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit


def _offline(tmp_path: Path, datasets_cache: Path) -> dict:
    """Environment of an offline CLI run on the HF cache in ``tmp_path / "hf"`` (the target data cached as usual)."""
    return {**OFFLINE, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(datasets_cache)}


def _online(endpoint: str, tmp_path: Path, datasets_cache: Path) -> dict:
    """Environment of a CLI run against the Hub at ``endpoint``, network allowed."""
    return {**_offline(tmp_path, datasets_cache), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1"}


# --- 1. pickle through an index ------------------------------------------------------------------------------


def test_index_naming_a_pickle_shard_is_refused_without_allow_pickle(tmp_path, checkpoints):
    good = checkpoints("resnet", 1)[0]
    bad = _sharded(good, tmp_path / "pickle-index", "pytorch_model.bin")
    torch.save(load_file(str(bad / "moved.safetensors")), bad / "pytorch_model.bin")
    line = merge_fails(tmp_path, [good, bad])
    assert "pickle-index" in line and SAFE_INDEX in line and "'pytorch_model.bin'" in line
    assert "--allow-pickle" in line
    # with --allow-pickle it is read (weights only) like any pickle checkpoint
    allowed = resolve(bad, allow_pickle=True)
    assert allowed.weight_files == [bad / "pytorch_model.bin"] and read_header(allowed) == read_header(resolve(good))


# --- 2. confinement --------------------------------------------------------------------------------------------


def test_index_reaching_outside_the_source_is_refused(tmp_path, checkpoints):
    good = checkpoints("resnet", 1)[0]
    _copy(good, tmp_path / "outside")
    bad = _sharded(good, tmp_path / "escaping", "../outside/model.safetensors")
    line = merge_fails(tmp_path, [good, bad])
    assert "escaping" in line and SAFE_INDEX in line and "'../outside/model.safetensors'" in line
    assert "not inside the source directory" in line


@pytest.mark.parametrize("shard", ["ABSOLUTE", "../../../../etc/passwd", "sub/../../outside/model.safetensors"])
def test_index_paths_must_stay_inside_the_source(tmp_path, checkpoints, shard):
    good = checkpoints("resnet", 1)[0]
    outside = _copy(good, tmp_path / "outside")
    shard = str(outside / "model.safetensors") if shard == "ABSOLUTE" else shard
    bad = _sharded(good, tmp_path / "src", shard)
    with pytest.raises(SourceError, match="not inside the source directory") as e:
        resolve(bad)
    assert str(bad) in str(e.value) and SAFE_INDEX in str(e.value) and repr(shard) in str(e.value)


def test_links_leaving_the_source_are_refused(tmp_path, checkpoints):
    good = checkpoints("resnet", 1)[0]
    outside = _copy(good, tmp_path / "outside")
    top = _copy(good, tmp_path / "top-link")
    (top / "model.safetensors").unlink()
    (top / "model.safetensors").symlink_to(outside / "model.safetensors")
    with pytest.raises(SourceError, match="links to .*, outside .*: refusing"):
        resolve(top)
    # a shard whose name is harmless but whose folder is a link out of the source
    linked = _sharded(good, tmp_path / "dir-link", "sub/model.safetensors")
    (linked / "sub").symlink_to(outside)
    with pytest.raises(SourceError, match="links to .*, outside .*: refusing"):
        resolve(linked)


def test_cache_snapshot_links_stay_in_their_repo_folder(tmp_path, checkpoints, datasets_cache):
    good = checkpoints("resnet", 1)[0]
    outside = _copy(good, tmp_path / "outside")
    snapshot = _cached(good, "demo/fine", tmp_path / "hf")
    assert (snapshot / "model.safetensors").is_symlink()  # into ../../blobs: the normal layout, accepted
    assert hash_files(resolve(snapshot))
    escaping = _cached(good, "demo/escaping", tmp_path / "hf")
    (escaping / "model.safetensors").unlink()
    (escaping / "model.safetensors").symlink_to(outside / "model.safetensors")
    line = merge_fails(tmp_path, [good, "demo/escaping"], env=_offline(tmp_path, datasets_cache))
    assert "'demo/escaping'" in line and "model.safetensors links to" in line and "models--demo--escaping" in line


# --- 3. cached blob integrity ----------------------------------------------------------------------------------


def test_a_plain_file_in_a_cache_snapshot_is_checked_against_the_hub(tmp_path, checkpoints, hub_server, monkeypatch,
                                                                     caplog):
    """Issue 24: a snapshot holding a plain copy instead of a link into ``blobs/`` (a cache made where links cannot
    be, or a link replaced) was merged unchecked; its hash is now asked of the Hub, and offline that is said."""
    from huggingface_hub import constants

    good = checkpoints("resnet", 1)[0]
    commit = hub_server.serve("demo/plain", good)
    snapshot = tmp_path / "hub" / "models--demo--plain" / "snapshots" / commit
    shutil.copytree(good, snapshot)  # plain files, as huggingface_hub leaves them where it cannot link
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.endpoint)  # as HF_ENDPOINT would set them at import
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub_server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    with caplog.at_level("WARNING", logger="hf_grasp"):
        assert hash_files(resolve(snapshot))  # the Hub's sha256 agrees: accepted, nothing said
    assert not caplog.records
    data = bytearray((snapshot / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # in the tensor data: the header still reads fine
    (snapshot / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"cached file model.safetensors is corrupt .*hf cache rm model/demo/plain"):
        hash_files(resolve(snapshot))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with caplog.at_level("WARNING", logger="hf_grasp"):
        hash_files(resolve(snapshot))  # nothing to compare with offline: said, in one line
    [warning] = [r.getMessage() for r in caplog.records]
    assert "model.safetensors is a plain copy" in warning and "HF_HUB_OFFLINE is set" in warning



def test_corrupt_cached_blob_is_refused_before_use(tmp_path, checkpoints, datasets_cache):
    good = checkpoints("resnet", 1)[0]
    snapshot = _cached(good, "demo/flipped", tmp_path / "hf")
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # in the tensor data: the header still reads fine
    blob.write_bytes(bytes(data))
    line = merge_fails(tmp_path, [good, "demo/flipped"], env=_offline(tmp_path, datasets_cache))
    assert "'demo/flipped'" in line and "corrupt" in line and "hf cache rm model/demo/flipped" in line
    # the same bytes in a plain directory: no reference hash, nothing to compare
    local = _copy(good, tmp_path / "local")
    (local / "model.safetensors").write_bytes(bytes(data))
    assert hash_files(resolve(local))["model.safetensors"] != blob.name


# --- 4. no network ---------------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_hub_is_one_line(tmp_path, checkpoints, datasets_cache):
    good = checkpoints("resnet", 1)[0]
    env = _online(f"http://127.0.0.1:{_closed_port()}", tmp_path, datasets_cache)
    line = merge_fails(tmp_path, [good, "org/absent"], env=env)
    assert "'org/absent'" in line and "cannot be reached" in line and "not in the HF cache" in line


UNREACHABLE_BUT_CACHED = """
import json, sys
from hf_grasp.inputs.sources import SourceRef, remote_header, resolve
print(json.dumps([remote_header(SourceRef.parse("demo/m0")), str(resolve("demo/m0").weight_files[0])]))
"""


def test_unreachable_hub_falls_back_to_the_cache(tmp_path, checkpoints, datasets_cache):
    good = checkpoints("resnet", 1)[0]
    snapshot = _cached(good, "demo/m0", tmp_path / "hf")
    env = _online(f"http://127.0.0.1:{_closed_port()}", tmp_path, datasets_cache)
    remote, weights = last_json(run_python(UNREACHABLE_BUT_CACHED, env=env))
    assert remote is None and weights == str(snapshot / "model.safetensors")


def test_failed_download_of_a_cached_source_suggests_offline_mode(tmp_path, checkpoints, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError
    from huggingface_hub.utils import httpx

    import hf_grasp.inputs.sources as sources

    def no_network(*args, **kwargs):
        try:
            raise httpx.ConnectError("connection refused")
        except httpx.ConnectError as e:
            raise LocalEntryNotFoundError("cannot find the requested files") from e

    _cached(checkpoints("resnet", 1)[0], "demo/m0", tmp_path / "hf")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "snapshot_download", no_network)
    with pytest.raises(SourceError, match="HF_HUB_OFFLINE=1") as e:
        resolve("demo/m0")
    assert "'demo/m0'" in str(e.value) and "ConnectError" in str(e.value)
    with pytest.raises(SourceError, match="not in the HF cache"):
        resolve("demo/other")


# --- 5. messages that say what to do ---------------------------------------------------------------------------


@pytest.fixture
def dataset_hub(tmp_path, datasets_cache):
    """A Hub holding one repo, the dataset ``org/digits``, answering model requests as the Hub does (404)."""

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self, body: bool = False):
            found = self.path.split("?")[0].startswith("/api/datasets/org/digits")
            data = json.dumps({"id": "org/digits", "sha": "0" * 40}).encode() if found else b""
            self.send_response(200 if found else 404)
            self.send_header("X-Error-Code", "" if found else "RepoNotFound")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self):
            self.do_HEAD(body=True)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield _online(f"http://127.0.0.1:{server.server_address[1]}", tmp_path, datasets_cache)
    server.shutdown()


def test_a_dataset_repo_id_is_not_a_model(tmp_path, checkpoints, dataset_hub):
    good = checkpoints("resnet", 1)[0]
    line = merge_fails(tmp_path, [good, "org/digits"], env=dataset_hub)
    assert "'org/digits'" in line and "not found as a model repo" in line and "dataset repo" in line


def test_unknown_repo_id_says_what_to_check(tmp_path, checkpoints, dataset_hub):
    good = checkpoints("resnet", 1)[0]
    line = merge_fails(tmp_path, [good, "org/typo"], env=dataset_hub)
    assert "'org/typo'" in line and "not found as a model repo" in line and "spelling" in line


def test_mixed_architectures_name_both(tmp_path, checkpoints):
    resnet, mobilevit = checkpoints("resnet", 1)[0], checkpoints("mobilevit", 1)[0]
    line = merge_fails(tmp_path, [resnet, mobilevit])
    assert "mobilevit (MobileViTForImageClassification)" in line and "resnet (ResNetForImageClassification)" in line
    assert "tensor" not in line


def test_mixed_architectures_on_the_hub_name_both_before_any_weights(tmp_path, checkpoints, hub, datasets_cache):
    serve, env, log = hub
    resnet, mobilevit = checkpoints("resnet", 1)[0], checkpoints("mobilevit", 1)[0]
    serve("org/mvit", mobilevit)
    line = merge_fails(tmp_path, [resnet, "org/mvit"], env={**env, "HF_DATASETS_CACHE": str(datasets_cache)})
    assert "'org/mvit'" in line and "mobilevit (MobileViT" in line and "resnet (ResNet" in line and "tensor" not in line
    assert not [p for m, p, r in log if m == "GET" and p.endswith(".safetensors") and r is None]


def test_first_source_head_mismatch_says_what_to_do(tmp_path, checkpoints):
    from hf_grasp import GraspMerger

    good = checkpoints("resnet", 1)[0]
    five = checkpoints("resnet", 1, seed0=50, num_labels=5)[0]
    line = merge_fails(tmp_path, [five, good])
    assert "resnet-s50" in line and "5 outputs" in line and "--order" in line and "--init" in line
    # both ways out it names do work
    kw = dict(target="digits-eras", initial_epochs=0, finetune_epochs=0, eval_sources=False,
              skip_mismatched_heads=True)
    for extra in ({"order": "1,0"}, {"init": str(good)}):
        result = GraspMerger.from_pretrained([str(five), str(good)], **kw, **extra).merge()
        assert result.report.sources


# --- 6. fuzzing ------------------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
FUZZ = settings(max_examples=300, deadline=None, database=None)  # a few seconds each


def _only_grasp_errors(directory: Path, expected: dict, *, allow_pickle: bool = False) -> None:
    """Resolution and pre-flight of ``directory``: they may refuse it, but only with a :class:`GraspError`."""
    try:
        source = resolve(directory, allow_pickle=allow_pickle)
        hash_files(source)
        preflight(source, expected, num_labels=10)
    except GraspError:
        pass


def _safetensors(header: object, payload: bytes, lie: int) -> bytes:
    """A file in safetensors layout: length (off by ``lie``), JSON header, data."""
    body = json.dumps(header).encode()
    return struct.pack("<Q", max(len(body) + lie, 0)) + body + payload


def test_fuzz_safetensors_headers(checkpoints, tmp_path):
    good = checkpoints("resnet", 1)[0]
    expected = read_header(resolve(good))
    valid = (good / "model.safetensors").read_bytes()
    names = list(expected)[:3]
    entry = st.fixed_dictionaries({
        "dtype": st.sampled_from(["F32", "F16", "I64", "BOOL", "F8_E4M3", "C64", "??"]),
        "shape": st.lists(st.integers(-1, 2 ** 40), max_size=4),
        "data_offsets": st.lists(st.integers(-1, 2 ** 12), max_size=3),
    }) | JSON
    header = st.dictionaries(st.sampled_from([*names, "__metadata__"]) | st.text(max_size=8), entry, max_size=4)
    contents = st.one_of(
        st.binary(max_size=512),
        st.builds(_safetensors, header | JSON, st.binary(max_size=256), st.sampled_from([0, 0, 1, -1, 2 ** 40])),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.tuples(st.integers(0, min(len(valid), 4096) - 1), st.integers(1, 255)).map(
            lambda at: valid[:at[0]] + bytes([valid[at[0]] ^ at[1]]) + valid[at[0] + 1:]),
    )

    @FUZZ
    @given(data=contents)
    def run(data):
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            shutil.copy(good / "config.json", d)
            (Path(d) / "model.safetensors").write_bytes(data)
            _only_grasp_errors(Path(d), expected)

    run()


def test_fuzz_safetensors_index(checkpoints, tmp_path):
    good = checkpoints("resnet", 1)[0]
    expected = read_header(resolve(good))
    shards = st.sampled_from([
        "model.safetensors", "../outside/model.safetensors", "/etc/passwd", "../../../../etc/passwd",
        "sub/../model.safetensors", "junk.bin", "config.json", "", ".", "..", "missing.safetensors",
        str(good / "model.safetensors"), "a\x00.safetensors", "x" * 300 + ".safetensors",
    ]) | st.text(max_size=20) | JSON
    index = st.one_of(
        st.dictionaries(st.text(max_size=10), shards, max_size=5).map(lambda m: json.dumps({"weight_map": m})),
        JSON.map(json.dumps),
    ).map(str.encode) | st.binary(max_size=64)

    @FUZZ
    @given(text=index, allow_pickle=st.booleans())
    def run(text, allow_pickle):
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            shutil.copytree(good, d, dirs_exist_ok=True)
            (Path(d) / "junk.bin").write_bytes(b"not a pickle")
            (Path(d) / SAFE_INDEX).write_bytes(text)
            _only_grasp_errors(Path(d), expected, allow_pickle=allow_pickle)

    run()
