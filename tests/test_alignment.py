"""The alignment math against hand-computed values."""

import math

import pytest
import torch

from hf_grasp.engine.alignment import (
    EPS,
    alignment_scores,
    alignment_sums,
    apply_transfer,
    expand_mask,
    row_partners,
    scores_from_sums,
    transfer_mask,
)


def test_identical_opposite_orthogonal():
    g = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    assert alignment_scores(g, g).item() == pytest.approx(1.0, abs=1e-9)
    assert alignment_scores(-g, g).item() == pytest.approx(-1.0, abs=1e-9)
    a, b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 5.0, 0.0])
    assert alignment_scores(a, b).item() == 0.0


def test_hand_computed_cosine():
    a, b = torch.tensor([1.0, 2.0, 2.0]), torch.tensor([2.0, 0.0, 1.0])
    # <a,b> = 4, |a| = 3, |b| = sqrt(5)
    assert alignment_scores(a, b).item() == pytest.approx(4 / (3 * math.sqrt(5) + EPS), rel=1e-12)


def test_zero_gradient_scores_zero_not_nan():
    z, g = torch.zeros(4), torch.tensor([1.0, -1.0, 2.0, 0.5])
    for s, t in ((z, g), (g, z), (z, z)):
        score = alignment_scores(s, t)
        assert not torch.isnan(score) and score.item() == 0.0


def test_eps_term_is_in_the_denominator():
    # tiny gradients: the 1e-8 term pulls the cosine of identical vectors below 1
    g = torch.full((1,), 1e-5, dtype=torch.float64)
    assert alignment_scores(g, g).item() == pytest.approx(1e-10 / (1e-10 + 1e-8))


def test_threshold_is_strict():
    scores = torch.tensor([0.3, 0.30001, 0.29999, -1.0, 1.0], dtype=torch.float64)
    assert transfer_mask(scores, 0.3).tolist() == [False, True, False, False, True]
    assert not transfer_mask(torch.tensor(0.3, dtype=torch.float64), 0.3)


def test_row_granularity_by_hand():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 0.0], [-1.0, -1.0], [3.0, 0.0]])
    scores = alignment_scores(s, t, "row")
    assert scores.shape == (3,)
    assert scores.tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-7)
    mask = transfer_mask(scores, 0.3)
    merged, source = torch.zeros(3, 2), torch.ones(3, 2)
    frac = apply_transfer(merged, source, mask)
    assert merged.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    assert frac == pytest.approx(1 / 3)


def test_row_granularity_on_conv_weight():
    s = torch.randn(4, 3, 2, 2)
    t = s.clone()
    t[1] *= -1
    scores = alignment_scores(s, t, "row")
    assert scores.tolist() == pytest.approx([1, -1, 1, 1], abs=1e-6)
    assert expand_mask(scores > 0, s.shape)[1].sum() == 0


def test_element_granularity_is_sign_agreement():
    s = torch.tensor([1.0, -2.0, 3.0, 0.0])
    t = torch.tensor([5.0, 1.0, 0.1, 4.0])
    scores = alignment_scores(s, t, "element")
    assert scores.tolist() == pytest.approx([1.0, -1.0, 1.0, 0.0], abs=1e-6)
    merged = torch.zeros(4)
    apply_transfer(merged, torch.tensor([9.0, 9.0, 9.0, 9.0]), transfer_mask(scores, 0.3))
    assert merged.tolist() == [9.0, 0.0, 9.0, 0.0]


def test_sums_compose_over_shards():
    # the scale-out form: summing the three sums over shards reproduces the unsharded cosine (to float32 dots)
    torch.manual_seed(0)
    s, t = torch.randn(10, 6), torch.randn(10, 6)
    parts = [alignment_sums(a, b) for a, b in zip(s.chunk(3), t.chunk(3))]
    total = [sum(p[i] for p in parts) for i in range(3)]
    assert scores_from_sums(*total).item() == pytest.approx(alignment_scores(s, t).item(), rel=1e-6)


def test_bias_follows_weight_rows():
    shapes = [("fc.weight", (4, 3)), ("fc.bias", (4,)), ("bn.weight", (4,)), ("bn.bias", (4,)),
              ("conv.weight", (8, 3, 3, 3)), ("conv.bias", (8,))]
    assert row_partners(shapes) == {"fc.bias": "fc.weight", "conv.bias": "conv.weight"}


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError):
        alignment_scores(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError):
        expand_mask(torch.ones(5, dtype=torch.bool), (4, 2))


def test_scoring_each_gradient_as_backward_makes_it_equals_scoring_full_gradients():
    # GRASP scores a source's gradient tensor by tensor inside its backward pass and frees it; the decisions and
    # scores must be those of scoring the two complete gradient sets, for every granularity
    from hf_grasp.engine.context import _handing_over
    from hf_grasp.methods.grasp import AlignmentScorer, transfer_aligned

    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))

    def net(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))

    def backward(model):
        torch.nn.functional.cross_entropy(model(x), y).backward()

    for granularity in ("tensor", "row", "element"):
        merged_a, source_a, merged_b, source_b = net(1), net(2), net(1), net(2)
        for model in (merged_a, source_a, merged_b):
            backward(model)
        expected = transfer_aligned(merged_a, source_a, tau=0.0, granularity=granularity)
        scorer = AlignmentScorer(merged_b, tau=0.0, granularity=granularity)
        with _handing_over(source_b, scorer.take) as last_batch:
            last_batch()
            backward(source_b)
        assert all(p.grad is None for p in source_b.parameters())  # each handed over, then freed
        assert scorer.transfer(source_b) == expected
        assert all(torch.equal(a, b) for a, b in zip(merged_a.state_dict().values(), merged_b.state_dict().values()))


def test_a_whole_tensor_mask_copies_all_or_nothing_and_reports_its_fraction():
    merged, source = torch.zeros(3, 4), torch.arange(12.0).reshape(3, 4)
    assert apply_transfer(merged, source, torch.tensor(False)) == 0.0 and merged.abs().sum() == 0
    assert apply_transfer(merged, source, torch.tensor(True)) == 1.0 and torch.equal(merged, source)
    assert apply_transfer(torch.zeros(0, 4), torch.zeros(0, 4), torch.tensor(True)) == 0.0
    with pytest.raises(ValueError):
        apply_transfer(merged, source, torch.ones(4, dtype=torch.bool))  # a mask that fits no unit of the tensor


def test_half_precision_gradients_are_scored_in_float32():
    torch.manual_seed(0)
    s, t = torch.randn(1000), torch.randn(1000)
    exact = alignment_scores(s.double(), t.double()).item()
    assert alignment_scores(s.bfloat16(), t.bfloat16()).dtype == torch.float64
    assert alignment_scores(s.bfloat16(), t.bfloat16()).item() == pytest.approx(exact, abs=2e-2)
    assert alignment_scores(s, t).item() == pytest.approx(exact, rel=1e-5)
