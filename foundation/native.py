"""C kernels built at first use and called through ``ctypes``: the CPU paths whose work a chain of torch operators
does badly (a sequential recurrence, a loop with data-dependent trimming), where one pass of plain C over a row
keeps its state in registers.

Building needs a C compiler (``$CC``, else ``cc``). A library is cached under ``$EEGFM_KERNEL_CACHE`` (default
``~/.cache/eegfm/kernels``), keyed by the source, the flags, the compiler and the CPU's instruction sets (it is
built with ``-march=native`` for the machine it runs on), and written atomically, so concurrent processes and an
interrupted build never leave a broken file. Where nothing builds, :class:`Kernel` gives None and a one-line reason;
every caller has a torch path for that case.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["CACHE_ENV", "Kernel", "build", "call"]

CACHE_ENV = "EEGFM_KERNEL_CACHE"
_FLAGS = ["-O3", "-fPIC", "-shared", "-fno-math-errno", "-std=c99"]


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


def _libgomp_loaded() -> bool:
    """Whether this process already holds GNU OpenMP under the name a ``-fopenmp`` library links
    (``libgomp.so.1``: torch's Linux wheels). ``RTLD_NOLOAD`` asks the loader without loading anything; a
    runtime under another name (scikit-learn's vendored ``libgomp-<hash>.so``) does not count."""
    if not hasattr(os, "RTLD_NOLOAD"):
        return False
    try:
        ctypes.CDLL("libgomp.so.1", mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    except OSError:
        return False
    return True


def _openmp_flags(cc: list[str]) -> list[str]:
    """``-fopenmp`` where torch's operators already run on GNU OpenMP and the compiler links it: the library then
    shares that one libgomp (the loader reuses the loaded ``libgomp.so.1``) and its thread pool. Anything else
    (another OpenMP runtime, none, a compiler without it) gets no flag: two runtimes would fight for the cores."""
    if not _libgomp_loaded():
        return []
    with tempfile.TemporaryDirectory() as tmp:
        probe = subprocess.run([*cc, "-fopenmp", "-fPIC", "-shared", "-x", "c", "-", "-o", f"{tmp}/probe.so"],
                               input="int probe(void) { return 0; }\n", capture_output=True, text=True)
    return ["-fopenmp"] if probe.returncode == 0 else []


def build(source: Path, openmp: bool = False) -> Path:
    """The shared library of ``source``, compiled now or found in the cache; ``openmp`` adds ``-fopenmp`` where
    :func:`_openmp_flags` allows it. Raises OSError, RuntimeError or ``subprocess.SubprocessError`` where it
    cannot be built."""
    cc = _compiler()
    flags = [*_FLAGS, *_native_flags(cc), *(_openmp_flags(cc) if openmp else [])]
    version = subprocess.run([*cc, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([source.read_text(), " ".join(cc + flags), version, _cpu_features(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "eegfm" / "kernels")
    target = cache / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so", dir=cache)
    os.close(fd)
    try:
        done = subprocess.run([*cc, *flags, str(source), "-o", tmp, "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cc)} failed on {source.name}: {done.stderr.strip().splitlines()[-1:]}")
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


class Kernel:
    """One C source, built and loaded on first use (once per process): :meth:`lib` is the library with each
    function's ``argtypes`` set from ``prototypes`` (and its ``restype`` from ``returns``, else void), or None
    where it cannot be built here (:meth:`reason` says why in one line). ``openmp``: see :func:`build`."""

    def __init__(self, source: Path, prototypes: dict[str, list], openmp: bool = False,
                 returns: dict[str, type] | None = None) -> None:
        self.source, self.prototypes, self.openmp, self.returns = source, prototypes, openmp, returns or {}
        self.loaded: tuple[ctypes.CDLL | None, str] | None = None

    def lib(self) -> ctypes.CDLL | None:
        if self.loaded is None:
            self.loaded = self._load()
        return self.loaded[0]

    def reason(self) -> str:
        self.lib()
        return self.loaded[1]  # type: ignore[index]

    def _load(self) -> tuple[ctypes.CDLL | None, str]:
        if sys.platform == "win32":
            return None, f"{self.source.name} is built with a POSIX C compiler; not on Windows"
        try:
            lib = ctypes.CDLL(str(build(self.source, self.openmp)))
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            return None, f"the C kernel {self.source.name} did not build ({err})"
        for name, argtypes in self.prototypes.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, self.returns.get(name)
        return lib, ""


def call(fn, *args):
    """``fn(*args)``, returning what it returns; ctypes passes surplus arguments as C varargs, so a count that
    differs from the prototype's would silently shift every later argument."""
    if len(args) != len(fn.argtypes):
        raise TypeError(f"{fn.__name__}: {len(args)} arguments for a prototype of {len(fn.argtypes)}")
    return fn(*args)
