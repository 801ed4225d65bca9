"""Figures of the tokenizer's targets on a real recording, for a person to look at.

    python benchmarks/tokenizer_figures.py --out figures/tokenizer [--recording FILE] [--model DIR]

Writes PNGs to ``--out``:

- ``stft.png``: log-magnitude STFT of one channel (1-s Hann window, 0.25-s hop; 0-60 Hz shown).
- ``mask_time.png``, ``mask_freq.png``, ``mask_timefreq.png``: one soft mask of each family.
- ``masked_input.png``: the corrupted input the backbone would see (masked map and time trace vs clean).
- ``reconstruction.png``: the masked bins filled in, and the masked-bin error. Without ``--model`` the filler
  is a simple inpainting baseline (each frequency's mean over its unmasked frames; fully hidden frequencies
  interpolated from their neighbours); a trained model is what should beat it.
- ``vqnsp.png`` (with ``--model DIR``, a ``VQNSP.save_pretrained`` folder): per-patch amplitude target vs the
  tokenizer's decoded amplitude, and the code ids.

The recording is read with ``shards.readers.read_raw`` and preprocessed with ``shards.preprocess.preprocess_raw``
(0.1-75 Hz, notch, 200 Hz, 100 µV units). It prints the masked-bin MSE of the filler and of a constant guess.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from runtime.configfile import parse_cli  # noqa: E402
from runtime.signal import SFREQ, UNIT_UV  # noqa: E402
from tokenizer.spectral import (  # noqa: E402
    FAMILIES,
    MaskConfig,
    STFTConfig,
    corrupt,
    masked_spectral_loss,
    sample_masks,
    spectral_target,
    stft,
)

DEFAULT_RECORDING = REPO.parent / "shared" / "data" / "unlabeled" / "yasa" / "data_resting_EO_200Hz_raw.fif"


@dataclass(frozen=True)
class FigureConfig:
    out: str = "figures/tokenizer"
    recording: str = str(DEFAULT_RECORDING)
    model: str = ""  # VQNSP checkpoint folder; empty = inpainting baseline only
    seconds: int = 30
    start_s: float = 10.0
    channel: int = 0
    seed: int = 0
    fmax_hz: float = 60.0


def load_signal(path: str, start_s: float, seconds: int) -> tuple[torch.Tensor, list[str]]:
    """``[1, c, seconds * SFREQ]`` in 100 µV units, and the canonical channel names."""
    from shards.preprocess import PreprocessConfig, preprocess_raw
    from shards.readers import read_raw

    if not Path(path).is_file():
        raise FileNotFoundError(f"recording {path} does not exist (pass --recording FILE)")
    signal = preprocess_raw(read_raw(path), PreprocessConfig(), source=str(path))
    sfreq = int(SFREQ)
    start = int(start_s * sfreq)
    data = signal.data[:, start : start + seconds * sfreq]
    if data.shape[1] < seconds * sfreq:
        raise ValueError(f"recording {path} is shorter than start_s + seconds = {start_s + seconds} s")
    return torch.from_numpy(np.ascontiguousarray(data)).float()[None], list(signal.channels)


def inpaint_baseline(target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Fill masked bins of ``target [f, n]``: per-frequency mean over unmasked frames (interpolated across f)."""
    keep = 1.0 - mask
    weight = keep.sum(axis=1)
    row_mean = (keep * target).sum(axis=1) / np.maximum(weight, 1e-8)
    seen = weight > 1.0  # at least one frame's worth of unmasked signal
    if seen.any() and not seen.all():
        f = np.arange(len(row_mean))
        row_mean[~seen] = np.interp(f[~seen], f[seen], row_mean[seen])
    return keep * target + mask * row_mean[:, None]


def _spec_axes(ax, image, stft_cfg: STFTConfig, seconds: int, fmax: float, title: str, **kw):
    n_bins = int(fmax / stft_cfg.bin_hz) + 1
    im = ax.imshow(image[:n_bins], origin="lower", aspect="auto", extent=(0, seconds, 0, fmax), **kw)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("frequency (Hz)")
    ax.set_title(title)
    return im


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_cli(FigureConfig, argv, prog="benchmarks/tokenizer_figures.py",
                       description="PNG figures of STFT targets, soft masks and reconstructions")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    x, names = load_signal(cfg.recording, cfg.start_s, cfg.seconds)
    if not 0 <= cfg.channel < x.shape[1]:
        raise ValueError(f"--channel {cfg.channel} out of range: the recording has {x.shape[1]} channels {names}")
    ch = cfg.channel
    stft_cfg = STFTConfig()
    target = spectral_target(stft(x, stft_cfg), stft_cfg)[0, ch].numpy()
    vmin, vmax = np.percentile(target[: int(cfg.fmax_hz) + 1], [2, 99.5])
    fig, ax = plt.subplots(figsize=(10, 4))
    im = _spec_axes(ax, target, stft_cfg, cfg.seconds, cfg.fmax_hz,
                    f"log |STFT| of {names[ch]} ({Path(cfg.recording).name})", vmin=vmin, vmax=vmax, cmap="magma")
    fig.colorbar(im, ax=ax, label="log(|S| + 0.01)")
    _save(fig, out / "stft.png")

    gen = torch.Generator().manual_seed(cfg.seed)
    _mask_figures(cfg, stft_cfg, target.shape, gen, out)
    seen, tgt, mask = _masked_input_figure(cfg, stft_cfg, x, names, gen, (vmin, vmax), out)
    _reconstruction_figure(cfg, stft_cfg, seen, tgt, mask, names, (vmin, vmax), out)
    if cfg.model:
        _vqnsp_figure(cfg, x, names, out)
    print(f"figures written to {out}/")
    return 0


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mask_figures(cfg: FigureConfig, stft_cfg: STFTConfig, shape: tuple[int, int], gen: torch.Generator,
                  out: Path) -> None:
    """``mask_{family}.png``: one mask of each family, and its Gaussian-smoothed edges."""
    f, n = shape
    for family in FAMILIES:
        one = MaskConfig(family_weights=tuple(float(fam == family) for fam in FAMILIES), band_bias=0.5)
        m = sample_masks((1, 1), f, n, one, generator=gen)[0, 0].numpy()
        fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 1]})
        im = _spec_axes(axes[0], m, stft_cfg, cfg.seconds, cfg.fmax_hz,
                        f"'{family}' mask (mean {m.mean():.3f}; 1 = hidden)", vmin=0, vmax=1, cmap="viridis")
        fig.colorbar(im, ax=axes[0])
        mid_f, mid_t = int(np.argmax(m.std(axis=1))), int(np.argmax(m.std(axis=0)))
        axes[1].plot(m[mid_f], label=f"along time at {mid_f} Hz")
        axes[1].plot(m[:, mid_t], label=f"along freq at frame {mid_t}")
        axes[1].set_ylim(-0.05, 1.05)
        axes[1].set_title("Gaussian-smoothed edges")
        axes[1].legend(fontsize=7)
        _save(fig, out / f"mask_{family}.png")


def _masked_input_figure(cfg: FigureConfig, stft_cfg: STFTConfig, x: torch.Tensor, names: list[str],
                         gen: torch.Generator, vrange: tuple[float, float], out: Path):
    """``masked_input.png``: what the backbone sees; returns (its log |STFT| [f, n], the targets, the masks)."""
    ch = cfg.channel
    x_masked, tgt, mask = corrupt(x, stft_cfg, MaskConfig(), generator=gen)
    m = mask[0, ch].numpy()
    seen = spectral_target(stft(x_masked, stft_cfg), stft_cfg)[0, ch].numpy()
    fig, axes = plt.subplots(2, 1, figsize=(10, 7))
    _spec_axes(axes[0], seen, stft_cfg, cfg.seconds, cfg.fmax_hz,
               f"what the backbone sees: log |STFT| of the corrupted signal (mask mean {m.mean():.2f})",
               vmin=vrange[0], vmax=vrange[1], cmap="magma")
    t = np.arange(x.shape[-1]) / SFREQ
    axes[1].plot(t, x[0, ch].numpy() * UNIT_UV, lw=0.5, label="clean")
    axes[1].plot(t, x_masked[0, ch].numpy() * UNIT_UV, lw=0.5, label="masked (iSTFT)")
    axes[1].set_xlabel("time (s)")
    axes[1].set_ylabel("µV")
    axes[1].set_xlim(0, cfg.seconds)
    axes[1].legend(loc="upper right")
    _save(fig, out / "masked_input.png")
    return seen, tgt, mask


def _reconstruction_figure(cfg: FigureConfig, stft_cfg: STFTConfig, seen: np.ndarray, tgt: torch.Tensor,
                           mask: torch.Tensor, names: list[str], vrange: tuple[float, float], out: Path) -> None:
    """``reconstruction.png``: the inpainting baseline against the clean target, on the masked bins."""
    ch = cfg.channel
    m = mask[0, ch].numpy()
    tgt_ch = tgt[0, ch].numpy()
    filled = inpaint_baseline(seen, m)
    mse = masked_spectral_loss(torch.from_numpy(filled)[None, None], tgt[:, ch : ch + 1], mask[:, ch : ch + 1]).item()
    keep = 1 - m
    const = float((keep * tgt_ch).sum() / keep.sum())
    mse_const = masked_spectral_loss(torch.full_like(tgt[:, ch : ch + 1], const), tgt[:, ch : ch + 1],
                                     mask[:, ch : ch + 1]).item()
    vmin, vmax = vrange
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    _spec_axes(axes[0], tgt_ch, stft_cfg, cfg.seconds, cfg.fmax_hz, "target (clean)", vmin=vmin, vmax=vmax, cmap="magma")
    _spec_axes(axes[1], filled, stft_cfg, cfg.seconds, cfg.fmax_hz,
               f"inpainting baseline (masked MSE {mse:.3f})", vmin=vmin, vmax=vmax, cmap="magma")
    im = _spec_axes(axes[2], m * (filled - tgt_ch) ** 2, stft_cfg, cfg.seconds, cfg.fmax_hz,
                    f"mask x squared error (constant guess: {mse_const:.3f})", cmap="Greys")
    fig.colorbar(im, ax=axes[2])
    _save(fig, out / "reconstruction.png")
    print(f"masked-bin MSE on {names[ch]}: inpainting baseline {mse:.4f}, constant guess {mse_const:.4f}")


def _vqnsp_figure(cfg: FigureConfig, x: torch.Tensor, names: list[str], out: Path) -> None:
    """``vqnsp.png``: a trained VQ-NSP's amplitude target, its decoding and the code ids."""
    from shards.vocabulary import channel_ids
    from tokenizer.vqnsp import VQNSP

    ch = cfg.channel
    model = VQNSP.from_pretrained(cfg.model)
    ids = torch.tensor([channel_ids(names)])
    with torch.no_grad():
        res = model(x, ids, torch.ones(1, x.shape[1], dtype=torch.bool))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    for ax, key, title in ((axes[0], "target_amp", "amplitude target (z-scored)"),
                           (axes[1], "pred_amp", f"decoded amplitude (MSE {float(res['loss_amp']):.3f})")):
        im = ax.imshow(res[key][0, ch].numpy().T[: int(cfg.fmax_hz) + 1], origin="lower", aspect="auto",
                       extent=(0, cfg.seconds, 0, cfg.fmax_hz), cmap="magma")
        ax.set_title(title)
        ax.set_xlabel("patch (s)")
        ax.set_ylabel("frequency (Hz)")
        fig.colorbar(im, ax=ax)
    axes[2].imshow(res["codes"][0].numpy(), aspect="auto", cmap="tab20", interpolation="nearest")
    axes[2].set_title(f"code ids (perplexity {float(res['perplexity']):.1f})")
    axes[2].set_xlabel("patch")
    axes[2].set_yticks(range(len(names)), names)
    _save(fig, out / "vqnsp.png")


if __name__ == "__main__":
    raise SystemExit(main())
