"""Baseline merge methods: the math by hand on tiny tensors, the methods against it on real checkpoints."""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils
from safetensors.torch import load_file

from hf_grasp import GraspMerger
from hf_grasp.engine import merge_math
from hf_grasp.runtime.errors import GraspError


def _run(srcs, method, base=None, **opts):
    kw = dict(initial_epochs=0, finetune_epochs=0, eval_sources=False)
    if base is not None:
        kw["base"] = str(base)
    return GraspMerger.from_pretrained([str(s) for s in srcs], target="digits-eras", method=method,
                                       **{**kw, **opts}).merge()


def _weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.fixture
def srcs(checkpoints):
    return checkpoints("resnet", 3)


@pytest.fixture
def base(checkpoints):
    return checkpoints("resnet", 1, seed0=40)[0]


def _param_names(result):
    return [n for n, _ in result.model.named_parameters()]


# --- multi-source -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["multi-source", "multi-source-naive"])
def test_multi_source_is_the_elementwise_mean(srcs, method):
    result = _run(srcs, method)
    sds = [_weights(s) for s in srcs]
    state = result.model.state_dict()
    n_float = 0
    for name, t in state.items():
        if t.is_floating_point():  # parameters and BatchNorm running statistics
            mean = torch.stack([sd[name].float() for sd in sds]).mean(0)
            torch.testing.assert_close(t, mean, rtol=0, atol=1e-6, msg=name)
            n_float += 1
        else:  # num_batches_tracked: the first source's
            assert torch.equal(t, sds[0][name]), name
    assert n_float > 0 and any("running_var" in n for n in state)
    assert [s.label for s in result.report.steps] == ["average"]  # 0 epochs: no fine-tune step


def test_multi_source_fine_tunes_the_same_budget(srcs):
    # GRASP's budget with 2 sources, initial_epochs=0, finetune_epochs=1: 0 + 1 * (2 - 1) = 1 epoch
    result = _run(srcs[:2], "multi-source", finetune_epochs=1, lr=1e-3)
    steps = [s.label for s in result.report.steps]
    assert steps == ["average", "fine-tune"]
    assert result.report.steps[0].val_accuracy is not None
    sds = [_weights(s) for s in srcs[:2]]
    conv = next(n for n, p in result.model.named_parameters() if p.dim() == 4)
    assert not torch.allclose(result.model.state_dict()[conv], (sds[0][conv] + sds[1][conv]) / 2)


# --- task arithmetic and TIES ---------------------------------------------------------


def _task_vector_run(srcs, base, method):
    """A task-vector merge and what to check it against: result, base and source weights, state, parameter names."""
    result = _run(srcs, method, base=base)
    return result, _weights(base), [_weights(s) for s in srcs], result.model.state_dict(), _param_names(result)


def test_task_arithmetic_by_hand(srcs, base):
    result, b, sds, state, params = _task_vector_run(srcs, base, "task-arithmetic")
    for name in params:
        expected = b[name] + 0.3 * sum(sd[name] - b[name] for sd in sds)
        torch.testing.assert_close(state[name], expected, rtol=0, atol=1e-6, msg=name)
    for name in state:
        if name not in params:  # buffers stay the base's
            assert torch.equal(state[name], b[name]), name
    assert result.report.method.name == "task-arithmetic" and result.report.base.ref == str(base)


def test_ties_by_hand():
    base = torch.ones(5)
    taus = [torch.tensor([1.0, -2.0, 0.5, 0.1, 3.0]),
            torch.tensor([-1.5, 0.2, 0.4, -0.3, 1.0]),
            torch.tensor([0.5, -1.0, -0.6, 0.05, -3.5])]
    # trim to top 40% (2 of 5) by magnitude: [0,-2,0,0,3], [-1.5,0,0,0,1], [0,-1,0,0,-3.5]
    # elect by total mass: [-1.5, -3, 0, 0, +0.5] -> signs [-, -, +, +, +]
    # disjoint mean of the agreeing entries: [-1.5, mean(-2,-1), 0, 0, mean(3,1)]
    expected_tv = torch.tensor([-1.5, -1.5, 0.0, 0.0, 2.0])
    merged = merge_math.ties(base, [base + t for t in taus], scaling=1.0, density=0.4)
    torch.testing.assert_close(merged, base + expected_tv)
    half = merge_math.ties(base, [base + t for t in taus], scaling=0.5, density=0.4)
    torch.testing.assert_close(half, base + 0.5 * expected_tv)


def test_ties_method_matches_peft_per_tensor(srcs, base):
    _, b, sds, state, params = _task_vector_run(srcs, base, "ties")
    for name in params:
        tvs = [sd[name] - b[name] for sd in sds]
        expected = b[name] + merge_utils.ties(tvs, torch.ones(3), 0.2, majority_sign_method="total")
        torch.testing.assert_close(state[name], expected, rtol=0, atol=1e-6, msg=name)
    convs = [n for n in params if state[n].dim() == 4]
    assert all(not torch.equal(state[n], b[n]) for n in convs)
    conv = convs[0]
    kept = (state[conv] != b[conv]).float().mean()
    assert 0 < kept <= 0.2 * 3 + 1e-6  # at most the union of three 20% trims
    for name in state:
        if name not in params:
            assert torch.equal(state[name], b[name]), name


@pytest.mark.parametrize("method", ["task-arithmetic", "ties", "opcm"])
def test_task_vector_methods_need_a_base(srcs, method):
    with pytest.raises(GraspError, match="pass base with"):
        GraspMerger.from_pretrained([str(s) for s in srcs], target="digits-eras", method=method,
                                    initial_epochs=0, finetune_epochs=0, eval_sources=False)


# --- Fisher ---------------------------------------------------------------------------------


def test_fisher_merge_by_hand():
    thetas = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])]
    fishers = [torch.tensor([1.0, 3.0]), torch.tensor([6.0, 2.0])]
    # plain weighting: [(1*1 + 6*3) / 7, (3*2 + 2*6) / 5]
    plain = merge_math.fisher_merge(thetas, fishers, minimal_fisher_weight=0.0)
    torch.testing.assert_close(plain, torch.tensor([19 / 7, 18 / 5]))
    # normalised by ||F_k|| (sqrt(10) and 2 sqrt(10)): model 2's Fisher counts half -> [20/8, 24/8]
    coefs = [merge_math.fisher_coefficient(float(f.norm()), 0.0) for f in fishers]
    normed = merge_math.fisher_merge(thetas, fishers, coefficients=coefs, minimal_fisher_weight=0.0)
    torch.testing.assert_close(normed, torch.tensor([2.5, 3.0]))
    # a zero Fisher everywhere falls back to the plain mean through the epsilon
    zero = merge_math.fisher_merge(thetas, [torch.zeros(2)] * 2)
    torch.testing.assert_close(zero, torch.tensor([2.0, 4.0]))


def test_fisher_objective_gradient_by_hand():
    # d/dz_j sum_y sqrt(p_y) log p_y (p detached) = sqrt(p_j) - p_j * sum_y sqrt(p_y)
    z = torch.tensor([[0.5, -1.0, 2.0]], requires_grad=True)
    merge_math.fisher_objective(z).backward()
    p = torch.softmax(z.detach(), -1)
    torch.testing.assert_close(z.grad, p.sqrt() - p * p.sqrt().sum())


def test_fisher_method_is_a_convex_combination(srcs):
    result = _run(srcs, "fisher", batch_size=64)
    sds = [_weights(s) for s in srcs]
    state = result.model.state_dict()
    params = _param_names(result)
    strictly_inside = 0
    for name in params:
        stack = torch.stack([sd[name] for sd in sds])
        t = state[name]
        assert torch.isfinite(t).all(), name
        assert (t >= stack.min(0).values - 1e-6).all() and (t <= stack.max(0).values + 1e-6).all(), name
        strictly_inside += not torch.allclose(t, stack.mean(0), atol=1e-6)
    assert strictly_inside > 0  # the Fisher weights are not uniform
    for name, t in state.items():
        if name not in params and t.is_floating_point():  # buffers: the uniform average
            torch.testing.assert_close(t, torch.stack([sd[name] for sd in sds]).mean(0), rtol=0, atol=1e-6)


# --- OPCM -------------------------------------------------------------------------------


def test_opcm_split_rank_and_projection_by_hand():
    s = torch.tensor([3.0, 1.9, 1.8, 1.7, 1.6])  # cumulative shares .30 .49 .67 ...: first > .5 at index 2
    assert merge_math.opcm_split_rank(s, 0.5) == 2
    assert merge_math.opcm_split_rank(torch.tensor([4.0, 1.0]), 0.5) == 0
    previous = torch.zeros(5, 6)
    previous[range(5), range(5)] = s  # U = I, V = first 5 columns of I
    task = torch.arange(30.0).reshape(5, 6) + 1
    expected = task.clone()
    expected[:2, :2] = 0  # the principal block (r = 2)
    expected[range(5), range(5)] = 0  # every u_i v_i^T
    torch.testing.assert_close(merge_math.opcm_project(previous, task, 0.5), expected)


def _fusionbench_projection(previous, task, alpha):
    """FusionBench's merge_linear_weights projection, full SVD bases."""
    u, s, vh = torch.linalg.svd(previous.double(), full_matrices=True)
    v = vh.T
    r = int((s.cumsum(0) / s.sum() > alpha).float().argmax())
    p = u.T @ task.double() @ v
    p.diagonal().fill_(0)
    p[:r, :r] = 0
    return (u @ p @ v.T).float()


def test_opcm_projection_is_orthogonal_to_the_principal_subspace():
    g = torch.Generator().manual_seed(0)
    q1, _ = torch.linalg.qr(torch.randn(7, 5, generator=g))
    q2, _ = torch.linalg.qr(torch.randn(5, 5, generator=g))
    # singular values 5, 3, 1, .5, .1: cumulative shares .52 .83 .94 ... -> r = 2 at alpha .85
    previous = q1 @ torch.diag(torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1])) @ q2.T
    task = torch.randn(7, 5, generator=g)
    cleaned = merge_math.opcm_project(previous, task, 0.85)
    u, s, vh = torch.linalg.svd(previous.double(), full_matrices=False)
    r = merge_math.opcm_split_rank(s, 0.85)
    assert r == 2
    coords = u.T @ cleaned.double() @ vh.T
    assert coords[:r, :r].abs().max() < 1e-5  # nothing left in the principal subspace
    assert coords.diagonal().abs().max() < 1e-5  # nor on any u_i v_i^T
    assert (cleaned - task).norm() < task.norm()  # and something is kept
    torch.testing.assert_close(cleaned, _fusionbench_projection(previous, task, 0.85), rtol=0, atol=1e-5)
    # conv kernels are projected as (out, in*kh*kw) matrices; 1-D parameters are added as they are
    conv_prev, conv_task = torch.randn(4, 2, 3, 3, generator=g), torch.randn(4, 2, 3, 3, generator=g)
    stepped = merge_math.opcm_update(conv_prev, conv_task, 0.5)
    torch.testing.assert_close(stepped - conv_prev, merge_math.opcm_project(
        conv_prev.reshape(4, -1), conv_task.reshape(4, -1), 0.5).reshape(4, 2, 3, 3))
    bias = torch.randn(4, generator=g)
    torch.testing.assert_close(merge_math.opcm_update(bias, bias, 0.5), 2 * bias)


def test_opcm_method_changes_weights_and_rescales(srcs, base):
    result = _run(srcs, "opcm", base=base)
    b, sds = _weights(base), [_weights(s) for s in srcs]
    state = result.model.state_dict()
    params = _param_names(result)
    for name in params:
        assert torch.isfinite(state[name]).all(), name
    conv = next(n for n in params if state[n].dim() == 4)
    for sd in [b, *sds]:
        assert not torch.allclose(state[conv], sd[conv])
    # the adaptive scaling: ||merged - base|| equals the mean of the sources' task-vector norms
    def norm(sd):
        return torch.sqrt(sum((sd[n].double() - b[n].double()).square().sum() for n in params))
    merged_norm, mean_norm = norm(state), torch.stack([norm(sd) for sd in sds]).mean()
    assert abs(float(merged_norm / mean_norm) - 1) < 1e-4
    for name in state:
        if name not in params:
            assert torch.equal(state[name], b[name]), name
