"""finetune.braindecode: the shipped backbone as a braindecode model, trained with braindecode's EEGClassifier
on real EEGMMIDB epochs (volts at 160 Hz, as MNE and braindecode hold them)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

if importlib.util.find_spec("braindecode") is None or importlib.util.find_spec("skorch") is None:
    pytest.skip("the braindecode extra is not installed (pip install -e '.[braindecode]')", allow_module_level=True)

from finetune.braindecode import EEGMambaClassifier, fourier_resample  # noqa: E402
from foundation.contract import ContractError  # noqa: E402

SENSORIMOTOR = ["Fc3.", "Fcz.", "Fc4.", "C3..", "Cz..", "C4..", "Cp3.", "Cp4."]


def _chs(names):
    return [{"ch_name": n} for n in names]


def test_units_rate_and_channels_follow_the_contract(capsys):
    torch.manual_seed(0)
    kw = dict(n_chans=3, n_outputs=2, n_times=640, sfreq=160.0, checkpoint="eegmamba-tiny-open")
    volts = EEGMambaClassifier(chs_info=_chs(["C3..", "Cz..", "EOG"]), input_units="V", **kw).eval()
    assert capsys.readouterr().err.strip().splitlines() == [
        "eegfm contract: EEGMambaClassifier: V -> 100uV; each window's channel means removed; no filtering applied "
        "(pretrained on 0.1-75 Hz data: filter the input to match); resampled 160 Hz -> 200 Hz; "
        "left out 1 channel(s) not in the vocabulary: EOG"]
    micro = EEGMambaClassifier(chs_info=_chs(["C3..", "Cz..", "EOG"]), input_units="uV", **kw).eval()
    micro.load_state_dict(volts.state_dict())
    x = torch.randn(4, 3, 640) * 2e-5  # 20 µV
    assert volts(x).shape == (4, 2)
    torch.testing.assert_close(volts(x), micro(x * 1e6), rtol=1e-4, atol=1e-5)
    # an electrode offset (tens of mV, in volts) is removed per window and channel, as shards.preprocess does
    offset = torch.tensor([0.05, -0.03, 0.02]).view(1, 3, 1)
    seen = []
    hook = volts.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    torch.testing.assert_close(volts(x + offset), volts(x), rtol=1e-4, atol=1e-5)
    hook.remove()
    # what the backbone reads: the 20-µV signal in µV / 100 around zero, not 500 units of offset
    torch.testing.assert_close(seen[0], seen[1], rtol=1e-4, atol=1e-4)
    assert seen[0].mean(-1).abs().max() < 1e-3 and seen[0].abs().max() < 2.0
    with pytest.raises(ContractError, match="none of the channel names"):
        EEGMambaClassifier(chs_info=_chs(["E1", "E2", "E3"]), **kw)
    with pytest.raises(ContractError, match="input_units"):
        EEGMambaClassifier(chs_info=_chs(["C3", "C4", "CZ"]), input_units="volt", **kw)


def test_fourier_resample_keeps_a_sine():
    t = torch.arange(640) / 160.0
    y = fourier_resample(torch.sin(2 * torch.pi * 10 * t)[None], 800)[0]
    ref = torch.sin(2 * torch.pi * 10 * torch.arange(800) / 200.0)
    assert torch.allclose(y, ref, atol=1e-4)


def test_eeg_classifier_trains_on_real_motor_imagery(shared_data, capsys):
    import mne
    from braindecode import EEGClassifier

    s001 = shared_data / "motor_imagery" / "eegmmidb" / "S001"
    xs, ys = [], []
    for run in ("S001R04.edf", "S001R08.edf"):  # imagined left (T1) vs right (T2) fist
        raw = mne.io.read_raw_edf(s001 / run, preload=True, verbose=False).pick(SENSORIMOTOR)
        events, ids = mne.events_from_annotations(raw, verbose=False)
        epochs = mne.Epochs(raw, events, {"T1": ids["T1"], "T2": ids["T2"]}, tmin=0.0, tmax=4.0 - 1 / 160,
                            baseline=None, preload=True, verbose=False)
        xs.append(epochs.get_data().astype(np.float32))
        ys.append((epochs.events[:, 2] == ids["T2"]).astype(np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert x.shape == (30, 8, 640) and 1e-6 < np.abs(x).max() < 1e-3  # volts
    torch.manual_seed(0)
    clf = EEGClassifier(
        EEGMambaClassifier, module__checkpoint="eegmamba-tiny-open", module__sfreq=160.0,
        module__chs_info=epochs.info["chs"], module__input_units="V", criterion=torch.nn.CrossEntropyLoss,
        optimizer=torch.optim.AdamW, optimizer__lr=3e-3, batch_size=10, max_epochs=4, train_split=None, device="cpu",
        verbose=0,
    )
    clf.fit(x, y)
    losses = clf.history[:, "train_loss"]
    assert clf.module_.n_chans == 8 and clf.module_.n_outputs == 2 and clf.module_.n_times == 640
    assert losses[-1] < losses[0], losses
    proba = clf.predict_proba(x)
    assert proba.shape == (30, 2) and np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert set(clf.predict(x).tolist()) <= {0, 1}


def test_documented_import_line_works_in_a_fresh_interpreter_and_the_module_prints():
    """The docs' one import line, in a new process (braindecode not yet imported), then braindecode's own
    torchinfo summary of the module (it walks every layer's output)."""
    import subprocess
    import sys

    from conftest import REPO_ROOT

    code = (
        "from finetune.braindecode import EEGClassifier, EEGMambaClassifier\n"
        "import torch\n"
        "clf = EEGClassifier(EEGMambaClassifier, module__checkpoint='eegmamba-tiny-open', module__sfreq=160.0,\n"
        "    module__n_chans=3, module__n_outputs=2, module__n_times=640,\n"
        "    module__chs_info=[{'ch_name': n} for n in ('C3', 'Cz', 'C4')], train_split=None, device='cpu')\n"
        "clf.initialize()\n"
        "print(clf.module_)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout
    assert "EEGMambaClassifier" in summary and "ClassificationHead (head)" in summary
    total = int(summary.split("Total params:")[1].split()[0].replace(",", ""))
    assert total == sum(p.numel() for p in EEGMambaClassifier(
        n_chans=3, n_outputs=2, n_times=640, sfreq=160.0, chs_info=_chs(["C3", "Cz", "C4"])).parameters())
