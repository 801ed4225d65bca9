"""Triton selective-scan kernels vs the sequential reference, on Triton's CPU interpreter.

Triton decides "interpreted or compiled" when a function is decorated with ``triton.jit``: for its own
library functions (``tl.sum``, ``tl.sigmoid``) at ``import triton``, for ours on first use
(foundation.ssm_triton decorates lazily). So this module imports triton with ``TRITON_INTERPRET=1`` (at
collection, before any test runs; nothing else in the suite imports triton) and restores the variable at
once; each test here sets it again through monkeypatch, so no other test sees it.
The interpreter costs about a millisecond per tensor op, hence the small shapes; they still cross several
saved-state chunks (8 steps each under the interpreter), mask channels (d not a power of 2), pad the state
size (n = 5) and end mid-chunk (odd L).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from foundation.bimamba import BiMambaBlock
from foundation.model import EEGMambaConfig
from foundation.ssm import SCAN_BACKEND_ENV, selective_scan, selective_scan_backend, selective_scan_ref

_IMPORTED_BEFORE = "triton" in sys.modules
_saved = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    triton = pytest.importorskip("triton", reason="triton is not installed (pip install 'eegfm[gpu]' or '.[dev]')")
    import triton.language as tl
finally:
    if _saved is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _saved
pytest.importorskip("numpy", reason="Triton's interpreter needs numpy")
if _IMPORTED_BEFORE and type(tl.sum).__name__ != "InterpretedFunction":
    pytest.skip("triton was imported before this module without TRITON_INTERPRET=1; run these tests in their own "
                "process (TRITON_INTERPRET=1 pytest tests/test_ssm_triton.py)", allow_module_level=True)

from foundation.ssm_triton import INTERPRET_CHUNK, selective_scan_triton  # noqa: E402


@pytest.fixture(autouse=True)
def interpret(monkeypatch, one_thread):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(SCAN_BACKEND_ENV, raising=False)


def _inputs(b, d, n, l, g, *, dtype=torch.float32, seed=0, B_dims=4):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    Bshape = {4: (b, g, n, l), 3: (b, n, l), 2: (d, n)}[B_dims]
    return dict(
        u=r(b, d, l).to(dtype), delta=(0.5 * r(b, d, l)).to(dtype), A=-(0.5 + torch.rand(d, n, generator=gen)),
        B=r(*Bshape).to(dtype), C=r(*Bshape).to(dtype), D=r(d), z=r(b, d, l).to(dtype), delta_bias=0.1 * r(d),
    )


def _run(fn, t, keys, softplus, grads=True):
    """Forward (+ backward with random cotangents on y and last_state) of ``fn`` on leaf copies of ``t``."""
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in t.items()}
    kw = {k: leaves[k] for k in keys if k in ("D", "z", "delta_bias")}
    y, last = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], delta_softplus=softplus,
                 return_last_state=True, **kw)
    if not grads:
        return y, last, {}
    gen = torch.Generator().manual_seed(1)
    gy, gl = torch.randn(y.shape, generator=gen), torch.randn(last.shape, generator=gen)
    (y.float() * gy).sum().add((last.float() * gl).sum()).backward()
    return y, last, {k: leaves[k].grad for k in ("u", "delta", "A", "B", "C", *kw)}


def _assert_matches(t, keys, softplus, *, atol=1e-4, rtol=1e-4, grad_tol=None):
    y, last, g = _run(selective_scan_triton, t, keys, softplus)
    # The reference in float64 (inputs upcast): the Triton kernels accumulate in float32.
    t64 = {k: v.double() for k, v in t.items()}
    yr, lr, gr = _run(selective_scan_ref, t64, keys, softplus)
    assert y.dtype == t["u"].dtype and last.dtype == torch.float32
    torch.testing.assert_close(y.double(), yr.to(y.dtype).double(), atol=atol, rtol=rtol)
    torch.testing.assert_close(last.double(), lr, atol=atol, rtol=rtol)
    gtol = grad_tol or (atol, rtol)
    for k in gr:
        assert g[k].dtype == t[k].dtype and g[k].shape == t[k].shape, k
        scale = gr[k].abs().max().item()
        torch.testing.assert_close(g[k].double(), gr[k].to(g[k].dtype).double(), atol=gtol[0] * max(1.0, scale),
                                   rtol=gtol[1], msg=lambda m, k=k: f"gradient of {k}: {m}")


def test_all_options_odd_length_masked_channels():
    """z, D, delta_bias, softplus, ungrouped B/C; L = 37 crosses 4 chunk boundaries and ends mid-chunk."""
    t = _inputs(2, 6, 5, 37, 1, B_dims=3)
    _assert_matches(t, ("D", "z", "delta_bias"), True)


def test_grouped_bare_recurrence():
    """Grouped B/C [b, 2, n, l] and none of the options: the bare recurrence y = C . h."""
    t = _inputs(1, 8, 4, 19, 2)
    _assert_matches(t, (), False)


def test_padding_steps_leave_state_bit_identical():
    """delta = 0 (what BiMambaBlock writes at padding) carries the state through bit for bit."""
    t = _inputs(1, 4, 4, 2 * INTERPRET_CHUNK + 5, 1, B_dims=3)
    l = t["u"].shape[-1]
    t["delta"] = t["delta"].abs()
    hole = slice(6, 11)  # spans a chunk boundary (8)
    t["delta"][..., hole] = 0.0
    t["u"][..., hole] = 0.0
    t["C"][..., hole] = t["C"][..., 5:6]  # C constant through the hole: y repeats exactly when h does
    tail = 14
    t["delta"][..., tail:] = 0.0
    y, last, _ = _run(selective_scan_triton, t, (), False, grads=False)
    for s in range(hole.start, hole.stop):
        assert torch.equal(y[..., s], y[..., 5]), f"state changed at padded step {s}"
    prefix = {k: (v[..., :tail] if v.dim() >= 3 and v.shape[-1] == l else v) for k, v in t.items()}
    _, last_prefix, _ = _run(selective_scan_triton, prefix, (), False, grads=False)
    assert torch.equal(last, last_prefix), "trailing padding changed the last state"
    # ...and the real steps still agree with the reference.
    yr, lr = selective_scan_ref(*(t[k] for k in ("u", "delta", "A", "B", "C")), return_last_state=True)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last, lr, atol=1e-5, rtol=1e-4)


def test_extreme_delta():
    """Raw delta from -30 to 40 through bias + softplus (both sides of the threshold 20) and decays that
    underflow to 0: no inf/nan, and the same outputs and gradients as the reference."""
    t = _inputs(1, 4, 4, 13, 1, B_dims=3)
    gen = torch.Generator().manual_seed(3)
    t["delta"] = torch.empty(1, 4, 13).uniform_(-30.0, 40.0, generator=gen)
    t["A"] = t["A"] * 20.0
    _assert_matches(t, ("D", "delta_bias"), True)


def test_bf16_inputs_accumulate_in_float32():
    t = _inputs(1, 4, 4, 21, 1, dtype=torch.bfloat16, B_dims=3)
    # Compare against the reference on the same bf16-rounded inputs: only float32-vs-float64 accumulation and
    # the final bf16 rounding of y / gradients differ.
    _assert_matches(t, ("D", "z"), False, atol=2e-2, rtol=2e-2, grad_tol=(2e-2, 2e-2))


def test_dispatcher_forced_triton_time_invariant_B_and_mixed_groups():
    """Through selective_scan(backend="triton"): time-invariant B [d, n] with ungrouped C [b, n, l]."""
    t = _inputs(1, 4, 3, 9, 1, B_dims=2)
    gen = torch.Generator().manual_seed(4)
    t["C"] = torch.randn(1, 3, 9, generator=gen)
    assert selective_scan_backend(t["u"], "triton") == "triton"
    y, last, g = _run(lambda *a, **k: selective_scan(*a, backend="triton", **k), t, ("D",), True)
    yr, lr, gr = _run(selective_scan_ref, t, ("D",), True)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last, lr, atol=1e-5, rtol=1e-4)
    for k in gr:
        torch.testing.assert_close(g[k], gr[k], atol=1e-4, rtol=1e-4, msg=lambda m, k=k: f"gradient of {k}: {m}")


def test_bimamba_block_triton_matches_torch_with_padding():
    """A whole padded BiMamba block (both directions, every parameter's gradient) on the Triton backend."""
    torch.manual_seed(0)
    block = BiMambaBlock(4, d_state=4, scan_backend="torch").double().float()
    x = torch.randn(2, 11, 4)
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[1, 7:] = False
    mask[0, 2:4] = False
    outs = {}
    for backend in ("torch", "triton"):
        block.fwd.scan_backend = block.bwd.scan_backend = backend
        block.zero_grad()
        xi = x.clone().requires_grad_()
        y = block(xi, mask)
        y.square().sum().backward()
        outs[backend] = (y, xi.grad, {n: p.grad.clone() for n, p in block.named_parameters()})
    torch.testing.assert_close(outs["triton"][0], outs["torch"][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs["triton"][1], outs["torch"][1], atol=1e-5, rtol=1e-4)
    for name, grad in outs["torch"][2].items():
        torch.testing.assert_close(outs["triton"][2][name], grad, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_backend_selection_and_errors(monkeypatch):
    u = torch.zeros(1, 2, 3)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert selective_scan_backend(u) == "torch"  # CPU tensors: the chunked scan
    assert selective_scan_backend(u, "ref") == "ref"
    monkeypatch.setenv(SCAN_BACKEND_ENV, "ref")
    assert selective_scan_backend(u) == "ref"
    assert selective_scan_backend(u, "torch") == "torch"  # an explicit backend wins over the variable
    monkeypatch.setenv(SCAN_BACKEND_ENV, "cudnn")
    with pytest.raises(ValueError, match="EEGFM_SCAN_BACKEND"):
        selective_scan_backend(u)
    monkeypatch.delenv(SCAN_BACKEND_ENV)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        selective_scan_backend(u, "triton")
    with pytest.raises(RuntimeError, match="mamba_ssm"):
        selective_scan_backend(u, "mamba_ssm")
    with pytest.raises(ValueError, match="scan_backend"):
        EEGMambaConfig(scan_backend="fast")
    with pytest.raises(ValueError, match="scan_backend"):
        BiMambaBlock(4, scan_backend="fast")
    assert EEGMambaConfig.from_size("tiny", scan_backend="triton").scan_backend == "triton"
