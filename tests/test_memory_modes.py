"""Memory modes in the ecosystem's terms: ``--optim`` (TrainingArguments' names), ``--gradient-checkpointing``
(the model library's own), ``--mixed-precision`` (accelerate's); each one trains, the card states it, and what
cannot run says so in one line.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import OFFLINE, merge_fails, run_cli
from test_architectures import TINY, checkpoint, tiny_target
from test_training import TopBottom, logits_fn, make_net

from hf_grasp import GraspMerger
from hf_grasp.engine.optimizers import make_optimizer
from hf_grasp.engine.training import fine_tune, make_accelerator


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """test_architectures' tiny 3-class image target."""
    return tiny_target(tmp_path_factory.mktemp("target") / "tiny")


@pytest.mark.parametrize("optim, lr, kind", [("adamw_torch", 1e-2, "AdamW"), ("adafactor", 1e-2, "Adafactor"),
                                             ("sgd", 0.2, "SGD"), ("adamw_8bit", 1e-2, "AdamW")])
def test_each_optimizer_is_the_one_its_name_gives_and_trains(optim, lr, kind):
    model = make_net()
    opt = make_optimizer(optim, list(model.parameters()), lr=lr, weight_decay=0.01)
    assert type(opt).__name__ == kind and opt.param_groups[0]["weight_decay"] == 0.01
    train = DataLoader(TopBottom(256, seed=1), batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    val = DataLoader(TopBottom(64, seed=2), batch_size=32)
    history = fine_tune(model, logits_fn, train, val, make_accelerator(cpu=True), epochs=3, lr=lr, weight_decay=0.01,
                        optim=optim, step_in_backward=False)
    assert max(h["val_accuracy"] for h in history) > 0.9, history  # the zero head starts at chance
    if optim == "adamw_8bit":  # bitsandbytes keeps the moments of a tensor of 4096 or more elements in 8 bits
        big = torch.nn.Parameter(torch.zeros(64, 128))
        state = make_optimizer(optim, [big], lr=lr, weight_decay=0.0)
        big.grad = torch.ones_like(big)
        state.step()
        assert state.state[big]["state1"].dtype == torch.uint8


def test_the_optimizer_steps_inside_the_backward_pass_as_after_it():
    """Adafactor and SGD update each tensor from its own gradient: the in-backward path is the same update."""
    for optim in ("adafactor", "sgd"):
        runs = []
        for in_backward in (False, True):
            model = make_net(batchnorm=False)
            torch.nn.init.normal_(model[-1].weight, std=0.1)
            train = DataLoader(TopBottom(64, seed=1), batch_size=32, shuffle=True,
                               generator=torch.Generator().manual_seed(0))
            fine_tune(model, logits_fn, train, DataLoader(TopBottom(32, seed=2), batch_size=32),
                      make_accelerator(cpu=True), epochs=1, lr=1e-2, weight_decay=0.0, optim=optim,
                      step_in_backward=in_backward)
            runs.append(model.state_dict())
        for name in runs[0]:
            assert torch.allclose(runs[0][name], runs[1][name], atol=1e-6), (optim, name)


def test_gradient_checkpointing_is_the_same_merge_and_checkpoints_alignment_and_fine_tuning(target, tmp_path,
                                                                                          monkeypatch):
    """A ViT merge (transformers checkpoints its layers) with and without checkpointing: the same scores and
    weights up to float rounding, and the layers recomputed in the backward passes of the eval-mode alignment
    and of fine-tuning (a layer's attention runs again when its activations are recomputed)."""
    from transformers.models.vit import modeling_vit

    calls: list[tuple[bool, bool]] = []
    real = modeling_vit.ViTAttention.forward

    def counted(self, *args, **kwargs):
        calls.append((self.training, torch.is_grad_enabled()))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(modeling_vit.ViTAttention, "forward", counted)
    sources = [str(checkpoint("vit", tmp_path / f"s{seed}", seed=seed)) for seed in (0, 1)]
    options = {**TINY, "initial_epochs": 1, "finetune_epochs": 1, "tau": 0.3}
    plain = GraspMerger.from_pretrained(sources, target=str(target), **options).merge()
    plain_calls, calls[:] = list(calls), []
    checked = GraspMerger.from_pretrained(sources, target=str(target), gradient_checkpointing=True, **options).merge()

    def with_grad(in_train_mode: bool, seen: list) -> int:
        return sum(1 for training, grad in seen if grad and training == in_train_mode)

    assert with_grad(False, calls) > with_grad(False, plain_calls) > 0  # the alignment, in eval mode
    assert with_grad(True, calls) > with_grad(True, plain_calls) > 0  # fine-tuning
    a, b = plain.report.sources[1], checked.report.sources[1]
    for name, score in a.scores.items():
        assert b.scores[name] == pytest.approx(score, abs=1e-5), name
    assert b.transferred == a.transferred
    for (name, p), q in zip(plain.model.state_dict().items(), checked.model.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5), name


def test_a_mode_that_cannot_run_says_so_in_one_line(checkpoints, tmp_path):
    resnets = checkpoints("resnet", 2)
    line = merge_fails(tmp_path, resnets, "--gradient-checkpointing")
    assert line == ("error: ResNetForImageClassification: transformers has no gradient checkpointing for this "
                    "architecture; leave out --gradient-checkpointing")
    line = merge_fails(tmp_path, resnets, "--mixed-precision", "fp16", env={**OFFLINE, "CUDA_VISIBLE_DEVICES": ""})
    assert line == "error: --mixed-precision fp16 needs a GPU; on a CPU use --mixed-precision bf16"


@pytest.mark.slow
def test_a_low_memory_merge_runs_and_its_card_states_every_mode(checkpoints, tmp_path):
    sources = checkpoints("mobilevit", 2)
    out = tmp_path / "merged"
    done = run_cli("merge", "--target", "digits-eras", "--sources", *map(str, sources), "--output", str(out),
                   "--initial-epochs", "1", "--finetune-epochs", "1", "--optim", "adafactor",
                   "--gradient-checkpointing", "--mixed-precision", "bf16", "--no-progress",
                   env={**OFFLINE, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    card = (out / "README.md").read_text()
    for sentence in ("Optimizer: Adafactor (transformers, fixed learning rate, `--optim adafactor`).",
                     "Gradient checkpointing: activations recomputed in the backward pass",
                     "Precision: bf16 mixed precision (accelerate)."):
        assert sentence in card


def test_a_batch_in_slices_trains_as_the_whole_batch():
    """Gradient accumulation: each slice's share of the loss, the gradients added, one step per batch."""
    runs = []
    for slices in (1, 3):
        model = make_net(batchnorm=False)
        torch.nn.init.normal_(model[-1].weight, std=0.1)
        train = DataLoader(TopBottom(70, seed=1), batch_size=32, shuffle=True,
                           generator=torch.Generator().manual_seed(0))
        history = fine_tune(model, logits_fn, train, DataLoader(TopBottom(32, seed=2), batch_size=32),
                            make_accelerator(cpu=True), epochs=2, lr=1e-2, weight_decay=0.01, slices=slices,
                            step_in_backward=False)
        runs.append((model.state_dict(), history))
    (a, ha), (b, hb) = runs
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert [h["train_loss"] for h in ha] == pytest.approx([h["train_loss"] for h in hb], rel=1e-5)


def test_gradient_accumulation_is_the_same_merge_and_refused_with_batchnorm(target, tmp_path, checkpoints):
    from hf_grasp.runtime.errors import GraspError

    sources = [str(checkpoint("vit", tmp_path / f"s{seed}", seed=seed)) for seed in (0, 1)]
    options = {**TINY, "initial_epochs": 1, "finetune_epochs": 1, "tau": 0.3}
    whole = GraspMerger.from_pretrained(sources, target=str(target), **options).merge()
    sliced = GraspMerger.from_pretrained(sources, target=str(target), gradient_accumulation_steps=3,
                                         **options).merge()
    a, b = whole.report.sources[1], sliced.report.sources[1]
    for name, score in a.scores.items():
        assert b.scores[name] == pytest.approx(score, abs=1e-5), name
    for (name, p), q in zip(whole.model.state_dict().items(), sliced.model.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-5), name

    resnets = [str(s) for s in checkpoints("resnet", 2)]
    with pytest.raises(GraspError, match=r"^gradient_accumulation_steps=2: ResNetForImageClassification has "
                                         r"BatchNorm, which in fine-tuning would normalise each slice"):
        GraspMerger.from_pretrained(resnets, target="digits-eras", gradient_accumulation_steps=2,
                                    initial_epochs=1).merge()
    # without fine-tuning only the eval-mode alignment is sliced, which BatchNorm does not notice
    GraspMerger.from_pretrained(resnets, target="digits-eras", gradient_accumulation_steps=2, initial_epochs=0,
                                finetune_epochs=0, eval_sources=False).merge()
