"""BiMambaBlock: shapes, Mamba initialisation, padding invariance in both directions, gradients, drop-path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from foundation.bimamba import BiMambaBlock, DropPath


def _block(d_model=16, seed=0, **kw):
    torch.manual_seed(seed)
    return BiMambaBlock(d_model, **kw).eval()


def _interior_mask(b=3, l=40):
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[0, 5:9] = False  # a hole in the middle
    mask[0, 30:] = False  # and a padded tail
    mask[1, :6] = False  # padded head
    mask[2, ::3] = False  # every third token
    return mask


def test_shape_and_parameters():
    blk = _block(24, d_state=8, expand=2)
    x = torch.randn(2, 37, 24)
    y = blk(x)
    assert y.shape == (2, 37, 24) and y.dtype == torch.float32
    assert blk.d_inner == 48 and blk.dt_rank == math.ceil(24 / 16)
    # Separate conv/SSM parameters per direction, shared in/out projections.
    assert blk.fwd.A_log.shape == blk.bwd.A_log.shape == (48, 8)
    assert blk.fwd.conv1d.weight is not blk.bwd.conv1d.weight
    assert blk.in_proj.weight.shape == (96, 24) and blk.out_proj.weight.shape == (24, 48)


def test_mamba_initialisation():
    blk = _block(64, d_state=16, dt_min=1e-3, dt_max=1e-1)
    for direction in (blk.fwd, blk.bwd):
        A = -torch.exp(direction.A_log)
        assert torch.allclose(A, -torch.arange(1, 17.0).expand(128, 16))
        assert torch.all(direction.D == 1)
        dt = F.softplus(direction.dt_proj.bias)
        assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
        # log-uniform: the median of log(dt) sits near the middle of [log 1e-3, log 1e-1]
        assert abs(dt.log().median().item() - math.log(1e-2)) < 0.8
    assert not torch.equal(blk.fwd.dt_proj.bias, blk.bwd.dt_proj.bias)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_padding_garbage_does_not_change_real_outputs(norm, cpu_scan_backend):
    blk = _block(16, norm=norm)
    mask = _interior_mask()
    x = torch.randn(3, 40, 16)
    y = blk(x, mask)
    garbage = x.clone()
    garbage[~mask] = torch.randn(int((~mask).sum()), 16) * 1e3
    y2 = blk(garbage, mask)
    torch.testing.assert_close(y[mask], y2[mask], rtol=0, atol=1e-6)
    # Even inf/nan at padding stays out of the real positions.
    garbage[~mask] = float("nan")
    garbage[0, 6] = float("inf")
    y3 = blk(garbage, mask)
    torch.testing.assert_close(y[mask], y3[mask], rtol=0, atol=1e-6)
    # Padded positions leave the block unchanged.
    torch.testing.assert_close(y[~mask], x[~mask])


def test_padding_invariance_in_both_directions_per_position(cpu_scan_backend):
    """Changing one padded token alters nothing; changing one real token alters real tokens on BOTH sides."""
    blk = _block(16)
    mask = torch.ones(1, 30, dtype=torch.bool)
    mask[0, 14:17] = False
    x = torch.randn(1, 30, 16)
    y = blk(x, mask)
    x_pad = x.clone()
    x_pad[0, 15] += 100.0
    torch.testing.assert_close(blk(x_pad, mask)[mask], y[mask], rtol=0, atol=1e-6)
    x_real = x.clone()
    x_real[0, 10] += 3.0 * torch.randn(16)  # not a constant shift, which the LayerNorm would remove
    diff = (blk(x_real, mask) - y).abs().sum(-1)[0]
    assert diff[5] > 1e-5 and diff[25] > 1e-5  # before (backward scan) and after (forward scan) the change


def test_end_padding_equals_unpadded_sequence(cpu_scan_backend):
    blk = _block(16)
    x = torch.randn(2, 32, 16)
    mask = torch.ones(2, 32, dtype=torch.bool)
    mask[1, 20:] = False
    y = blk(x, mask)
    torch.testing.assert_close(y[1, :20], blk(x[1:2, :20])[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y[0], blk(x[0:1])[0], rtol=1e-5, atol=1e-6)


def test_all_true_mask_equals_no_mask():
    blk = _block(16)
    x = torch.randn(2, 25, 16)
    torch.testing.assert_close(blk(x, torch.ones(2, 25, dtype=torch.bool)), blk(x), rtol=1e-6, atol=1e-6)


def test_gradients_reach_both_directions_and_not_padding():
    blk = _block(16).train()
    mask = _interior_mask()
    x = torch.randn(3, 40, 16, requires_grad=True)
    y = blk(x, mask)
    (y[mask] ** 2).sum().backward()
    for name, p in blk.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert x.grad[~mask].abs().max() == 0  # real outputs do not depend on padded inputs
    assert x.grad[mask].abs().sum() > 0


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    blk = BiMambaBlock(16, drop_path=0.5)
    ref = BiMambaBlock(16, drop_path=0.0)
    ref.load_state_dict(blk.state_dict())
    x = torch.randn(64, 12, 16)
    blk.eval(), ref.eval()
    torch.testing.assert_close(blk(x), ref(x))
    blk.train(), ref.train()
    torch.manual_seed(1)
    y = blk(x)
    branch = ref(x) - x
    dropped = torch.isclose(y, x, atol=1e-7).flatten(1).all(1)
    kept = torch.isclose(y, x + 2.0 * branch, atol=1e-5).flatten(1).all(1)
    assert bool((dropped | kept).all())  # each sample either drops its whole branch or keeps it scaled 1/(1-p)
    assert 10 < int(dropped.sum()) < 54


def test_drop_path_validation():
    with pytest.raises(ValueError, match="DropPath"):
        DropPath(1.0)


def test_bad_inputs_raise():
    blk = _block(16)
    with pytest.raises(ValueError, match=r"x must be \[b, l, 16\]"):
        blk(torch.randn(2, 10, 8))
    with pytest.raises(ValueError, match="mask must be"):
        blk(torch.randn(2, 10, 16), torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        blk(torch.randn(2, 10, 16), torch.ones(2, 10))
    with pytest.raises(ValueError, match="norm"):
        BiMambaBlock(16, norm="batchnorm")


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd keeps for the backward pass of ``fn()``."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


@pytest.mark.parametrize("mode", ["block", "full", True])
def test_recompute_gives_identical_outputs_and_gradients(mode):
    blk = _block(16, drop_path=0.3).train()
    mask = _interior_mask()
    x = torch.randn(3, 40, 16, requires_grad=True)
    grads = []
    for recompute in (False, mode):
        blk.recompute = recompute
        blk.zero_grad(set_to_none=True)
        x.grad = None
        torch.manual_seed(7)  # same drop-path draw in both runs
        y = blk(x, mask)
        (y[mask] ** 2).sum().backward()
        grads.append((y.detach(), x.grad.clone(), [p.grad.clone() for p in blk.parameters()]))
    (y0, gx0, gp0), (y1, gx1, gp1) = grads
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    torch.testing.assert_close(gx1, gx0, rtol=0, atol=0)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert gx1[~mask].abs().max() == 0  # padding invariance survives the recomputation


def test_recompute_keeps_only_the_block_input():
    blk = _block(16).train()
    x = torch.randn(2, 256, 16, requires_grad=True)
    full = _saved_bytes(lambda: blk(x))
    blk.recompute = "full"
    lean = _saved_bytes(lambda: blk(x))
    # The input x itself (plus parameters, which are not per-token): d_model floats per token.
    assert lean <= x.numel() * 4 + sum(p.numel() * 4 for p in blk.parameters())
    assert full > 8 * x.numel() * 4  # ~17 d_model floats per token without recomputation (fused block)
    with torch.no_grad():  # no graph, no checkpoint: plain forward
        torch.testing.assert_close(blk(x), _block(16)(x))


def test_recompute_validation():
    with pytest.raises(ValueError, match="recompute"):
        BiMambaBlock(16, recompute="sometimes")


def test_fused_block_equals_the_per_direction_path():
    """The fused path (both directions in one autograd function, anti-causal conv, no flipped copies, conv and
    dt recomputed in backward) against the per-direction path on flipped copies (what the ref and mamba_ssm
    scans use), with padding: outputs, input gradient and every parameter's gradient to 1e-5."""
    blk = _block(16, drop_path=0.0).train()
    mask = _interior_mask()
    x = torch.randn(3, 40, 16)
    results = {}
    from foundation import ssm_cpu

    for backend in ("cpu", "torch", "ref") if ssm_cpu.available() else ("torch", "ref"):
        blk.fwd.scan_backend = blk.bwd.scan_backend = backend
        blk.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        y = blk(xi, mask)
        (y[mask] ** 2).sum().backward()
        results[backend] = (y.detach(), xi.grad, {n: p.grad for n, p in blk.named_parameters()})
    per_direction = results.pop("ref")
    for fused in results.values():
        torch.testing.assert_close(fused[0], per_direction[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(fused[1], per_direction[1], rtol=1e-5, atol=1e-6)
        for name, grad in per_direction[2].items():
            torch.testing.assert_close(fused[2][name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_fused_block_keeps_under_half_of_the_per_direction_activations(monkeypatch):
    """Saved for backward per token: the fused path keeps the block inputs, x_proj's small outputs and the
    scan's chunk-start states, not the convs' outputs, dt or the flipped copies (same chunked scan)."""
    blk = _block(32).train()
    x = torch.randn(1, 512, 32, requires_grad=True)
    fused = _saved_bytes(lambda: blk(x))
    monkeypatch.setattr(BiMambaBlock, "_fused", lambda self, xi, z, mask, backend: self._per_direction(xi, z, mask, False))
    per_direction = _saved_bytes(lambda: blk(x))
    assert fused < 0.5 * per_direction, (fused, per_direction)
