"""The selective scan: our CPU scans (the C kernel and the chunked torch scan) against the sequential reference,
gradients, memory and dispatch."""

from __future__ import annotations

import pytest
import torch

import foundation.ssm as ssm
import foundation.ssm_chunked as ssm_chunked
import foundation.ssm_cpu as ssm_cpu
from foundation.ssm import chunked_scan, selective_scan, selective_scan_backend, selective_scan_ref


def _inputs(b=2, d=8, n=4, l=50, groups=None, dtype=torch.float32, delta_scale=1.0, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    bc_shape = (b, n, l) if groups is None else (b, groups, n, l)
    t = dict(
        u=torch.randn(b, d, l, generator=g, dtype=dtype),
        delta=torch.randn(b, d, l, generator=g, dtype=dtype) * delta_scale,
        A=-torch.rand(d, n, generator=g, dtype=dtype) * 4 - 0.1,
        B=torch.randn(*bc_shape, generator=g, dtype=dtype),
        C=torch.randn(*bc_shape, generator=g, dtype=dtype),
        D=torch.randn(d, generator=g, dtype=dtype),
        z=torch.randn(b, d, l, generator=g, dtype=dtype),
        delta_bias=torch.randn(d, generator=g, dtype=dtype) * 0.5,
    )
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|: relative error on the scale of the output."""
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("l", [1, 7, 50, 333])
@pytest.mark.parametrize("extras", [False, True])
def test_forward_matches_reference(groups, l, extras, cpu_scan_backend):
    t = _inputs(l=l, groups=groups)
    kw = dict(D=t["D"], z=t["z"], delta_bias=t["delta_bias"], delta_softplus=True) if extras else {}
    if not extras:
        t["delta"] = t["delta"].abs()  # without softplus the step must still be a sensible positive size
    args = [t[k] for k in ("u", "delta", "A", "B", "C")]
    y, last = selective_scan(*args, return_last_state=True, **kw)
    y_ref, last_ref = selective_scan_ref(*args, return_last_state=True, **kw)
    assert y.shape == (2, 8, l) and y.dtype == torch.float32
    assert last.shape == (2, 8, 4)
    assert _rel(y, y_ref) < 1e-5
    assert _rel(last, last_ref) < 1e-5


@pytest.mark.parametrize("chunk", [1, 3, 16, 64, 128])
def test_chunk_sizes_agree(chunk):
    t = _inputs(l=100)
    args = [t[k] for k in ("u", "delta", "A")] + [t["B"][:, None], t["C"][:, None]]
    args[1] = args[1].abs()
    y, last = chunked_scan(*args, chunk_size=chunk)
    y_ref, last_ref = selective_scan_ref(*[t[k] for k in ("u",)], args[1], t["A"], t["B"], t["C"], return_last_state=True)
    assert _rel(y, y_ref) < 1e-5 and _rel(last, last_ref) < 1e-5


@pytest.mark.parametrize(
    "delta_kind",
    ["tiny", "huge", "mixed"],
)
def test_long_sequence_extreme_dt_fp32(delta_kind, monkeypatch, cpu_scan_backend):
    """L = 4096 in fp32 against a float64 reference, with step sizes from 1e-6 to 1e2.

    Tiny steps keep the state nearly undecayed over thousands of steps (accumulation error); huge steps give
    exp(delta A) ~ exp(-400), where a log-space (exp(-cumsum)) scan overflows. Both must stay within 1e-4.
    """
    b, d, n, l = 1, 6, 4, 4096
    g = torch.Generator().manual_seed(1)
    if delta_kind == "tiny":
        delta = torch.full((b, d, l), 1e-6) * (1 + torch.rand(b, d, l, generator=g))
    elif delta_kind == "huge":
        delta = 20 + 80 * torch.rand(b, d, l, generator=g)
    else:
        delta = torch.exp(torch.empty(b, d, l).uniform_(-14, 4.6, generator=g))
    t = _inputs(b=b, d=d, n=n, l=l, seed=2)
    args64 = [t["u"].double(), delta.double(), t["A"].double(), t["B"].double(), t["C"].double()]
    y_ref, last_ref = selective_scan_ref(*args64, D=t["D"].double(), return_last_state=True)
    y, last = selective_scan(t["u"], delta, t["A"], t["B"], t["C"], D=t["D"], return_last_state=True)
    assert torch.isfinite(y).all() and torch.isfinite(last).all()
    assert _rel(y, y_ref) < 1e-4
    assert _rel(last, last_ref) < 1e-4
    # And the fp32 sequential reference agrees with the fp32 fast scan (the contract's "same as ref" check).
    y_ref32 = selective_scan_ref(t["u"], delta, t["A"], t["B"], t["C"], D=t["D"])
    assert _rel(y, y_ref32) < 1e-4
    # The single-chunk-group path (taken at realistic b * d) over the same sequence.
    monkeypatch.setattr(ssm_chunked, "BUFFER_ELEMENTS", 1)
    y1, last1 = selective_scan(t["u"], delta, t["A"], t["B"], t["C"], D=t["D"], return_last_state=True)
    assert _rel(y1, y_ref) < 1e-4 and _rel(last1, last_ref) < 1e-4


@pytest.mark.parametrize("buffer", [1, 200, 10**6])
def test_gradcheck_float64(buffer, monkeypatch):
    # Chunk 4 with l=13 pads the tail (4 chunks). buffer=1: one chunk per group (the single-chunk fast
    # path); 200: groups of 2 chunks (the within-group chunk carry); 10**6: all chunks in one group.
    monkeypatch.setattr(ssm_chunked, "BUFFER_ELEMENTS", buffer)
    monkeypatch.setattr(ssm_chunked, "default_chunk", lambda l, slab=0: 4)
    t = _inputs(b=2, d=4, n=3, l=13, groups=2, dtype=torch.float64, requires_grad=True)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")

    def f(*xs):
        kw = dict(zip(names, xs))
        return selective_scan(**kw, delta_softplus=True, return_last_state=True)

    assert torch.autograd.gradcheck(f, tuple(t[k] for k in names), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("groups", [None, 4])
@pytest.mark.parametrize("buffer", [4096, 16384])
def test_gradients_match_reference_fp32(groups, buffer, monkeypatch, cpu_scan_backend):
    # 4096 -> chunks of 16 steps, one per group (fast path); 16384 -> K=12, groups of 5 chunks.
    monkeypatch.setattr(ssm_chunked, "BUFFER_ELEMENTS", buffer)
    t32 = _inputs(b=2, d=16, n=8, l=300, groups=groups, requires_grad=True, seed=3)
    t64 = {k: v.detach().double().requires_grad_(True) for k, v in t32.items()}
    names = list(t32)
    w = torch.randn(2, 16, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    wl = torch.randn(2, 16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def loss(fn, t):
        y, last = fn(**t, delta_softplus=True, return_last_state=True)
        return (y.double() * w).sum() + (last.double() * wl).sum()

    g32 = torch.autograd.grad(loss(selective_scan, t32), [t32[k] for k in names])
    g64 = torch.autograd.grad(loss(selective_scan_ref, t64), [t64[k] for k in names])
    for name, a, r in zip(names, g32, g64):
        assert a.shape == r.shape, name
        assert _rel(a, r) < 1e-4, (name, _rel(a, r))


def test_time_invariant_B_C_matches_reference(cpu_scan_backend):
    t = _inputs(l=40)
    Bd = torch.randn(8, 4)
    Cd = torch.randn(8, 4)
    y = selective_scan(t["u"], t["delta"], t["A"], Bd, Cd, delta_softplus=True)
    y_ref = selective_scan_ref(t["u"], t["delta"], t["A"], Bd, Cd, delta_softplus=True)
    assert _rel(y, y_ref) < 1e-5


def test_low_precision_inputs_keep_dtype(cpu_scan_backend):
    t = _inputs(l=30)
    args = [t[k].bfloat16() for k in ("u", "delta", "A", "B", "C")]
    y, last = selective_scan(*args, delta_softplus=True, return_last_state=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    y_ref = selective_scan_ref(*args, delta_softplus=True)
    assert _rel(y.float(), y_ref.float()) < 1e-2


def test_activation_memory_is_linear_in_state_free_size(cpu_scan_backend):
    """Saved tensors are O(b d l): far below the O(b d l n) a step-by-step autograd graph keeps."""
    b, d, n, l = 2, 32, 16, 512
    t = _inputs(b=b, d=d, n=n, l=l, requires_grad=True)
    saved = []

    def pack(x):
        saved.append(x.numel() * x.element_size())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        y = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], delta_softplus=True)
    state_bytes = b * d * l * n * 4
    assert sum(saved) < state_bytes / 3, (sum(saved), state_bytes)
    y.sum().backward()
    assert all(v.grad is not None and torch.isfinite(v.grad).all() for k, v in t.items() if k in ("u", "delta", "A", "B", "C"))


def test_bad_shapes_raise_clear_errors():
    t = _inputs(l=10)
    with pytest.raises(ValueError, match="delta must match u"):
        selective_scan(t["u"], t["delta"][..., :5], t["A"], t["B"], t["C"])
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(t["u"], t["delta"], t["A"][:3], t["B"], t["C"])
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"][..., :4], t["C"])
    with pytest.raises(ValueError, match="grouped C"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], torch.randn(2, 3, 4, 10))
    with pytest.raises(ValueError, match="D must be"):
        selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=torch.ones(3))


def _cpu_choice() -> str:
    return "cpu" if ssm_cpu.available() else "torch"


def test_dispatch_on_cpu(monkeypatch):
    t = _inputs(l=10)
    assert selective_scan_backend(t["u"]) == _cpu_choice()
    assert selective_scan_backend(t["u"].double()) == "torch"  # the C kernel computes in float32
    assert selective_scan_backend(t["u"], "torch") == "torch"
    # Without a C compiler: the chunked torch scan, and a forced "cpu" names why it cannot run.
    monkeypatch.setattr(ssm_cpu._KERNEL, "loaded", (None, "the C kernel ssm_cpu.c did not build (no cc)"))
    assert selective_scan_backend(t["u"]) == "torch"
    with pytest.raises(RuntimeError, match="'cpu' was forced but the C kernel ssm_cpu.c did not build"):
        selective_scan_backend(t["u"], "cpu")


def test_dispatch_selects_mamba_ssm_on_cuda_when_importable(monkeypatch):
    calls = []

    def fake_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        calls.append(dict(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, last=return_last_state))
        return torch.full_like(u, 7.0)

    t = _inputs(l=10)
    monkeypatch.setattr(ssm, "_load_mamba_scan", lambda: fake_fn)
    # Importable but on CPU: still ours.
    assert selective_scan_backend(t["u"]) == _cpu_choice()
    y = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"])
    assert not calls and not torch.all(y == 7.0)
    # "On CUDA" and importable: the fused kernel gets every argument unchanged.
    monkeypatch.setattr(ssm, "_is_cuda", lambda x: True)
    assert selective_scan_backend(t["u"]) == "mamba_ssm"
    y = selective_scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"], delta_softplus=True)
    assert torch.all(y == 7.0)
    assert calls == [dict(D=t["D"], z=t["z"], delta_bias=None, delta_softplus=True, last=False)]
    # On CUDA but mamba_ssm missing: our Triton kernels, or the chunked scan without triton.
    monkeypatch.setattr(ssm, "_load_mamba_scan", lambda: None)
    monkeypatch.setattr(ssm, "_load_triton_module", lambda: object())
    assert selective_scan_backend(t["u"]) == "triton"
    monkeypatch.setattr(ssm, "_load_triton_module", lambda: None)
    assert selective_scan_backend(t["u"]) == "torch"
    # float64 keeps the float64 chunked scan (the kernels compute in float32).
    assert selective_scan_backend(t["u"].double()) == "torch"


def test_loader_returns_none_when_mamba_ssm_cannot_import(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # makes `import mamba_ssm...` raise ImportError
    monkeypatch.setattr(ssm, "_LOADED", {})
    assert ssm._load_mamba_scan() is None
