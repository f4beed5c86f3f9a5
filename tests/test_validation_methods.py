"""The methods that choose on target validation or learn how much to take: greedy soup, sequential task
arithmetic, learned interpolation. Small real runs (random and one trained ResNet), mechanics checked exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from hf_grasp import GraspMerger
from hf_grasp.engine.records import StepKind
from hf_grasp.methods.interpolation import interpolate

NO_TRAINING = dict(initial_epochs=0, finetune_epochs=0, eval_sources=False, lr=1e-3)


def _merge(sources, method, **opts):
    return GraspMerger.from_pretrained([str(s) for s in sources], target="digits-eras", method=method,
                                       **{**NO_TRAINING, **opts}).merge()


def _params(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _extra(report, step: str) -> dict:
    return next(s.details for s in report.steps if s.label == step)


@pytest.fixture(scope="module")
def trained(checkpoints, tmp_path_factory):
    """A source fine-tuned on the target from the first random checkpoint (far better than chance)."""
    srcs = checkpoints("resnet", 2)
    out = tmp_path_factory.mktemp("trained") / "t"
    GraspMerger.from_pretrained([str(s) for s in srcs], target="digits-eras", method="finetune-only",
                                initial_epochs=4, finetune_epochs=0, lr=1e-3, eval_sources=False,
                                ).merge().save_pretrained(out)
    return out


def test_greedy_soup_keeps_a_source_only_when_validation_holds_and_averages_exactly_the_kept(checkpoints):
    srcs = checkpoints("resnet", 4)
    result = _merge(srcs, "greedy-soup")
    report = result.report
    alone = {s.label: s.val_accuracy for s in report.steps if s.kind is StepKind.INGREDIENT}
    assert len(alone) == 4
    soup = _extra(report, "average")
    current = max(alone.values())  # the soup starts as the best source on validation
    for tried in soup["tried"]:
        assert tried["kept"] == (tried["val_accuracy"] >= current)
        if tried["kept"]:
            current = tried["val_accuracy"]
    by_name = {str(s): _params(s) for s in srcs}
    assert soup["kept"][0] in by_name and len(soup["kept"]) == 1 + sum(t["kept"] for t in soup["tried"])
    for name, p in result.model.named_parameters():
        mean = torch.stack([by_name[k][name] for k in soup["kept"]]).mean(0)
        torch.testing.assert_close(p.detach(), mean, rtol=0, atol=1e-6, msg=name)


def test_greedy_soup_leaves_out_what_hurts(checkpoints, trained):
    srcs = checkpoints("resnet", 3)
    result = _merge([srcs[1], trained, srcs[2]], "greedy-soup")
    soup = _extra(result.report, "average")
    assert soup["kept"] == [str(trained)]  # ranked first; averaging a random net in loses accuracy
    mine = _params(trained)
    for name, p in result.model.named_parameters():
        assert torch.equal(p.detach(), mine[name]), name


def test_sequential_ta_with_lambda_zero_keeps_the_previous_state(checkpoints):
    srcs = checkpoints("resnet", 4)
    result = _merge(srcs[1:], "sequential-ta", base=str(srcs[0]), ta_grid=(0.0,))
    base = _params(srcs[0])
    for name, p in result.model.named_parameters():
        assert torch.equal(p.detach(), base[name]), name
    assert _extra(result.report, "average")["scaling"] == [0.0, 0.0, 0.0]


def test_sequential_ta_takes_the_task_vector_that_helps(checkpoints, trained):
    srcs = checkpoints("resnet", 3)  # trained was fine-tuned from srcs[0]: its task vector is real
    result = _merge([srcs[2], trained], "sequential-ta", base=str(srcs[0]), ta_grid=(0.0, 1.0))
    scaling = _extra(result.report, "average")["scaling"]
    assert scaling[1] == 1.0
    first = srcs[0] if scaling[0] == 0 else srcs[2]
    expected = {n: t + (_params(trained)[n] - _params(srcs[0])[n]) for n, t in _params(first).items()}
    for name, p in result.model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=1e-5, msg=name)
    steps = {s.label: s.val_accuracy for s in result.report.steps}
    assert steps["source 2"] >= steps["source 1"] >= steps["init"]  # λ = 0 is always a candidate


def test_learned_interpolation_with_alpha_fixed_to_the_gate_is_grasp(checkpoints):
    srcs = checkpoints("resnet", 3)
    opts = dict(initial_epochs=1, finetune_epochs=1, tau=0.0, seed=4)
    grasp = _merge(srcs, "grasp", **opts)
    fixed = _merge(srcs, "learned-interpolation", interp_epochs=0, **opts)
    ours, theirs = fixed.model.state_dict(), grasp.model.state_dict()
    assert list(ours) == list(theirs)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert [s.transferred for s in fixed.report.sources] == [s.transferred for s in grasp.report.sources]


def test_learned_interpolation_keeps_alpha_only_if_validation_improves(checkpoints):
    srcs = checkpoints("resnet", 3)
    result = _merge(srcs, "learned-interpolation", interp_epochs=2, interp_lr=0.2, tau=0.0)
    for k in (1, 2):
        step = _extra(result.report, f"source {k}")["interpolation"]
        assert step["kept_val_accuracy"] >= step["gate_val_accuracy"]
        assert (step["kept_epoch"] == 0) == (step["kept_val_accuracy"] == step["gate_val_accuracy"])
    for src in result.report.sources[1:]:
        assert all(0.0 <= a <= 1.0 for a in src.transferred.values())


def test_interpolate_is_exact_at_the_ends_and_broadcasts_per_unit():
    g = torch.Generator().manual_seed(0)
    m, s = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    assert torch.equal(interpolate(m, s, torch.tensor(0.0)), m)
    assert torch.equal(interpolate(m, s, torch.tensor(1.0)), s)
    rows = interpolate(m, s, torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(rows[0], m[0]) and torch.equal(rows[1], s[1])
    torch.testing.assert_close(rows[2], (m[2] + s[2]) / 2)


def test_keep_start_ends_on_the_start_when_no_epoch_is_better(checkpoints, trained):
    srcs = checkpoints("resnet", 2)
    # a learning rate far too high: the epochs are worse on validation than the trained start
    result = _merge([trained, srcs[1]], "finetune-only", initial_epochs=1, lr=0.5, keep_start=True)
    history = result.report.sources[0].history
    assert len(history) == 1 and not any(h["kept"] for h in history)
    mine = _params(trained)
    for name, p in result.model.named_parameters():
        assert torch.equal(p.detach(), mine[name]), name


def test_best_source_keeps_exactly_the_source_best_on_validation(checkpoints, trained):
    srcs = checkpoints("resnet", 3)
    result = _merge([srcs[1], trained, srcs[2]], "best-source")
    report = result.report
    alone = {s.ref: s.val_accuracy for s in report.steps if s.kind is StepKind.INGREDIENT}
    assert set(alone) == {str(srcs[1]), str(trained), str(srcs[2])}
    chosen = _extra(report, "average")
    assert chosen["kept"] == [str(trained)] == [max(alone, key=alone.get)]
    assert [t["kept"] for t in chosen["tried"]] == [True, False, False]  # best first
    mine = _params(trained)
    for name, p in result.model.named_parameters():  # no training budget: the kept source, bit for bit
        assert torch.equal(p.detach(), mine[name]), name
    # its BatchNorm statistics are those it was judged with: the merged model scores what it scored
    assert report.final["validation"]["accuracy"] == alone[str(trained)]


def test_best_source_fine_tunes_with_the_same_budget_and_honours_keep_start(checkpoints, trained):
    srcs = checkpoints("resnet", 3)
    result = _merge([srcs[1], trained, srcs[2]], "best-source", initial_epochs=1, finetune_epochs=1,
                    keep_start=True)
    report = result.report
    assert report.epochs_trained == 1 + 1 * 2  # GRASP's budget for K = 3
    assert [s.kind for s in report.steps][-2:] == [StepKind.AVERAGE, StepKind.FINE_TUNE]
    start = _extra(report, "average")["tried"][0]["val_accuracy"]
    assert report.final["validation"]["accuracy"] >= start  # keep-start: never below the chosen source


def test_a_loader_with_row_tensors_gives_each_batch_its_rows_and_the_loss_trains_on_them():
    import datasets
    from PIL import Image

    from hf_grasp.engine.training import training_loss
    from hf_grasp.inputs.data import make_loader

    labels = [i % 3 for i in range(10)]
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4), (i, i, i)) for i in range(10)],
                                     "label": labels})
    soft = torch.nn.functional.one_hot(torch.tensor(labels), 3).float() * 0.5 + 0.5 / 3
    tag = torch.arange(10.0)[:, None]

    def transform(images):
        return torch.stack([torch.tensor(float(im.getpixel((0, 0))[0])).expand(3, 4, 4) for im in images])

    plain = make_loader(ds, transform, batch_size=4, shuffle=True, seed=3)
    carried = make_loader(ds, transform, batch_size=4, shuffle=True, seed=3, extra={"soft_labels": soft, "tag": tag})
    for a, b in zip(plain, carried, strict=True):  # the same rows in the same batches, each with its own rows' extra
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(b["tag"][:, 0], b["pixel_values"][:, 0, 0, 0])
        assert torch.equal(b["soft_labels"].argmax(1), b["labels"])
    logits = torch.randn(4, 3)
    batch = {"labels": torch.tensor([0, 1, 2, 0]), "soft_labels": torch.full((4, 3), 1 / 3)}
    uniform = -logits.log_softmax(1).mean(1).mean()
    torch.testing.assert_close(training_loss(logits, batch), uniform)  # the soft targets, not the labels
    torch.testing.assert_close(training_loss(logits, {"labels": batch["labels"]}),
                               torch.nn.functional.cross_entropy(logits, batch["labels"]))


def test_distill_at_weight_zero_is_greedy_soup_and_its_teacher_is_recorded(checkpoints, trained):
    srcs = checkpoints("resnet", 3)
    budget = dict(initial_epochs=1, finetune_epochs=1)
    soup = _merge([srcs[1], trained, srcs[2]], "greedy-soup", **budget)
    plain = _merge([srcs[1], trained, srcs[2]], "distill", distill_weight=0.0, **budget)
    taught = _merge([srcs[1], trained, srcs[2]], "distill", distill_weight=1.0, **budget)
    assert _extra(plain.report, "average")["kept"] == _extra(soup.report, "average")["kept"]
    teacher = _extra(taught.report, "average")
    assert teacher["teacher_sources"] == [str(srcs[1]), str(trained), str(srcs[2])]
    assert 0.0 <= teacher["teacher_val_accuracy"] <= 1.0
    differs = False
    for (name, a), b, c in zip(soup.model.named_parameters(), plain.model.parameters(), taught.model.parameters()):
        # one-hot targets train exactly as the labels do (the same batches, the same loss up to rounding)
        torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=1e-5, msg=name)
        differs |= not torch.allclose(c, a, atol=1e-4)
    assert differs  # the ensemble's targets reach the loss


def test_soup_wise_keeps_the_interpolation_between_soup_and_fine_tuned_that_validation_prefers(checkpoints, trained):
    from hf_grasp.methods.soup_wise import ALPHAS

    srcs = [str(s) for s in checkpoints("resnet", 3)]
    sources = [srcs[1], trained, srcs[2]]
    budget = dict(initial_epochs=1, finetune_epochs=1)
    start = _merge(sources, "soup-wise")  # no budget: the soup, judged on train + validation, nothing to interpolate
    assert [s.kind for s in start.report.steps][-1] is StepKind.AVERAGE
    tuned = _merge(sources, "distill", distill_weight=0.0, distill_select="train+validation", **budget)
    result = _merge(sources, "soup-wise", **budget)
    steps = result.report.steps
    assert [s.kind for s in steps][-3:] == [StepKind.AVERAGE, StepKind.FINE_TUNE, StepKind.INTERPOLATE]
    chosen = steps[-1].details
    assert chosen["alpha"] in ALPHAS and set(chosen["tried"]) == {str(a) for a in ALPHAS}
    assert chosen["tried"][str(chosen["alpha"])] == max(chosen["tried"].values())  # the best on validation
    assert result.report.final["validation"]["accuracy"] == max(chosen["tried"].values())
    alpha = chosen["alpha"]
    ends = zip(start.model.named_parameters(), tuned.model.parameters(), result.model.parameters())
    for (name, s), t, r in ends:  # start + α (tuned − start), tensor by tensor
        torch.testing.assert_close(r.detach(), s.detach() + alpha * (t.detach() - s.detach()), rtol=0, atol=1e-4,
                                   msg=name)
