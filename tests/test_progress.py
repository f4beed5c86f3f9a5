"""What a run writes to stderr: plain ``hf-grasp:`` lines when piped, bars only where they belong."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from hf_grasp.runtime import progress as progress_mod
from hf_grasp.runtime.progress import configure, log, progress
from hf_grasp.engine.training import fine_tune, make_accelerator

from conftest import run_python

EPOCH_LINE = re.compile(r"^hf-grasp: .+ epoch (\d+)/(\d+): train loss \d+\.\d{4}, val acc \d+\.\d\d%( \(best so far\))?$")
ANSI = re.compile(r"\x1b\[")

MERGE = """
import sys
from hf_grasp.merger import GraspMerger
GraspMerger.from_pretrained(sys.argv[1:], target="digits-eras", initial_epochs=1, finetune_epochs=1,
                            eval_sources=False).merge()
"""


@pytest.fixture(autouse=True)
def default_policy(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    configure()
    yield
    configure()


def tiny_fine_tune(epochs: int = 2) -> list[dict]:
    """A real fine-tune of a linear classifier on a separable 4-feature task (a second or so)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    rows = [{"pixel_values": a, "labels": b} for a, b in zip(x, (x[:, 0] > 0).long())]
    model = nn.Linear(4, 2)
    return fine_tune(model, lambda m, batch: m(batch["pixel_values"]), DataLoader(rows, batch_size=8), DataLoader(rows, batch_size=16),
                     make_accelerator(cpu=True), epochs=epochs, lr=0.05, weight_decay=0.0, desc="tiny")


def epoch_lines(stderr: str) -> list[re.Match]:
    return [m for m in map(EPOCH_LINE.match, stderr.splitlines()) if m]


def test_piped_merge_writes_one_plain_line_per_epoch_and_step(checkpoints):
    proc = run_python(MERGE, *checkpoints("resnet", 2), env={"HF_HUB_OFFLINE": "1"})
    err = proc.stderr

    assert "\r" not in err and not ANSI.search(err), err[-2000:]
    # the run's first line says how many processes it has
    first = next(line for line in err.splitlines() if line.startswith("hf-grasp:"))
    assert re.fullmatch(r"hf-grasp: version \S+ on 1 process \(cpu\)", first), err[-2000:]
    # initial fine-tune of source 1, then one round after source 2: one line each
    epochs = epoch_lines(err)
    assert [(m.group(1), m.group(2)) for m in epochs] == [("1", "1"), ("1", "1")], err
    assert all(m.group(3) for m in epochs)  # a single epoch is always the best so far
    step_lines = [line for line in err.splitlines() if re.match(r"hf-grasp: (init|source \d+) \(", line)]
    assert len(step_lines) == 2, err
    assert re.search(r"^hf-grasp: source 1 \(.+\): \d+/\d+ tensors transferred, val \d+\.\d\d%, test \d+\.\d\d%, "
                     r"\d+\.\d s$", err, flags=re.M), err


def test_fine_tune_logs_each_epoch_without_bars_when_not_a_terminal(capsys):
    history = tiny_fine_tune(epochs=3)
    err = capsys.readouterr().err

    assert "\r" not in err and not ANSI.search(err)
    lines = epoch_lines(err)
    assert [m.group(0) for m in lines] == err.splitlines()
    assert [(int(m.group(1)), int(m.group(2))) for m in lines] == [(1, 3), (2, 3), (3, 3)]
    assert lines[0].group(3)
    assert f"train loss {history[0]['train_loss']:.4f}" in lines[0].group(0)


def test_forced_bars_draw_and_tqdm_disable_silences_them(capsys, monkeypatch):
    configure(progress=True)
    tiny_fine_tune(epochs=1)
    assert "\r" in capsys.readouterr().err  # the per-batch bar, forced on

    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert list(progress(range(3), desc="x")) == [0, 1, 2]
    tiny_fine_tune(epochs=1)
    err = capsys.readouterr().err
    assert "\r" not in err and len(epoch_lines(err)) == 1


def test_quiet_keeps_warnings_only(capsys):
    configure(quiet=True)
    tiny_fine_tune(epochs=2)
    log.warning("disk almost full")
    assert capsys.readouterr().err == "hf-grasp: warning: disk almost full\n"

    configure(quiet=False)
    tiny_fine_tune(epochs=2)
    assert len(epoch_lines(capsys.readouterr().err)) == 2


def test_handler_installed_once_and_root_logger_untouched():
    root_handlers = list(logging.getLogger().handlers)
    for _ in range(3):
        configure()
        progress_mod.setup_logging()
    assert sum(isinstance(h, progress_mod._StderrHandler) for h in log.handlers) == 1
    assert logging.getLogger().handlers == root_handlers
