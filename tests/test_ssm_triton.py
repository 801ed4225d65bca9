"""Triton selective-scan kernels vs the float64 sequential reference, on Triton's CPU interpreter.

Triton decides "interpreted or compiled" when a function is decorated with ``triton.jit``: for its own
library functions (``tl.sum``, ``tl.sigmoid``) at ``import triton``, for ours on first use
(foundation.ssm_triton decorates lazily). So this module imports triton with ``TRITON_INTERPRET=1`` (at
collection, before any test runs; nothing else in the suite imports triton) and restores the variable at
once; each test here sets it again through monkeypatch, so no other test sees it.
The interpreter costs about a millisecond per tensor op, hence the small shapes; they still cross several
chunks (8 steps each under the interpreter), mask channels (d not a multiple of the channel block), pad
the state size (n = 5) and end mid-chunk (odd L).

Tolerances: outputs and the last state within 1e-4 (absolute and relative) of the float64 reference,
gradients within 1e-4 of the gradient's own scale; bf16 inputs within 2e-2.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

from foundation.bimamba import BiMambaBlock
from foundation.model import EEGMambaConfig
from foundation.ssm import SCAN_BACKEND_ENV, bidirectional_scan, selective_scan, selective_scan_backend, selective_scan_ref

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

from foundation import ssm_triton  # noqa: E402

T = ssm_triton.INTERPRET_TIME_BLOCK


@pytest.fixture(autouse=True)
def interpret(monkeypatch, one_thread):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv(SCAN_BACKEND_ENV, raising=False)
    saved = dict(ssm_triton.TUNING)
    yield
    ssm_triton.TUNING.update(saved)


def _inputs(b, d, n, l, g, *, dtype=torch.float32, seed=0, B_dims=4):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    Bshape = {4: (b, g, n, l), 3: (b, n, l), 2: (d, n)}[B_dims]
    return dict(
        u=r(b, d, l).to(dtype), delta=(0.5 * r(b, d, l)).to(dtype), A=-(0.5 + torch.rand(d, n, generator=gen)),
        B=r(*Bshape).to(dtype), C=r(*Bshape).to(dtype), D=r(d), z=r(b, d, l).to(dtype), delta_bias=0.1 * r(d),
    )


def _triton(*args, **kwargs):
    return selective_scan(*args, backend="triton", **kwargs)


def _run(fn, t, keys, softplus, grads=True, reverse=False):
    """Forward (+ backward with random cotangents on y and last_state) of ``fn`` on leaf copies of ``t``."""
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in t.items()}
    kw = {k: leaves[k] for k in keys if k in ("D", "z", "delta_bias")}
    y, last = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], delta_softplus=softplus,
                 return_last_state=True, reverse=reverse, **kw)
    if not grads:
        return y, last, {}
    gen = torch.Generator().manual_seed(1)
    gy, gl = torch.randn(y.shape, generator=gen), torch.randn(last.shape, generator=gen)
    (y.float() * gy).sum().add((last.float() * gl).sum()).backward()
    return y, last, {k: leaves[k].grad for k in ("u", "delta", "A", "B", "C", *kw)}


def _assert_matches(t, keys, softplus, *, atol=1e-4, rtol=1e-4, grad_tol=None, reverse=False):
    y, last, g = _run(_triton, t, keys, softplus, reverse=reverse)
    # The reference in float64 (inputs upcast): the Triton kernels accumulate in float32.
    t64 = {k: v.double() for k, v in t.items()}
    yr, lr, gr = _run(selective_scan_ref, t64, keys, softplus, reverse=reverse)
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
    _assert_matches(_inputs(2, 3, 5, 37, 1, B_dims=3), ("D", "z", "delta_bias"), True)


def test_grouped_bare_recurrence():
    """Grouped B/C [b, 2, n, l] and none of the options: the bare recurrence y = C . h."""
    _assert_matches(_inputs(1, 4, 4, 19, 2), (), False)


@pytest.mark.parametrize("mode", ["native", "flip"])
def test_reverse_scan_matches_the_reference_and_flip_scan_flip(mode):
    """reverse=True against the reference scanned backwards, and against flip(scan(flip(inputs))) on both
    the Triton and the torch backend; both implementations of the in-register reverse scan."""
    ssm_triton.TUNING["reverse_scan"] = mode
    t = _inputs(1, 3, 4, 21, 1, B_dims=3)
    _assert_matches(t, ("D", "z", "delta_bias"), True, reverse=True)
    flip = lambda x: x.flip(-1)  # noqa: E731
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"])
    kw = dict(D=t["D"], z=t["z"], delta_bias=t["delta_bias"], delta_softplus=True, return_last_state=True)
    for backend in ("triton", "torch"):
        y, last = selective_scan(*args, backend=backend, reverse=True, **kw)
        yf, lastf = selective_scan(*map(flip, args[:2]), t["A"], *map(flip, args[3:]), backend=backend,
                                   **{**kw, "z": flip(t["z"])})
        torch.testing.assert_close(y, flip(yf), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(last, lastf, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("segments", [2, 3])
def test_state_passing_segments(segments):
    """The chunks of a row split into segments run independently, the entering states and adjoints carried
    across them afterwards (the batch-1 / very long L variant): same outputs and gradients, both directions."""
    ssm_triton.TUNING["segments"] = segments
    t = _inputs(1, 2, 4, 5 * T + 3, 1, B_dims=3)
    _assert_matches(t, ("D", "z", "delta_bias"), True)
    _assert_matches(t, ("D", "delta_bias"), True, reverse=True)


def test_trailing_padding_is_bit_exact_and_interior_holes_within_tolerance():
    """delta = 0 after the last real step (what BiMambaBlock writes at trailing padding) leaves the last state
    and every real output bit-identical, forward and reverse, whatever L (the launch configuration does not
    depend on L). An interior hole is the identity map too, but the scan's tree may group the real steps
    around it differently on a GPU: real outputs agree with the sequence without the hole to 1e-5."""
    t = _inputs(1, 2, 4, 2 * T + 5, 1, B_dims=3)
    l, tail = t["u"].shape[-1], 14
    t["delta"] = t["delta"].abs()
    t["delta"][..., tail:] = 0.0
    prefix = {k: (v[..., :tail] if v.dim() >= 3 and v.shape[-1] == l else v) for k, v in t.items()}
    y, last, _ = _run(_triton, t, (), False, grads=False)
    y_pre, last_pre, _ = _run(_triton, prefix, (), False, grads=False)
    assert torch.equal(last, last_pre) and torch.equal(y[..., :tail], y_pre), "trailing padding changed real results"
    # Reverse direction: the padding comes first; the state entering the real steps is exactly zero.
    yr, _, _ = _run(_triton, t, (), False, grads=False, reverse=True)
    yr_pre, _, _ = _run(_triton, prefix, (), False, grads=False, reverse=True)
    assert torch.equal(yr[..., :tail], yr_pre)
    assert ssm_triton.launch_config(1, 1, 2, 4, l, 1).constexprs() == ssm_triton.launch_config(1, 1, 2, 4, 3 * l, 1).constexprs()
    # Interior hole spanning a chunk boundary: the hole's outputs repeat the step before it (C held fixed).
    hole = slice(6, 11)
    t["delta"][..., hole] = 0.0
    t["u"][..., hole] = 0.0
    t["C"][..., hole] = t["C"][..., 5:6]
    y, last, _ = _run(_triton, t, (), False, grads=False)
    for s in range(hole.start, hole.stop):
        torch.testing.assert_close(y[..., s], y[..., 5], atol=0, rtol=1e-5)
    keep = [i for i in range(l) if not hole.start <= i < hole.stop]
    squeezed = {k: (v[..., keep] if v.dim() >= 3 and v.shape[-1] == l else v) for k, v in t.items()}
    y_sq, last_sq, _ = _run(_triton, squeezed, (), False, grads=False)
    torch.testing.assert_close(y[..., keep], y_sq, atol=0, rtol=1e-5)
    torch.testing.assert_close(last, last_sq, atol=0, rtol=1e-5)


def test_extreme_delta():
    """Raw delta from -30 to 40 through bias + softplus (both sides of the threshold 20) and decays that
    underflow to 0: no inf/nan, and the same outputs and gradients as the reference."""
    t = _inputs(1, 2, 4, 13, 1, B_dims=3)
    gen = torch.Generator().manual_seed(3)
    t["delta"] = torch.empty(1, 2, 13).uniform_(-30.0, 40.0, generator=gen)
    t["A"] = t["A"] * 20.0
    _assert_matches(t, ("D", "delta_bias"), True)


def test_bf16_inputs_accumulate_in_float32():
    t = _inputs(1, 2, 4, 21, 1, dtype=torch.bfloat16, B_dims=3)
    # Compare against the reference on the same bf16-rounded inputs: only float32-vs-float64 accumulation and
    # the final bf16 rounding of y / gradients differ.
    _assert_matches(t, ("D", "z"), False, atol=2e-2, rtol=2e-2, grad_tol=(2e-2, 2e-2))


def test_dispatcher_forced_triton_time_invariant_B_and_mixed_groups():
    """Through selective_scan(backend="triton"): time-invariant B [d, n] with ungrouped C [b, n, l]."""
    t = _inputs(1, 2, 3, 9, 1, B_dims=2)
    t["C"] = torch.randn(1, 3, 9, generator=torch.Generator().manual_seed(4))
    assert selective_scan_backend(t["u"], "triton") == "triton"
    y, last, g = _run(_triton, t, ("D",), True)
    yr, lr, gr = _run(selective_scan_ref, t, ("D",), True)
    torch.testing.assert_close(y, yr, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last, lr, atol=1e-5, rtol=1e-4)
    for k in gr:
        torch.testing.assert_close(g[k], gr[k], atol=1e-4, rtol=1e-4, msg=lambda m, k=k: f"gradient of {k}: {m}")


def test_bidirectional_scan_one_launch_matches_two_flipped_scans():
    """Both directions in one launch over unflipped tensors, with a padding mask, against two reference
    scans (the reverse one on flipped copies) with delta zeroed at padding: outputs and every gradient."""
    gen = torch.Generator().manual_seed(6)
    b, d, n, l = 2, 2, 4, 19
    t = dict(u=torch.randn(2, b, d, l, generator=gen), delta=torch.randn(2, b, d, l, generator=gen),
             A=-(0.5 + torch.rand(2, d, n, generator=gen)), B=torch.randn(2, b, n, l, generator=gen),
             C=torch.randn(2, b, n, l, generator=gen), D=torch.randn(2, d, generator=gen),
             bias=0.1 * torch.randn(2, d, generator=gen))
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[1, 13:] = False
    mask[0, 4:7] = False
    gy = torch.randn(2, b, d, l, generator=gen)
    results = {}
    for backend in ("triton", "ref"):
        leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
        # u and delta as strided views (what the fused block passes): the kernels must not assume a layout.
        u, delta = (leaves[k].transpose(2, 3).contiguous().transpose(2, 3) for k in ("u", "delta"))
        assert not delta.is_contiguous()
        y = bidirectional_scan(u, delta, leaves["A"], leaves["B"], leaves["C"], leaves["D"], leaves["bias"], mask,
                               backend=backend)
        (y * gy).sum().backward()
        results[backend] = (y, {k: v.grad for k, v in leaves.items()})
    torch.testing.assert_close(results["triton"][0], results["ref"][0], atol=1e-5, rtol=1e-4)
    for k, grad in results["ref"][1].items():
        torch.testing.assert_close(results["triton"][1][k], grad, atol=1e-4, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def test_bimamba_block_triton_matches_torch_with_padding():
    """A whole padded BiMamba block (both directions, every parameter's gradient) on the Triton backend."""
    torch.manual_seed(0)
    block = BiMambaBlock(2, d_state=4, scan_backend="torch")
    with torch.no_grad():  # steps of ~1 (not Mamba's initial ~0.01): the scan, not D u, then shapes the output
        block.fwd.dt_proj.bias.fill_(1.0)
        block.bwd.dt_proj.bias.fill_(0.5)
    x = torch.randn(2, 11, 2)
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
    scale = max(g.abs().max().item() for g in outs["torch"][2].values())  # float32 sums: tolerance on that scale
    for name, grad in outs["torch"][2].items():
        torch.testing.assert_close(outs["triton"][2][name], grad, atol=1e-4 * max(1.0, scale), rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_backend_selection_and_errors(monkeypatch):
    u = torch.zeros(1, 2, 3)
    monkeypatch.delenv("TRITON_INTERPRET")
    from foundation import ssm_cpu

    assert selective_scan_backend(u) == ("cpu" if ssm_cpu.available() else "torch")  # CPU tensors: a CPU scan
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
    with pytest.raises(ValueError, match="powers of two"):
        ssm_triton.TUNING["block_d"] = 3
        ssm_triton.launch_config(1, 1, 4, 4, 16, 1)
