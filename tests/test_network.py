"""No network call hangs: an endpoint that accepts connections and never answers is one error line, in bounded time."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import run_cli, run_python

TIMEOUT = 3  # HF_HUB_DOWNLOAD_TIMEOUT for these runs: huggingface_hub's own setting, honoured
CEILING = 150  # seconds: a loose bound on the whole run (an interpreter importing torch on a loaded machine included)


@pytest.fixture
def silent_endpoint():
    """``http://127.0.0.1:PORT`` of a listener that accepts every connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()
    for c in held:
        c.close()


def _publish(env, dirs):
    code = ("import sys\nfrom hf_grasp.apps.bench.hub_cache import publish_to_cache\n"
            "[publish_to_cache(d, f'demo/m{i}') for i, d in enumerate(sys.argv[1:])]")
    run_python(code, *dirs, env={**env, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
@pytest.mark.parametrize("uncached", [False, True], ids=["cached", "one-uncached"])
def test_silent_endpoint_is_one_line_in_bounded_time(tmp_path, checkpoints, silent_endpoint, uncached):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": silent_endpoint,
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DOWNLOAD_TIMEOUT": str(TIMEOUT)}
    _publish(env, checkpoints("resnet", 2))
    refs = ["demo/m0", "demo/m1"] + (["demo/not-cached"] if uncached else [])
    out = tmp_path / "merged"
    start = time.monotonic()
    proc = run_cli("merge", "--target", "digits-eras", "--sources", *refs, "--output", str(out),
                   "--initial-epochs", "0", "--finetune-epochs", "0", "--no-eval-sources", env=env, timeout=CEILING)
    elapsed = time.monotonic() - start
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"the Hub at {silent_endpoint} did not answer within {TIMEOUT} s" in errors[0], errors[0]
    assert "HF_HUB_OFFLINE=1" in errors[0]  # the sources met first are cached: how to use them
    assert not out.exists()
    assert elapsed < CEILING


@pytest.mark.slow
def test_silent_endpoint_for_a_hub_target(tmp_path, silent_endpoint):
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": silent_endpoint,
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DOWNLOAD_TIMEOUT": str(TIMEOUT)}
    proc = run_cli("merge", "--target", "someorg/some-dataset", "--sources", "demo/m0", "demo/m1",
                   "--output", str(tmp_path / "merged"), env=env, timeout=CEILING)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert f"dataset 'someorg/some-dataset': the Hub at {silent_endpoint} did not answer" in errors[0], errors[0]
