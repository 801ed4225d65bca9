"""The selective scan's C kernel for CPUs (``ssm_cpu.c``): built at first use, called through ``ctypes``.

The chunked torch scan (:mod:`foundation.ssm_chunked`) materialises ``[l, b, d, n]`` decays, inputs and states
and pays a pass over memory and an operator for each; the kernel keeps a row's ``n`` states in registers and
recomputes them in the backward pass into an ``l x n`` buffer that stays in cache (as ``mamba_ssm``'s CUDA
kernel does on a GPU). It is the ``"cpu"`` backend of :mod:`foundation.ssm`, chosen automatically on CPUs for
float32 when it builds.

Building needs a C compiler (``$CC``, else ``cc``); the shared library is cached under
``$EEGFM_KERNEL_CACHE`` (default ``~/.cache/eegfm/kernels``), keyed by the source, the flags, the compiler and
the CPU's instruction sets (it is built for the machine it runs on), and written atomically, so concurrent
processes (one per GPU-less rank) and an interrupted build never leave a broken file. Where nothing builds,
:func:`load` returns None and says why in :func:`unavailable_reason`; the torch scan runs instead.

Rows ``(direction, batch)`` are split between ``torch.get_num_threads()`` threads (``ctypes`` releases the GIL
during a call), so a multi-threaded CPU run uses its cores as torch's own operators would.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["MAX_STATES", "VECTOR_WIDTH", "available", "load", "scan_backward", "scan_forward", "unavailable_reason"]

_SOURCE = Path(__file__).with_name("ssm_cpu.c")
_FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno", "-std=c99"]
CACHE_ENV = "EEGFM_KERNEL_CACHE"
#: States per vector in the kernel (``W``) and the largest state size it takes (``W * MAX_VECTORS``).
VECTOR_WIDTH, MAX_STATES = 8, 512

_STATE: dict[str, object] = {}


def _cpu_features() -> str:
    """The CPU's instruction-set flags (the library is built with ``-march=native``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> list[str]:
    return (os.environ.get("CC") or "cc").split()


def _native_flags(cc: list[str]) -> list[str]:
    """``-march=native`` where the compiler takes it (GCC, Clang on x86 and ARM), else nothing."""
    probe = subprocess.run([*cc, "-march=native", "-E", "-x", "c", "-"], input="", capture_output=True, text=True)
    return ["-march=native"] if probe.returncode == 0 else []


def _build() -> Path:
    cc = _compiler()
    flags = [*_FLAGS, *_native_flags(cc)]
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), " ".join(cc + flags), version, _cpu_features(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "eegfm" / "kernels")
    target = cache / f"ssm_cpu-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ssm_cpu-", suffix=".so", dir=cache)
    os.close(fd)
    try:
        done = subprocess.run([*cc, *flags, str(_SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} failed on {_SOURCE.name}: {done.stderr.strip().splitlines()[-1:]}")
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def load() -> ctypes.CDLL | None:
    """The kernel library, built on first use; None where it cannot be built here (see :func:`unavailable_reason`)."""
    if "lib" not in _STATE:
        lib, reason = None, ""
        if sys.platform == "win32":
            reason = "the C kernel is built with a POSIX C compiler; not on Windows"
        else:
            try:
                lib = ctypes.CDLL(str(_build()))
                i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
                lib.eegfm_scan_fwd.argtypes = [i64] * 5 + [ptr] * 6 + [i32] + [ptr] * 2 + [i64, i64]
                lib.eegfm_scan_bwd.argtypes = [i64] * 5 + [ptr] * 6 + [i32] + [ptr] * 9 + [i64, i64]
                lib.eegfm_scan_fwd.restype = lib.eegfm_scan_bwd.restype = None
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                lib, reason = None, f"the C scan kernel did not build ({err}); using the torch scan"
        _STATE["lib"], _STATE["reason"] = lib, reason
    return _STATE["lib"]  # type: ignore[return-value]


def available() -> bool:
    return load() is not None


def unavailable_reason() -> str:
    load()
    return str(_STATE["reason"])


def _call(fn, *args) -> None:
    """``fn(*args)``; ctypes passes surplus arguments as C varargs, so a count that differs from the prototype's
    would silently shift every later argument."""
    if len(args) != len(fn.argtypes):
        raise TypeError(f"{fn.__name__}: {len(args)} arguments for a prototype of {len(fn.argtypes)}")
    fn(*args)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _pool(workers: int) -> ThreadPoolExecutor:
    pool = _STATE.get("pool")
    if pool is None or pool._max_workers != workers:  # type: ignore[attr-defined]
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eegfm-scan")
        _STATE["pool"] = pool
    return pool  # type: ignore[return-value]


def _split_rows(rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of ``(direction, batch)`` rows, one per thread."""
    workers = max(1, min(torch.get_num_threads(), rows))
    bounds = [rows * i // workers for i in range(workers + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(workers)]


def _run(parts, fn) -> None:
    if len(parts) == 1:
        fn(0, *parts[0])
        return
    for future in [_pool(len(parts)).submit(fn, i, *p) for i, p in enumerate(parts)]:
        future.result()


def _f32(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else x.detach().to(torch.float32).contiguous()


def _padded_states(A, B, C):
    """``A [k, d, n_pad]`` and time-major ``B, C [k, b, g, l, n_pad]`` float32, ``n`` padded to a multiple of the
    kernel's vector width with zeros (a padded state has decay 1 and no input: it stays 0 and adds nothing)."""
    pad = -A.shape[-1] % VECTOR_WIDTH
    A = F.pad(_f32(A), (0, pad)).contiguous()
    Bt, Ct = (F.pad(_f32(x).transpose(-1, -2), (0, pad)).contiguous() for x in (B, C))
    return A, Bt, Ct


def scan_forward(u, dt, A, B, C, D, reverse: bool):
    """``(y [k, b, d, l], last [k, b, d, n])`` float32: ``C h + D u`` per direction.

    ``u, dt [k, b, d, l]`` (``dt`` the effective step: after bias, softplus and the padding mask); ``A [k, d, n]``;
    ``B, C [k, b, g, n, l]``; ``D [k, d]`` or None. Direction ``i`` scans forward when ``i + reverse`` is even.
    """
    lib = load()
    k, b, d, l = u.shape
    g, n = B.shape[2], A.shape[-1]
    u, dt, D = _f32(u), _f32(dt), _f32(D)
    A, Bt, Ct = _padded_states(A, B, C)
    y = u.new_empty(k, b, d, l)
    last = u.new_empty(k, b, d, A.shape[-1])

    def call(_, r0, r1):
        _call(lib.eegfm_scan_fwd, b, d, g, A.shape[-1], l, _ptr(u), _ptr(dt), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(D),
                           int(reverse), _ptr(y), _ptr(last), r0, r1)

    _run(_split_rows(k * b), call)
    return y, last[..., :n]


def scan_backward(u, dt, A, B, C, D, reverse: bool, gy, glast):
    """Gradients ``(du, ddt, dA, dB, dC, dD)`` of :func:`scan_forward` for ``gy [k, b, d, l]`` and ``glast
    [k, b, d, n]`` (or None), float32; ``ddt`` is for the effective step, ``dD`` None where ``D`` is."""
    lib = load()
    k, b, d, l = u.shape
    g, n = B.shape[2], A.shape[-1]
    u, dt, D, gy = _f32(u), _f32(dt), _f32(D), _f32(gy)
    A, Bt, Ct = _padded_states(A, B, C)
    n_pad = A.shape[-1]
    if glast is not None:
        glast = F.pad(_f32(glast), (0, n_pad - n)).contiguous()
    du, ddt = torch.empty_like(u), torch.empty_like(u)
    dBt, dCt = torch.zeros_like(Bt), torch.zeros_like(Ct)
    parts = _split_rows(k * b)
    # dA and dD sum over the batch: one buffer per thread, added up afterwards.
    dA = u.new_zeros(len(parts), k, d, n_pad)
    dD = u.new_zeros(len(parts), k, d) if D is not None else None
    work = u.new_empty(len(parts), (2 * l + 1) * n_pad)

    def call(i, r0, r1):
        _call(lib.eegfm_scan_bwd, b, d, g, n_pad, l, _ptr(u), _ptr(dt), _ptr(A), _ptr(Bt), _ptr(Ct), _ptr(D),
                           int(reverse), _ptr(gy), _ptr(glast), _ptr(du), _ptr(ddt), _ptr(dA[i]), _ptr(dBt),
                           _ptr(dCt), None if dD is None else _ptr(dD[i]), _ptr(work[i]), r0, r1)

    _run(parts, call)
    return (du, ddt, dA.sum(0)[..., :n], dBt[..., :n].transpose(-1, -2), dCt[..., :n].transpose(-1, -2),
            None if dD is None else dD.sum(0))
