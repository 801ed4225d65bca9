"""Our pretrained backbone in a standard MOABB evaluation, next to MOABB's tangent-space baseline, offline.

    python benchmarks/moabb_evaluation.py --root ~/mne_data --dataset BNCI2014_001 --evaluation within_session
    python benchmarks/moabb_evaluation.py --root ~/mne_data --dataset PhysionetMI --subjects 1 \\
        --set 'hand_runs=[4,8]' --set 'feet_runs=[]' --events left_hand,right_hand --channels FC3,FCz,FC4,C3,Cz,C4,CP3,CP4

Two pipelines go through one MOABB evaluation (``within_session``: k-fold inside each session; ``cross_session``;
``cross_subject``: leave subjects out), on the epochs of the dataset's paradigm (motor imagery, P300, SSVEP) as
MOABB cuts and band-passes them (``--fmin``/``--fmax``):

- ``EEGMamba``: the shipped backbone (``--checkpoint``) with a new head, finetuned per fold by braindecode's
  ``EEGClassifier`` (``finetune.braindecode``: volts in, the checkpoint's units, rate and 1-s patches inside);
- ``TS+LR``: MOABB's usual Riemannian baseline (OAS covariances, tangent space, logistic regression).

MOABB reads the files under ``--root`` (the folder it downloads into, ``MNE_DATA``) with the network refused
(:func:`shards.corpora.moabb.offline`): nothing is downloaded, and a subject not on disk is an error naming it.
``--set KEY=JSON`` sets an attribute of the dataset object first (PhysionetMI's ``hand_runs``: the runs a local
copy holds). The table prints MOABB's score per subject and session (ROC AUC for two classes, accuracy
otherwise) and the mean per pipeline; ``--out`` also gets ``results.csv``. Needs the ``moabb`` and ``braindecode``
extras.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EVALUATIONS = {"within_session": "WithinSessionEvaluation", "cross_session": "CrossSessionEvaluation",
               "cross_subject": "CrossSubjectEvaluation"}


def make_paradigm(dataset: Any, *, events: Sequence[str] | None, fmin: float, fmax: float,
                  channels: Sequence[str] | None, tmax: float | None = None) -> Any:
    """MOABB's paradigm object for ``dataset.paradigm`` with ``events`` (default: every event but ``rest``)."""
    from moabb import paradigms

    names = list(events) if events else [e for e in dataset.event_id if e.lower() != "rest"]
    kw = dict(fmin=fmin, fmax=fmax, channels=list(channels) if channels else None, tmax=tmax)
    if dataset.paradigm == "imagery":
        return paradigms.MotorImagery(events=names, n_classes=len(names), **kw)
    if dataset.paradigm == "p300":
        return paradigms.P300(**kw)
    if dataset.paradigm == "ssvep":
        return paradigms.SSVEP(events=names, n_classes=len(names), **kw)
    raise ValueError(f"{type(dataset).__name__}: paradigm {dataset.paradigm!r} is not one of imagery, p300, ssvep")


def pipelines(chs_info: list[dict], sfreq: float, *, checkpoint: str, epochs: int, lr: float, batch_size: int,
              seed: int) -> dict[str, Any]:
    """``{"EEGMamba": finetuned backbone, "TS+LR": tangent-space baseline}`` as sklearn pipelines MOABB clones per
    fold. ``chs_info``: the epochs' ``info["chs"]`` (names map the channels onto the backbone's vocabulary)."""
    import torch
    from pyriemann.estimation import Covariances
    from pyriemann.tangentspace import TangentSpace
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from finetune.braindecode import EEGClassifier, EEGMambaClassifier

    torch.manual_seed(seed)
    mamba = EEGClassifier(
        EEGMambaClassifier, module__checkpoint=checkpoint, module__sfreq=float(sfreq), module__chs_info=chs_info,
        module__input_units="V", criterion=torch.nn.CrossEntropyLoss, optimizer=torch.optim.AdamW, optimizer__lr=lr,
        batch_size=batch_size, max_epochs=epochs, train_split=None, device="cpu", verbose=0,
    )
    return {
        "EEGMamba": make_pipeline(FunctionTransformer(_float32), mamba),
        "TS+LR": make_pipeline(Covariances("oas"), TangentSpace(metric="riemann"), LogisticRegression(max_iter=1000)),
    }


def _float32(x: np.ndarray) -> np.ndarray:
    """MOABB's float64 epochs as the float32 torch reads."""
    return np.asarray(x, dtype=np.float32)


def evaluate(dataset: Any, root: Path, *, evaluation: str = "within_session", subjects: Sequence[int] | None = None,
             events: Sequence[str] | None = None, fmin: float = 1.0, fmax: float = 45.0,
             channels: Sequence[str] | None = None, tmax: float | None = None,
             checkpoint: str = "eegmamba-tiny-open", epochs: int = 10, lr: float = 1e-3, batch_size: int = 16,
             seed: int = 0, n_splits: int | None = None, work: Path | None = None):
    """MOABB's results table (pandas: score, time, samples, subject, session, pipeline...) of both pipelines."""
    import moabb.evaluations as evaluations

    from shards.corpora.moabb import offline

    if evaluation not in EVALUATIONS:
        raise ValueError(f"evaluation {evaluation!r} is not one of {', '.join(EVALUATIONS)}")
    if subjects:
        dataset.subject_list = [int(s) for s in subjects]
    paradigm = make_paradigm(dataset, events=events, fmin=fmin, fmax=fmax, channels=channels, tmax=tmax)
    work = Path(work or tempfile.mkdtemp(prefix="moabb-eval-"))
    with offline(Path(root).expanduser()):
        epochs_1, _, _ = paradigm.get_data(dataset, dataset.subject_list[:1], return_epochs=True)
        chs_info, sfreq = epochs_1.info["chs"], float(epochs_1.info["sfreq"])
        kw = {"n_splits": n_splits} if n_splits else {}
        ev = getattr(evaluations, EVALUATIONS[evaluation])(paradigm=paradigm, datasets=[dataset], overwrite=True,
                                                           hdf5_path=str(work), random_state=seed, **kw)
        return ev.process(pipelines(chs_info, sfreq, checkpoint=checkpoint, epochs=epochs, lr=lr,
                                    batch_size=batch_size, seed=seed))


def table(results) -> str:
    """Markdown: one row per subject and session, the pipelines side by side, then their means."""
    wide = results.pivot_table(index=["subject", "session"], columns="pipeline", values="score")
    names = list(wide.columns)
    lines = ["| subject | session | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for (subject, session), row in wide.iterrows():
        lines.append(f"| {subject} | {session} | " + " | ".join(f"{row[n]:.3f}" for n in names) + " |")
    lines.append("| mean | | " + " | ".join(f"{wide[n].mean():.3f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=Path, required=True, help="folder holding MOABB's downloads (MNE_DATA)")
    p.add_argument("--dataset", default="BNCI2014_001", help="a moabb.datasets class name")
    p.add_argument("--evaluation", default="within_session", choices=sorted(EVALUATIONS))
    p.add_argument("--subjects", default="", help="comma-separated subject numbers (default: all of the dataset)")
    p.add_argument("--events", default="", help="comma-separated event names (default: all but rest)")
    p.add_argument("--channels", default="", help="comma-separated channel names (default: all EEG)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="set a dataset attribute first")
    p.add_argument("--fmin", type=float, default=1.0)
    p.add_argument("--fmax", type=float, default=45.0)
    p.add_argument("--checkpoint", default="eegmamba-tiny-open")
    p.add_argument("--epochs", type=int, default=10, help="finetuning epochs per fold")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n_splits", type=int, default=None, help="folds of within_session (MOABB's default: 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="folder for results.csv and MOABB's HDF5 results")
    args = p.parse_args(argv)

    from shards.corpora.moabb import moabb_dataset

    dataset = moabb_dataset(args.dataset)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not hasattr(dataset, key):
            p.error(f"--set {item!r}: expected KEY=JSON with KEY an attribute of {args.dataset}")
        try:
            setattr(dataset, key, json.loads(value))
        except json.JSONDecodeError as err:
            p.error(f"--set {item!r}: the value is not JSON ({err})")
    split = [s for s in (v.strip() for v in (args.subjects, args.events, args.channels))]
    results = evaluate(dataset, args.root, evaluation=args.evaluation,
                       subjects=[int(s) for s in split[0].split(",")] if split[0] else None,
                       events=split[1].split(",") if split[1] else None,
                       channels=split[2].split(",") if split[2] else None, fmin=args.fmin, fmax=args.fmax,
                       checkpoint=args.checkpoint, epochs=args.epochs, lr=args.lr, n_splits=args.n_splits,
                       seed=args.seed, work=args.out)
    print(f"{args.dataset}, {args.evaluation}, {len(results) // 2} evaluation(s) per pipeline, "
          f"{int(results['samples'].iloc[0])} epochs in the first:")
    print(table(results))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        results.to_csv(args.out / "results.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
