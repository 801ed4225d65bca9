"""Our pretrained backbone with a classification head as a braindecode model (optional ``braindecode`` extra).

``EEGMambaClassifier`` follows braindecode's ``EEGModuleMixin`` conventions, so braindecode / skorch /
MOABB pipelines can finetune it like any braindecode model::

    from finetune.braindecode import EEGClassifier, EEGMambaClassifier   # this module first: see below
    clf = EEGClassifier(EEGMambaClassifier, module__checkpoint="eegmamba-tiny-open", module__sfreq=160.0,
                        module__chs_info=raw.info["chs"], module__input_units="V", max_epochs=10, ...)
    clf.fit(X, y)                                         # X [n, n_chans, n_times] in volts at 160 Hz

Input ``x [batch, n_chans, n_times]`` is in the user's units (``input_units``: "V" as MNE and braindecode
hold data, "mV", "uV" or our "100uV") at the user's rate ``sfreq``; the module converts it to the
checkpoint's input contract (units scaled; each window's per-channel mean removed, as the shard builder
removes each recording's; Fourier resampling to the contract's rate; the window cut to whole 1-s patches)
and says so once, at construction. It does not filter: the notice names the band the checkpoint was
pretrained on, and the input should be band-passed (and notched) to it first, e.g. ``raw.filter(0.1, 75)``. Channel names come from ``chs_info`` (``ch_name``)
and are mapped through ``shards.vocabulary``; names the vocabulary does not know (EOG, triggers...) are
left out with the notice, and a montage with no channel the checkpoint was pretrained on is a
``ContractError``. The MoE auxiliary loss is not added (skorch's criterion sees only the logits).

braindecode 1.8 imports torchaudio eagerly, and the torchaudio wheel pip picks (built for another torch, or
CUDA-linked) cannot load beside a CPU-only torch: ``import braindecode`` then fails with an ``OSError``.
Importing this module first avoids that: :func:`braindecode_models` imports braindecode against a stub
torchaudio when the real one cannot load (the models used here call none of it), and braindecode's
``EEGClassifier`` is re-exported from here so one import line does both.
"""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from finetune.contract import check_montage, contract_of, notice
from finetune.heads import ClassificationHead
from finetune.model import load_backbone, reading_layer
from foundation.contract import ContractError
from runtime.signal import SFREQ, UNIT_SCALE, UNITS, check_sfreq
from shards.vocabulary import canonical_name, channel_ids

__all__ = ["EEGClassifier", "EEGMambaClassifier", "braindecode_models", "UNIT_FACTORS", "fourier_resample"]


def _stub_module(name: str) -> types.ModuleType:
    """A placeholder module whose every public attribute is a class that raises when used."""
    mod = types.ModuleType(name)
    mod.__path__ = []  # a package, so `import torchaudio.transforms` resolves against sys.modules

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)

        class _Missing:
            def __init__(self, *args, **kwargs):
                raise NotImplementedError(f"{name}.{attr}: torchaudio is stubbed out (its CUDA-linked wheel cannot load here)")

        _Missing.__name__ = attr
        return _Missing

    mod.__getattr__ = __getattr__  # type: ignore[attr-defined]
    return mod


def braindecode_models() -> types.ModuleType:
    """``braindecode.models``, importable on a CPU-only torch (stub torchaudio when its wheel cannot load).

    Raises:
        ImportError: braindecode is not installed (``pip install -e ".[braindecode]"``).
    """
    try:
        import braindecode.models as models

        return models
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "braindecode":
            raise ImportError('finetune.braindecode needs braindecode and skorch: pip install -e ".[braindecode]"') from err
        raise
    except (OSError, ImportError) as err:
        if "torchaudio" not in f"{err!r} {err.__cause__!r}" and not any(m.startswith("torchaudio") for m in sys.modules):
            raise
        print(f"note: braindecode failed to import torchaudio ({type(err).__name__}); using a stub torchaudio "
              "module (the models used here do not call it)", flush=True)
    for name in [m for m in sys.modules if m.split(".")[0] in ("braindecode", "torchaudio")]:
        del sys.modules[name]
    subs = {n: _stub_module(f"torchaudio.{n}") for n in ("functional", "transforms")}
    root = _stub_module("torchaudio")
    for n, mod in subs.items():
        setattr(root, n, mod)
        sys.modules[f"torchaudio.{n}"] = mod
    sys.modules["torchaudio"] = root
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MNE montage deprecations inside braindecode
        import braindecode.models as models
    return models


EEGModuleMixin = braindecode_models().base.EEGModuleMixin
from braindecode import EEGClassifier  # noqa: E402  (after the torchaudio stub is in place)

# Multiply an input in these units by the factor to get the contract's µV / 100.
UNIT_FACTORS = {"V": UNIT_SCALE, "mV": UNIT_SCALE / 1e3, "uV": UNIT_SCALE / 1e6, "µV": UNIT_SCALE / 1e6, UNITS: 1.0}


def fourier_resample(x: torch.Tensor, n_out: int) -> torch.Tensor:
    """Resample the last axis to ``n_out`` samples in the frequency domain (as ``scipy.signal.resample``)."""
    n = x.shape[-1]
    if n_out == n:
        return x
    spec = torch.fft.rfft(x, dim=-1)
    keep = min(spec.shape[-1], n_out // 2 + 1)
    out = spec.new_zeros(*spec.shape[:-1], n_out // 2 + 1)
    out[..., :keep] = spec[..., :keep]
    return torch.fft.irfft(out, n=n_out, dim=-1) * (n_out / n)


def _band(contract) -> str:
    """The training data's filters as the contract records them ("0.1-75 Hz, notch 60 Hz"; no notch where the
    corpora's notches differ), or ""."""
    if contract is None or (contract.l_freq is None and contract.h_freq is None):
        return ""
    low = "0" if contract.l_freq is None else f"{contract.l_freq:g}"
    high = "Nyquist" if contract.h_freq is None else f"{contract.h_freq:g}"
    return f"{low}-{high} Hz" + (f", notch {contract.notch:g} Hz" if contract.notch else "")


class EEGMambaClassifier(EEGModuleMixin, nn.Module):
    """A pretrained EEGMamba + linear head: ``x [batch, n_chans, n_times] -> logits [batch, n_outputs]``.

    Args:
        n_chans, n_outputs, n_times, chs_info, input_window_seconds, sfreq: braindecode's signal parameters
            (``chs_info`` is required: channel names place the channels in our vocabulary).
        checkpoint: pretrained backbone: shipped name, local folder, Hub ``org/name@rev``, or None (fresh tiny).
        input_units: units of ``x``: "V" (MNE / braindecode), "mV", "uV" or "100uV".
        pool: "mean" of the tokens or the "cls" token. dropout: before the head. task_id: MoE task (0 = default).
        read_layer: the backbone layer the head reads, as ``FinetuneConfig.read_layer`` (None = the middle one;
            the layers above it are dropped).
    Raises:
        ContractError: unknown units, no channel name in the vocabulary or none pretrained, window under 1 s.
    """

    def __init__(self, n_chans: int | None = None, n_outputs: int | None = None, n_times: int | None = None,
                 chs_info: Sequence[dict[str, Any]] | None = None, input_window_seconds: float | None = None,
                 sfreq: float | None = None, checkpoint: str | None = "eegmamba-tiny-open", input_units: str = "V",
                 pool: str = "mean", dropout: float = 0.0, task_id: int = 0, read_layer: int | None = None) -> None:
        super().__init__(n_outputs=n_outputs, n_chans=n_chans, chs_info=chs_info, n_times=n_times,
                         input_window_seconds=input_window_seconds, sfreq=sfreq)
        del n_outputs, n_chans, chs_info, n_times, input_window_seconds, sfreq
        check_sfreq(self.sfreq, "EEGMambaClassifier", what="(sfreq)")
        if input_units not in UNIT_FACTORS:
            raise ContractError(f"EEGMambaClassifier: input_units={input_units!r}; expected one of {sorted(UNIT_FACTORS)}")
        backbone, info = load_backbone(checkpoint)
        self.backbone = reading_layer(backbone, read_layer, info)
        contract = contract_of(info.get("checkpoint"))
        target = contract.sfreq if contract is not None else SFREQ
        names = [str(ch["ch_name"]) for ch in self.chs_info]
        canonical = [canonical_name(n) for n in names]
        keep = [i for i, c in enumerate(canonical) if c is not None]
        if not keep:
            raise ContractError(f"EEGMambaClassifier: none of the channel names {names} is in the channel vocabulary")
        kept = [canonical[i] for i in keep]
        unseen = check_montage(kept, contract, "EEGMambaClassifier chs_info")
        patch = self.backbone.config.patch_size
        self.n_resampled = round(self.n_times * target / self.sfreq)
        self.n_used = (self.n_resampled // patch) * patch
        if self.n_used == 0 or self.n_used // patch > self.backbone.config.max_patches:
            raise ContractError(
                f"EEGMambaClassifier: {self.n_times} samples at {self.sfreq:g} Hz = {self.n_resampled / target:g} s; "
                f"the backbone reads 1 to {self.backbone.config.max_patches} whole seconds"
            )
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.register_buffer("channel_ids", torch.tensor(channel_ids(kept), dtype=torch.long), persistent=False)
        self.scale = UNIT_FACTORS[input_units]
        self.task_id = int(task_id)
        self.head = ClassificationHead(self.backbone.config.d_model, self.n_outputs, pool, dropout)
        parts = [f"{input_units} -> {UNITS}"] if input_units != UNITS else []
        parts.append("each window's channel means removed; no filtering applied"
                     + (f" (pretrained on {_band(contract)} data: filter the input to match)" if _band(contract) else ""))
        if self.sfreq != target:
            parts.append(f"resampled {self.sfreq:g} Hz -> {target:g} Hz")
        if self.n_used != self.n_resampled:
            parts.append(f"last {(self.n_resampled - self.n_used) / target:g} s of each window unused (whole patches)")
        dropped = [n for n, c in zip(names, canonical) if c is None]
        if dropped:
            parts.append(f"left out {len(dropped)} channel(s) not in the vocabulary: {', '.join(dropped[:6])}")
        if unseen:
            parts.append(f"{len(unseen)} channel(s) unseen in pretraining: {', '.join(unseen[:6])}")
        if parts:
            notice("EEGMambaClassifier: " + "; ".join(parts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [batch, n_chans, n_times]`` in ``input_units`` at ``sfreq`` -> ``logits [batch, n_outputs]``."""
        if x.dim() != 3 or x.shape[1] != self.n_chans:
            raise ValueError(f"EEGMambaClassifier: expected x [batch, {self.n_chans}, n_times], got {tuple(x.shape)}")
        x = x.index_select(1, self.keep).float() * self.scale
        # shards.preprocess removes each channel's mean; an electrode's DC offset (tens of mV in volts data)
        # would otherwise put the input thousands of units away from anything the backbone was trained on
        x = x - x.mean(dim=-1, keepdim=True)
        x = fourier_resample(x, self.n_resampled)[..., : self.n_used]
        b = x.shape[0]
        ids = self.channel_ids.unsqueeze(0).expand(b, -1)
        task_ids = torch.full((b,), self.task_id, dtype=torch.long, device=x.device)
        return self.head(self.backbone(x, ids, None, task_ids))

