"""The selective scan's C kernel (``foundation.ssm_cpu``): against the float64 reference in both directions, the
padding invariant, any state size, threads, and how it is built and cached (or why it is not)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import foundation.ssm as ssm
import foundation.ssm_cpu as ssm_cpu
from foundation import native
from foundation.ssm import bidirectional_scan, selective_scan_ref

pytestmark = pytest.mark.skipif(not ssm_cpu.available(), reason=ssm_cpu.unavailable_reason() or "no C kernel")


def _bidir_inputs(b=3, d=12, n=16, l=41, seed=0, delta_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(2, b, d, l, generator=g), delta=torch.randn(2, b, d, l, generator=g) * delta_scale,
        A=-torch.rand(2, d, n, generator=g) * 3 - 0.05, B=torch.randn(2, b, n, l, generator=g),
        C=torch.randn(2, b, n, l, generator=g), D=torch.randn(2, d, generator=g),
        delta_bias=torch.randn(2, d, generator=g) * 0.5,
    )


def _reference(t, mask):
    """Both directions through the float64 sequential reference (the reverse one scans from the last step)."""
    valid = None if mask is None else mask[:, None, :].double()
    ys = []
    for k in range(2):
        dk = F.softplus(t["delta"][k].double() + t["delta_bias"][k].double()[:, None])
        dk = dk if valid is None else dk * valid
        ys.append(selective_scan_ref(t["u"][k].double(), dk, t["A"][k].double(), t["B"][k].double(),
                                     t["C"][k].double(), D=t["D"][k].double(), reverse=bool(k)))
    return torch.stack(ys)


def _rel(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


@pytest.mark.parametrize("n, delta_scale", [(1, 1.0), (4, 1.0), (16, 1.0), (20, 1.0), (16, 12.0)])
def test_bidirectional_forward_and_gradients_match_float64_reference(n, delta_scale):
    """Outputs and the gradients of every input, both directions, an interior hole and trailing padding, state
    sizes that are and are not a multiple of the kernel's vector width, and raw steps from about -40 to 40 (both
    sides of the softplus threshold at 20, where the kernel's own softplus and sigmoid must match torch's)."""
    t = _bidir_inputs(n=n, delta_scale=delta_scale)
    mask = torch.ones(3, 41, dtype=torch.bool)
    mask[1, 30:] = False
    mask[2, 10:14] = False
    t32 = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    t64 = {k: v.double().requires_grad_(True) for k, v in t.items()}
    y = bidirectional_scan(**t32, mask=mask, backend="cpu")
    y_ref = _reference(t64, mask)
    assert y.shape == (2, 3, 12, 41) and y.dtype == torch.float32
    assert _rel(y, y_ref) < 1e-5
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    g32 = torch.autograd.grad((y * w).sum(), list(t32.values()))
    g64 = torch.autograd.grad((y_ref * w.double()).sum(), list(t64.values()))
    for name, a, r in zip(t32, g32, g64):
        assert a.shape == r.shape, name
        assert _rel(a, r) < 1e-4, (name, _rel(a, r))


def test_trailing_padding_is_bit_exact_and_holes_are_tight():
    """A padded step has delta = 0 and exp(0) = 1 exactly: trailing padding changes no bit of the real outputs
    of the forward direction; a sequence cut at the padding gives the same values."""
    t = _bidir_inputs(b=1, l=30)
    mask = torch.ones(1, 30, dtype=torch.bool)
    mask[0, 20:] = False
    y = bidirectional_scan(**t, mask=mask, backend="cpu")
    cut = {k: (v[..., :20] if v.dim() == 4 else v) for k, v in t.items()}
    y_cut = bidirectional_scan(**cut, backend="cpu")
    assert torch.equal(y[0, ..., :20], y_cut[0])  # forward direction: the same operations on the same values
    torch.testing.assert_close(y[1, ..., :20], y_cut[1], rtol=1e-6, atol=1e-6)  # reverse: through the padding
    # Garbage in the padded steps' inputs changes nothing at real steps.
    noisy = {k: v.clone() for k, v in t.items()}
    for key in ("u", "B", "C"):
        noisy[key][..., 20:] = torch.randn_like(noisy[key][..., 20:]) * 1e3
    noisy["delta"][..., 20:] = 50.0
    assert torch.equal(bidirectional_scan(**noisy, mask=mask, backend="cpu")[..., :20], y[..., :20])


@pytest.mark.parametrize("split", ["openmp", "thread pool"])
def test_threads_give_the_same_result(split, monkeypatch):
    """Rows split on torch's OpenMP threads (where built so) or, elsewhere, on the kernel's own thread pool."""
    if split == "openmp" and not ssm_cpu.openmp():
        pytest.skip("the kernel was built without OpenMP here")
    monkeypatch.setattr(ssm_cpu, "openmp", lambda: split == "openmp")
    t = {k: v.requires_grad_(True) for k, v in _bidir_inputs(b=5).items()}
    outs = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            y = bidirectional_scan(**t, backend="cpu")
            outs.append((y.detach(), torch.autograd.grad(y.square().sum(), list(t.values()))))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outs[0][0], outs[1][0])  # rows are independent: identical
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # batch sums in another order


def test_openmp_build_shares_torchs_runtime():
    """Where torch runs on GNU OpenMP the kernel is built with it and the process still maps one ``libgomp.so``
    (the loader reuses torch's), so the scan's threads are torch's threads. (Vendored copies under other names,
    such as scikit-learn's ``libgomp-<hash>.so``, are other libraries and do not count.)"""
    if not native._libgomp_loaded():
        pytest.skip("torch does not run on GNU OpenMP here")
    assert ssm_cpu.openmp()
    maps = open("/proc/self/maps").read().splitlines()
    paths = {line.split()[-1] for line in maps if os.path.basename(line.split()[-1]).startswith("libgomp.so")}
    assert len(paths) == 1, paths


def test_state_size_limit_is_a_clear_error():
    t = _bidir_inputs(b=1, d=2, n=ssm_cpu.MAX_STATES + 1, l=5)
    with pytest.raises(ValueError, match=r"d_state <= 512, got 513; use scan_backend = 'torch'"):
        bidirectional_scan(**t, backend="cpu")


def test_argument_count_is_checked():
    fn = ssm_cpu.load().eegfm_scan_fwd
    with pytest.raises(TypeError, match=f"eegfm_scan_fwd: 3 arguments for a prototype of {len(fn.argtypes)}"):
        native.call(fn, 1, 2, 3)


def test_build_is_cached_and_atomic(tmp_path, monkeypatch):
    monkeypatch.setenv(ssm_cpu.CACHE_ENV, str(tmp_path))
    first = native.build(ssm_cpu._SOURCE)
    assert first.parent == tmp_path and first.suffix == ".so"
    stamp = first.stat().st_mtime_ns
    assert native.build(ssm_cpu._SOURCE) == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary file left behind


def test_no_compiler_falls_back_to_the_torch_scan(tmp_path, monkeypatch):
    monkeypatch.setenv(ssm_cpu.CACHE_ENV, str(tmp_path))
    monkeypatch.setenv("CC", os.path.join(str(tmp_path), "no-such-cc"))
    monkeypatch.setattr(ssm_cpu._KERNEL, "loaded", None)  # built afresh, with the missing compiler
    assert ssm_cpu.load() is None
    assert ssm_cpu.unavailable_reason().startswith("the C kernel ssm_cpu.c did not build")
    u = torch.zeros(1, 2, 3)
    assert ssm.selective_scan_backend(u) == "torch"
    assert list(tmp_path.iterdir()) == []
