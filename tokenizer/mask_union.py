"""The mask sampler's rounds as a C kernel (``mask_union.c``) for CPUs, built at first use by
:mod:`foundation.native`.

:func:`tokenizer.spectral.hard_bands_1d` and :func:`tokenizer.spectral.hard_patches` draw their candidate bands
with torch's generator and hand them here on an eager CPU run, where the same masks come from one pass per map
instead of a dozen operators per round (``tests/test_spectral.py`` holds both paths to equal masks). Where the
kernel does not build, or reading back is not free (a GPU, compiling), the torch sampler runs.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import torch

from foundation import native

__all__ = ["available", "union"]

_SOURCE = Path(__file__).with_name("mask_union.c")
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_PROTOTYPES = {"eegfm_mask_union": [_I64] * 6 + [_PTR] * 5}
_KERNEL = native.Kernel(_SOURCE, _PROTOTYPES)


def available() -> bool:
    return _KERNEL.lib() is not None


def union(fs: torch.Tensor, fw: torch.Tensor, ts: torch.Tensor, tw: torch.Tensor, n_freqs: int, n_frames: int,
          goal: int, final: int) -> torch.Tensor:
    """``[m, n_freqs, n_frames]`` bool maps with exactly ``goal`` cells each, from candidate rectangles
    ``[m, rounds]`` (start and width in frequency, start and width in time; CPU tensors): see ``mask_union.c``."""
    m, rounds = fs.shape
    fs, fw, ts, tw = (x.to(torch.int64).contiguous() for x in (fs, fw, ts, tw))
    out = torch.empty(m, n_freqs, n_frames, dtype=torch.uint8)
    native.call(_KERNEL.lib().eegfm_mask_union, m, n_freqs, n_frames, rounds, final, goal, fs.data_ptr(), fw.data_ptr(),
                ts.data_ptr(), tw.data_ptr(), out.data_ptr())
    return out.bool()
