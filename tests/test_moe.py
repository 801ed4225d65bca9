"""TaskMoE: routing, universal expert, auxiliary loss, batched dispatch, padding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foundation.moe import TaskMoE

pytestmark = pytest.mark.usefixtures("one_thread")

D, E, K = 16, 4, 2


def _moe(**kw) -> TaskMoE:
    torch.manual_seed(0)
    return TaskMoE(D, n_experts=E, top_k=K, n_tasks=3, **kw).eval()


def test_output_equals_the_gated_mixture_computed_by_hand():
    moe = _moe()
    x = torch.randn(2, 7, D)
    task = torch.tensor([0, 2])
    y, aux, load = moe(x, task)
    h = moe.norm(x.reshape(-1, D))
    t = task.repeat_interleave(7)
    logits = moe.gate(torch.cat([h, moe.task_embed(t)], -1))
    vals, idx = logits.topk(K, dim=-1)
    g = torch.softmax(vals, -1)
    expect = torch.stack([
        sum(g[i, j] * moe.experts[int(idx[i, j])](h[i]) for j in range(K)) + (1 - g[i].max()) * moe.universal(h[i])
        for i in range(h.shape[0])
    ])
    torch.testing.assert_close(y, x + expect.reshape(2, 7, D), rtol=1e-5, atol=1e-6)
    assert load.shape == (E,) and torch.isclose(load.sum(), torch.tensor(float(K)))
    counts = torch.bincount(idx.flatten(), minlength=E).float() / h.shape[0]
    torch.testing.assert_close(load, counts)


def test_every_real_token_goes_to_exactly_top_k_distinct_experts():
    moe = _moe().train()
    h = torch.randn(500, D)
    top_idx, top_gate, clean, _ = moe.route(h, torch.zeros(500, dtype=torch.long))
    assert top_idx.shape == (500, K) and clean.shape == (500, E)
    assert all(len(set(row)) == K for row in top_idx.tolist())
    torch.testing.assert_close(top_gate.sum(-1), torch.ones(500))
    assert (top_gate >= 0).all()


def test_universal_expert_contributes_to_every_real_token():
    moe = _moe()
    x = torch.randn(3, 11, D)
    y, _, _ = moe(x)
    with torch.no_grad():
        moe.universal.fc2.weight.zero_()
        moe.universal.fc2.bias.zero_()
    y0, _, _ = moe(x)
    changed = (y - y0).abs().amax(-1)
    assert (changed > 1e-6).all(), "zeroing the universal expert must change every token"


def _set_router(moe: TaskMoE, balanced: bool) -> None:
    """Balanced: token feature f picks experts f and f-1. Collapsed: every token picks experts 0 and 1."""
    with torch.no_grad():
        moe.gate.weight.zero_()
        if balanced:
            for e in range(E):
                moe.gate.weight[e, e] = 10.0
                moe.gate.weight[e, (e + 1) % E] = 5.0
        else:
            moe.task_embed.weight.fill_(1.0)
            moe.gate.weight[0, D:] = 10.0
            moe.gate.weight[1, D:] = 5.0


def test_aux_loss_is_finite_and_lower_for_balanced_than_collapsed_routing():
    x = F.one_hot(torch.arange(64) % E, D).float().reshape(1, 64, D) * 4.0
    results = {}
    for balanced in (True, False):
        moe = _moe()
        _set_router(moe, balanced)
        _, aux, load = moe(x)
        assert torch.isfinite(aux)
        results[balanced] = (float(aux.detach()), load)
    torch.testing.assert_close(results[True][1], torch.full((E,), K / E))
    torch.testing.assert_close(results[False][1], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert results[True][0] < results[False][0]


def test_aux_loss_coefficients_and_gradients_reach_both_gates():
    moe = _moe(balance_coef=0.0, z_coef=0.0)
    _, aux, _ = moe(torch.randn(2, 5, D))
    assert float(aux.detach()) == 0.0
    moe = _moe().train()
    y, aux, _ = moe(torch.randn(4, 32, D), torch.tensor([0, 1, 2, 0]))
    (aux + y.pow(2).mean()).backward()
    assert moe.gate.weight.grad.abs().sum() > 0
    assert moe.noise_gate.weight.grad.abs().sum() > 0  # through Shazeer's smooth load estimate
    assert moe.task_embed.weight.grad[1].abs().sum() > 0


def test_noise_only_in_training():
    moe = _moe()
    x = torch.randn(2, 9, D)
    assert torch.equal(moe(x)[0], moe(x)[0])
    moe.train()
    torch.manual_seed(1)
    a = moe(x)[0]
    torch.manual_seed(2)
    b = moe(x)[0]
    assert not torch.equal(a, b)


def test_padded_tokens_are_untouched_and_not_counted():
    moe = _moe()
    x = torch.randn(2, 10, D)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, :3] = False
    y, aux, load = moe(x, None, mask)
    assert torch.equal(y[~mask], x[~mask])
    garbage = x.clone()
    garbage[~mask] = float("nan")
    y2, aux2, load2 = moe(garbage, None, mask)
    assert torch.equal(y2[mask], y[mask]) and torch.equal(aux2, aux) and torch.equal(load2, load)
    # the load is a fraction of the 13 real tokens only
    assert torch.allclose(load * 13, (load * 13).round()) and torch.isclose(load.sum(), torch.tensor(float(K)))
    # an all-padding batch passes through
    y3, aux3, load3 = moe(x, None, torch.zeros(2, 10, dtype=torch.bool))
    assert torch.equal(y3, x) and float(aux3) == 0.0 and load3.sum() == 0


def test_task_ids_default_to_zero_and_change_the_output():
    moe = _moe()
    x = torch.randn(2, 8, D)
    y_none, _, _ = moe(x)
    y0, _, _ = moe(x, torch.zeros(2, dtype=torch.long))
    y1, _, _ = moe(x, torch.ones(2, dtype=torch.long))
    assert torch.equal(y_none, y0)
    assert (y1 - y0).abs().amax() > 1e-4


def test_grouped_dispatch_is_batched_one_call_per_expert_on_a_large_batch():
    moe = _moe(dispatch="grouped")
    calls = []
    for e in moe.experts:
        e.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    x = torch.randn(16, 4096, D)  # 65k tokens
    with torch.no_grad():
        y, aux, load = moe(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert len(calls) <= E, "each expert must be called once on its whole token group"
    assert sum(calls) == 16 * 4096 * K


def test_bad_inputs_raise_value_errors_naming_the_argument():
    moe = _moe()
    with pytest.raises(ValueError, match="task_ids"):
        moe(torch.randn(2, 3, D), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="mask"):
        moe(torch.randn(2, 3, D), None, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="x must be"):
        moe(torch.randn(2, 3, D + 1))
    with pytest.raises(ValueError, match="top_k"):
        TaskMoE(D, n_experts=2, top_k=2)


def test_drop_path_drops_whole_samples_in_training_only():
    moe = _moe(drop_path=0.5).train()
    x = torch.randn(64, 4, D)
    torch.manual_seed(0)
    y, _, _ = moe(x)
    unchanged = (y == x).all(-1).all(-1)
    assert 0 < int(unchanged.sum()) < 64  # some samples lost the branch, others kept it
    moe.eval()
    assert not (moe(x)[0] == x).all(-1).all(-1).any()


@pytest.mark.parametrize("training", [False, True])
def test_dense_dispatch_equals_grouped_dispatch(training):
    """The static-shape dense dispatch and the grouped one give the same outputs, auxiliary loss, load and
    gradients (to 1e-5 relative in float32: only the order of the sums differs), with padding, several
    tasks, gate noise and drop-path drawn identically (same seed: routing is shared, so the draws are too)."""
    x = torch.randn(3, 13, D, generator=torch.Generator().manual_seed(5))
    mask = torch.ones(3, 13, dtype=torch.bool)
    mask[1, 9:] = False
    mask[2, :4] = False
    task = torch.tensor([0, 2, 1])
    results = {}
    for dispatch in ("dense", "grouped"):
        moe = _moe(dispatch=dispatch, drop_path=0.3).train(training)
        torch.manual_seed(11)
        xi = x.clone().requires_grad_()
        y, aux, load = moe(xi, task, mask)
        (y.square().sum() + aux).backward()
        grads = {n: p.grad.clone() for n, p in moe.named_parameters() if p.grad is not None}
        results[dispatch] = (y, aux, load, xi.grad, grads)
    dense, grouped = results["dense"], results["grouped"]
    for a, b in zip(dense[:4], grouped[:4]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert dense[4].keys() == grouped[4].keys()
    for name, grad in grouped[4].items():
        torch.testing.assert_close(dense[4][name], grad, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_dense_dispatch_needs_no_host_sync():
    """The default (dense) path runs the same operations whatever the routing: no nonzero, no item/tolist,
    no bincount read on the host."""
    moe = _moe().train()
    x = torch.randn(2, 9, D)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.profiler.profile() as prof:
        y, aux, _ = moe(x, None, mask)
        (y.sum() + aux).backward()
    names = {e.name for e in prof.events()}
    assert not names & {"aten::nonzero", "aten::_local_scalar_dense", "aten::item", "aten::bincount", "aten::_unique2"}
