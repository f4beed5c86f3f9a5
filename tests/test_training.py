"""fine_tune / evaluate_model on a tiny real conv net and a learnable synthetic task."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hf_grasp.runtime.errors import GraspError
from hf_grasp.engine.training import evaluate_model, fine_tune, load_accuracy, make_accelerator

REPO = Path(__file__).resolve().parents[1]


def logits_fn(model, batch):
    return model(batch["pixel_values"])


def make_net(seed: int = 0, *, batchnorm: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3, padding=1)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(4))
    layers += [nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 2)]
    net = nn.Sequential(*layers)
    # A zero head predicts class 0 for everything: exactly chance on balanced data.
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


class TopBottom(Dataset):
    """8x8 grey images; label 0 = bright top half, 1 = bright bottom half, plus noise."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 2
        self.images = torch.randn(n, 1, 8, 8, generator=g) * 0.8
        self.images[self.labels == 0, :, :4] += 1.0
        self.images[self.labels == 1, :, 4:] += 1.0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


class FlipAfterFirstPass(TopBottom):
    """Correct labels during the first full pass, inverted afterwards.

    Used as a validation set it makes epoch 1 the best epoch and every later one
    worse, whatever the training does.
    """

    def __init__(self, n: int, seed: int):
        super().__init__(n, seed)
        self.reads = 0

    def __getitem__(self, i):
        item = super().__getitem__(i)
        self.reads += 1
        if self.reads > len(self):
            item = {"pixel_values": item["pixel_values"], "labels": 1 - item["labels"]}
        return item


@pytest.fixture(scope="module")
def accelerator():
    return make_accelerator(cpu=True)


def loaders(train_n=256, val_n=64, *, val_cls=TopBottom):
    g = torch.Generator().manual_seed(0)
    train = DataLoader(TopBottom(train_n, seed=1), batch_size=32, shuffle=True, generator=g)
    val = DataLoader(val_cls(val_n, seed=2), batch_size=32)
    return train, val


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_fine_tune_learns_from_chance(accelerator):
    model = make_net()
    train, val = loaders()
    before = evaluate_model(model, logits_fn, val, accelerator)
    assert before["accuracy"] == pytest.approx(0.5)

    history = fine_tune(model, logits_fn, train, val, accelerator, epochs=3, lr=1e-2, weight_decay=0.01)

    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert set(history[0]) >= {"epoch", "train_loss", "val_accuracy", "val_loss", "lr", "kept"}
    assert sum(h["kept"] for h in history) == 1
    after = evaluate_model(model, logits_fn, val, accelerator)
    assert after["accuracy"] > 0.9
    kept = next(h for h in history if h["kept"])
    assert after["accuracy"] == kept["val_accuracy"] == max(h["val_accuracy"] for h in history)
    assert after["loss"] == pytest.approx(kept["val_loss"], rel=1e-5)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # cosine over 3 epochs: the rate decays from lr towards 0
    assert history[0]["lr"] > history[1]["lr"] > history[2]["lr"] > 0
    assert history[0]["lr"] <= 1e-2


def test_best_epoch_restored_into_model_via_best_store(accelerator):
    model = make_net()
    store = make_net(seed=123)  # same architecture, different contents
    ptrs = [t.data_ptr() for t in store.state_dict().values()]
    train, val = loaders(val_cls=FlipAfterFirstPass)

    history = fine_tune(
        model, logits_fn, train, val, accelerator, epochs=3, lr=1e-2, weight_decay=0.0, best_store=store
    )

    assert [h["kept"] for h in history] == [True, False, False]
    assert history[0]["val_accuracy"] > 0.9 and history[2]["val_accuracy"] < 0.1
    # best_store was written in place: same tensors, now holding the model's best (restored) state
    assert [t.data_ptr() for t in store.state_dict().values()] == ptrs
    assert_state_equal(state(store), state(model))
    assert "1.running_mean" in model.state_dict()  # buffers are part of the kept state
    # the model ends with epoch 1's weights: its accuracy on unflipped labels is epoch 1's
    _, clean_val = loaders()
    again = evaluate_model(model, logits_fn, clean_val, accelerator)
    assert again["accuracy"] == history[0]["val_accuracy"]
    assert again["loss"] == pytest.approx(history[0]["val_loss"], rel=1e-5)


def test_best_epoch_restored_without_store(accelerator):
    model = make_net()
    train, val = loaders(val_cls=FlipAfterFirstPass)
    history = fine_tune(model, logits_fn, train, val, accelerator, epochs=2, lr=1e-2, weight_decay=0.0)
    assert [h["kept"] for h in history] == [True, False]
    _, clean_val = loaders()
    again = evaluate_model(model, logits_fn, clean_val, accelerator)
    assert again["loss"] == pytest.approx(history[0]["val_loss"], rel=1e-5)


def test_ties_keep_the_earlier_epoch(accelerator):
    # lr=0 and no BatchNorm: every epoch has the same weights, hence the same accuracy.
    model = make_net(batchnorm=False)
    before = state(model)
    train, val = loaders()
    history = fine_tune(model, logits_fn, train, val, accelerator, epochs=3, lr=0.0, weight_decay=0.0)
    assert len({h["val_accuracy"] for h in history}) == 1
    assert [h["kept"] for h in history] == [True, False, False]
    assert_state_equal(state(model), before)


def test_zero_epochs_leaves_model_bit_identical(accelerator):
    model = make_net()
    model.train()
    before = state(model)
    train, val = loaders()
    assert fine_tune(model, logits_fn, train, val, accelerator, epochs=0, lr=1.0, weight_decay=0.1) == []
    assert_state_equal(state(model), before)
    assert model.training


def test_optimizer_released_and_mode_restored(accelerator):
    model = make_net()
    model.eval()
    train, val = loaders(train_n=64, val_n=32)
    fine_tune(model, logits_fn, train, val, accelerator, epochs=1, lr=1e-3, weight_decay=0.0)
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is torch.optim.AdamW]
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_unknown_schedule_is_a_user_error(accelerator):
    train, val = loaders(train_n=32, val_n=32)
    with pytest.raises(GraspError, match="schedule"):
        fine_tune(make_net(), logits_fn, train, val, accelerator, epochs=1, lr=1e-3, weight_decay=0.0, schedule="sawtooth")


def test_evaluate_model_matches_hand_computation(accelerator):
    torch.manual_seed(5)
    model = make_net()
    nn.init.normal_(model[-1].weight, std=0.1)  # non-trivial predictions
    data = TopBottom(10, seed=3)
    loader = DataLoader(data, batch_size=4)  # 10 = 4 + 4 + 2: a ragged last batch
    model.train()
    result = evaluate_model(model, logits_fn, loader, accelerator)
    assert model.training  # mode restored

    model.eval()
    with torch.no_grad():
        logits = model(data.images)
    expected_acc = (logits.argmax(-1) == data.labels).float().mean().item()
    expected_loss = F.cross_entropy(logits, data.labels).item()
    assert result["n"] == 10
    assert result["accuracy"] == pytest.approx(expected_acc)
    assert 0.0 < expected_acc < 1.0
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_metric_module_computes_accuracy():
    metric = load_accuracy()
    assert metric.compute(predictions=[0, 1, 1, 2], references=[0, 1, 0, 2]) == {"accuracy": 0.75}


def test_two_threads_computing_accuracy_at_once_each_get_their_own_metric():
    """The Space makes a benchmark's sources in one thread while a visitor's merge evaluates in another: one shared
    EvaluationModule had the two close each other's writer (ValueError: I/O operation on closed file)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    start = threading.Barrier(2)

    def many(offset: int):
        start.wait()
        predictions = [(i + offset) % 2 for i in range(50)]
        got = [load_accuracy().compute(predictions=predictions, references=[0] * 50)["accuracy"] for _ in range(100)]
        return load_accuracy(), got

    with ThreadPoolExecutor(2) as pool:
        (m0, a0), (m1, a1) = pool.map(many, (0, 1))
    assert m0 is not m1 and a0 == [0.5] * 100 and a1 == [0.5] * 100
    assert load_accuracy() is load_accuracy()  # cached within a thread


def test_metric_loads_offline_in_fresh_process(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    code = (
        "import json; from hf_grasp.engine.training import load_accuracy;"
        "print(json.dumps(load_accuracy().compute(predictions=[1, 0, 1], references=[1, 1, 1])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"accuracy": pytest.approx(2 / 3)}
    # evaluate copied our script into its module cache under HF_HOME, not a hub download
    assert list((tmp_path / "hf_home").rglob("accuracy.py"))


DDP_SCRIPT = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
from pathlib import Path
import accelerate

def run():
    from torch.utils.data import DataLoader
    from test_training import TopBottom, logits_fn, make_net
    from hf_grasp.engine.training import evaluate_model, fine_tune, make_accelerator

    acc = make_accelerator(cpu=True)
    assert acc.num_processes == 2, acc.num_processes
    model, store = make_net(), make_net(seed=3)
    train = DataLoader(TopBottom(128, seed=1), batch_size=32, shuffle=True)
    val = DataLoader(TopBottom(50, seed=2), batch_size=16)  # 50 does not split evenly in 2 x 16
    history = fine_tune(model, logits_fn, train, val, acc, epochs=2, lr=1e-2, weight_decay=0.0, best_store=store)
    result = evaluate_model(model, logits_fn, val, acc)
    assert result["n"] == 50, result
    assert result["accuracy"] > 0.9, result
    assert sum(h["kept"] for h in history) == 1
    Path({out!r}, f"rank{{acc.process_index}}.ok").write_text(str(result))

accelerate.debug_launcher(run, num_processes=2)
"""


@pytest.mark.slow
def test_fine_tune_and_evaluate_in_two_processes(tmp_path):
    """Under DDP the wrapper trains the caller's module and gather_for_metrics counts each sample once."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), out=str(tmp_path)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("rank*.ok")) == ["rank0.ok", "rank1.ok"]


SAME_AS_ONE_SCRIPT = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
import accelerate, torch

def run():
    from test_training import bn_net, fit
    from hf_grasp.engine.training import make_accelerator

    acc = make_accelerator(cpu=True)
    assert acc.num_processes == 2, acc.num_processes
    model = bn_net()
    fit(model, acc)
    if acc.is_main_process:
        torch.save(model.state_dict(), {out!r})

accelerate.debug_launcher(run, num_processes=2)
"""


def bn_net() -> nn.Sequential:
    """A conv net with torch's BatchNorm2d and timm's BatchNormAct2d (a subclass torch's SyncBatchNorm cannot
    replace), its head not zero so the first step already moves every layer."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    # no conv bias before a norm (as in real nets): its gradient is zero up to float noise, which AdamW would
    # scale up to full steps
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1, bias=False), BatchNormAct2d(4), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 2))


def fit(model, accelerator) -> None:
    """Two epochs of 70 examples in batches of 32: the last batch of each epoch has 6 rows."""
    train = DataLoader(TopBottom(70, seed=1), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TopBottom(20, seed=2), batch_size=16)
    fine_tune(model, logits_fn, train, val, accelerator, epochs=2, lr=1e-2, weight_decay=0.0, schedule="constant")


@pytest.mark.slow
def test_two_processes_train_the_model_one_process_trains(tmp_path):
    """BatchNorm over the global batch (the two processes' rows together, torch's and timm's modules alike) and
    the same global batches, the short last one included: the weights and running statistics one process makes,
    up to float summation order."""
    from hf_grasp.engine.training import make_accelerator

    one = bn_net()
    fit(one, make_accelerator(cpu=True))
    script = tmp_path / "two.py"
    script.write_text(SAME_AS_ONE_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests"), out=str(tmp_path / "two.pt")))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt")
    assert list(two) == list(one.state_dict())
    moved = 0
    for name, tensor in one.state_dict().items():
        assert torch.allclose(two[name].float(), tensor.float(), atol=1e-4, rtol=1e-4), name
        moved += not torch.equal(tensor, bn_net().state_dict()[name])
    assert moved >= 10  # the comparison is of trained weights and statistics, not of the initial ones


def test_global_batchnorm_leaves_one_process_and_models_without_batchnorm_alone():
    from hf_grasp.engine.global_batchnorm import global_batchnorm

    x = torch.randn(6, 1, 8, 8)
    for model in (make_net(batchnorm=False), bn_net()):
        model.train()
        with torch.no_grad():
            plain = model(x)
            with global_batchnorm(2):  # no process group: nothing to synchronise with, nothing intercepted
                assert torch.equal(model(x), plain)


def test_recalibrate_batchnorm_matches_target_statistics():
    from hf_grasp.engine.training import make_accelerator, recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4, 3).reshape(4, 3, 1, 1))
    model.eval()
    x = torch.randn(64, 3, 2, 2) * 3 + 5
    loader = [{"pixel_values": x[i:i + 16], "labels": torch.zeros(16, dtype=torch.long)} for i in range(0, 64, 16)]
    n = recalibrate_batchnorm(model, logits_fn, loader, make_accelerator(cpu=True))
    assert n == 1 and not model.training and model[1].momentum == 0.1
    # cumulative average of the per-batch means equals the overall channel means (equal batch sizes)
    expected = torch.cat([x.mean(dim=(0, 2, 3)), torch.zeros(1)])
    assert torch.allclose(model[1].running_mean, expected, atol=1e-5)
    assert int(model[1].num_batches_tracked) == 4


def test_schedule_per_epoch_is_the_released_cosine_and_per_step_reaches_zero(accelerator):
    train, val = loaders()
    lr = 1e-2
    per_epoch = fine_tune(make_net(), logits_fn, train, val, accelerator, epochs=3, lr=lr, weight_decay=0.0)
    # CosineAnnealingLR(T_max=3) stepped after each epoch, as the released GRASP code: 1, 0.75, 0.25 of lr
    assert [h["lr"] for h in per_epoch] == pytest.approx([lr, 0.75 * lr, 0.25 * lr])
    per_step = fine_tune(make_net(), logits_fn, train, val, accelerator, epochs=3, lr=lr, weight_decay=0.0,
                         schedule_per="step")
    assert per_step[0]["lr"] < 0.9 * lr and per_step[-1]["lr"] < 0.01 * lr


def test_step_in_backward_is_the_same_update_as_one_step_after_it(accelerator):
    # AdamW per tensor from inside the backward pass (gradients freed as they are used) must give the same bits
    # as the usual optimizer.step() after backward
    results = []
    for in_backward in (True, False):
        model = make_net(seed=3)
        train, val = loaders()
        history = fine_tune(model, logits_fn, train, val, accelerator, epochs=2, lr=1e-2, weight_decay=0.01,
                            step_in_backward=in_backward)
        results.append((state(model), [h["train_loss"] for h in history]))
        assert all(p.grad is None for p in model.parameters())
    assert results[0][1] == results[1][1]
    assert_state_equal(results[0][0], results[1][0])


def test_adamw_moments_packed_in_one_block_step_like_torchs_own():
    # fine_tune allocates AdamW's moments itself, packed (one block each, out of the C heap's holes): the updates
    # must be torch's, bit for bit, and a non-contiguous parameter must get a moment of its own layout
    from hf_grasp.engine.training import _allocate_training_state

    x = TopBottom(16, seed=1).images
    results = []
    for packed in (True, False):
        model = make_net(seed=3)
        head = model[-1].weight
        head.data = torch.randn(head.shape[::-1], generator=torch.Generator().manual_seed(2)).t()  # transposed
        assert not head.is_contiguous()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01, fused=True)
        if packed:
            _allocate_training_state(optimizer)
        for _ in range(3):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if packed:
            states = [optimizer.state[p] for p in model.parameters()]
            blocks = {s["exp_avg"].untyped_storage().data_ptr() for s, p in zip(states, model.parameters())
                      if p.is_contiguous()}
            assert len(blocks) == 1 and len({s["exp_avg"].data_ptr() for s in states}) == len(states)
            assert optimizer.state[head]["exp_avg_sq"].stride() == head.stride()
        results.append(state(model))
    assert_state_equal(results[0], results[1])


def test_released_probe_frees_its_storage_and_comes_back_packed_with_ties_kept():
    # MergeContext.fine_tune releases the idle probe; afterwards the same tensor objects are back, packed in one
    # block per dtype (out of the C heap), tied parameters still one object, ready for the next source's load
    from hf_grasp.engine.context import released

    model = make_net(seed=1)
    model.append(nn.Linear(2, 2, bias=False))
    model.append(nn.Linear(2, 2, bias=False))
    model[-1].weight = model[-2].weight  # tied
    before = {n: (id(t), t.shape, t.dtype) for n, t in model.state_dict(keep_vars=True).items()}
    with released(model):
        assert all(t.numel() == 0 for t in model.state_dict(keep_vars=True).values())
    after = model.state_dict(keep_vars=True)
    assert {n: (id(t), t.shape, t.dtype) for n, t in after.items()} == before
    assert model[-1].weight is model[-2].weight
    by_dtype = {}
    for t in after.values():
        by_dtype.setdefault(t.dtype, set()).add(t.untyped_storage().data_ptr())
    assert set(by_dtype) == {torch.float32, torch.int64} and all(len(b) == 1 for b in by_dtype.values())
    assert len({t.data_ptr() for t in after.values()}) == len({id(t) for t in after.values()})  # disjoint views


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup_ratio", [0.0, 0.25])
def test_the_schedules_are_transformers_own_at_every_step(schedule, warmup_ratio):
    """The engine's LambdaLR gives the rates transformers.get_scheduler gives, warmup included."""
    from transformers import get_scheduler

    from hf_grasp.engine.training import _make_scheduler

    total = 12
    ours, theirs = [], []
    name = "constant_with_warmup" if schedule == "constant" and warmup_ratio else schedule
    for make, rates in ((lambda o: _make_scheduler(o, schedule, warmup_ratio, total_steps=total), ours),
                        (lambda o: get_scheduler(name, o, num_warmup_steps=int(round(warmup_ratio * total)),
                                                 num_training_steps=total), theirs)):
        optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = make(optimizer)
        for _ in range(total + 2):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    assert ours == pytest.approx(theirs, abs=1e-12)
    if schedule != "constant" or warmup_ratio:
        assert len(set(ours)) > 3  # rates that move: the comparison is of a schedule, not of a constant
