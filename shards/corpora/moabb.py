"""Any MOABB dataset a user has downloaded (``pip install -e ".[moabb]"``): motor imagery, P300, SSVEP, c-VEP.

``python -m shards build moabb:BNCI2014_001 --root ~/mne_data --out shards`` shards the subjects of
``moabb.datasets.BNCI2014_001`` found under ``--root`` (the folder MOABB downloads into, ``MNE_DATA``); in
Python, :class:`MoabbCorpus` takes a configured dataset object (``MoabbCorpus(PhysionetMI(imagined=True))``).
Shards go to ``{out}/moabb_{Dataset}/``.

MOABB reads the files (``dataset.get_data``): its channel names, units (volts) and event coding are the
dataset's as MOABB curates them. One MOABB run (subject, session, run) is one recording; ids
``{Dataset}_sub-{S}_ses-{session}_run-{run}``, subjects ``sub-{S}``.

Labels: each event MOABB marks (the annotations its raw pipeline sets from the stim channel, named by the
dataset's ``event_id``) is one labelled span from ``onset + interval[0]`` lasting the paradigm's trial
``interval``; the window is the trial, at least :data:`MIN_WINDOW_S` (one patch of the model) and otherwise
whole seconds of it, so each trial gives one window labelled with the dataset's event name (``left_hand``,
``Target``, ``13`` Hz...). The task is ``motor_imagery`` for MOABB's ``imagery`` paradigm (its event names are
those of the motor-imagery recipe's BCI-IV-2a classes) and the paradigm's name otherwise (``p300``,
``ssvep``, ``cvep``). Annotations of other names (MOABB keeps its ``BAD_*`` artifact marks) are counted in
the manifest's ``label_skips``.

Offline: the build never downloads. While MOABB reads, ``MNE_DATA`` and every ``MNE_DATASETS_*_PATH`` of the
user's MNE config point at ``--root``, MOABB's download provider is ``upstream`` (no NEMAR index look-up) and
network connections are refused, so a subject whose files are not
under the root is left out of :meth:`MoabbCorpus.find` with a warning naming it (all missing: one error
naming the root). Listing the runs means reading each subject once (MOABB has no cheaper index); ``load``
keeps the last subject read, so a build reads each subject about twice.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shards.corpora.base import (Adapter, LabelError, Loaded, Recording, check_root, register_family, safe_id,
                                 unique_ids)
from shards.preprocess import Segment

__all__ = ["MoabbCorpus", "MIN_WINDOW_S", "TASKS", "NotDownloaded", "offline", "moabb_dataset"]

log = logging.getLogger("shards.corpora.moabb")

MIN_WINDOW_S = 1.0  # one patch of the backbone: a P300 epoch (0.6-1 s) is cut as 1 s from its flash
TASKS = {"imagery": "motor_imagery"}  # other MOABB paradigms keep their name as the task
_INSTALL = 'the moabb corpus needs the optional package moabb: pip install -e ".[moabb]"'


class NotDownloaded(OSError):
    """MOABB tried to reach the network: the files it wanted are not under the build's root."""


@contextlib.contextmanager
def offline(root: Path) -> Iterator[None]:
    """MNE / MOABB data paths pointed at ``root`` and IP connections refused, for the duration of the block.

    Environment variables win over MNE's config file (``mne.get_config``), so the user's config is not edited;
    the keys it already sets (``MNE_DATASETS_BNCI_PATH``...) are overridden too, or MOABB would read there."""
    import mne

    keys = {"MNE_DATA"} | {k for k in mne.get_config() if k.startswith("MNE_DATASETS_") and k.endswith("_PATH")}
    saved = {k: os.environ.get(k) for k in keys | {"MOABB_DOWNLOAD_PROVIDER"}}
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def refuse(host: Any) -> None:
        raise NotDownloaded(f"not downloaded under {root} (MOABB tried to reach {host}; the build stays offline)")

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            refuse(address)
        return connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            refuse(host)
        return getaddrinfo(host, *args, **kwargs)

    os.environ.update({k: str(root) for k in keys})
    # no NEMAR index look-up (MOABB retries it with back-off before its own reader); files MOABB already holds in
    # its NEMAR store are still read from there
    os.environ["MOABB_DOWNLOAD_PROVIDER"] = "upstream"
    socket.socket.connect, socket.getaddrinfo = guarded_connect, guarded_getaddrinfo  # type: ignore[method-assign]
    try:
        yield
    finally:
        socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo  # type: ignore[method-assign]
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def moabb_dataset(name: str) -> Any:
    """``moabb.datasets.<name>()``; ValueError naming the known datasets when there is none of that name."""
    try:
        import moabb.datasets as datasets
        from moabb.datasets.base import BaseDataset
    except ImportError:
        raise ValueError(_INSTALL) from None
    cls = getattr(datasets, name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseDataset)):
        known = sorted(n for n, c in vars(datasets).items() if isinstance(c, type) and issubclass(c, BaseDataset)
                       and not n.startswith("Base") and "Fake" not in n)
        raise ValueError(f"moabb:{name}: no MOABB dataset of that name; known: {', '.join(known[:40])}, ...")
    return cls()


class MoabbCorpus(Adapter):
    """One MOABB dataset as a corpus (module doc). ``dataset``: a ``moabb.datasets`` object or class name."""

    name = "moabb"
    task = None
    label_names = ()
    mains_hz = None  # MOABB datasets come from both sides of the Atlantic: notch with --notch when needed

    def __init__(self, dataset: Any) -> None:
        self.dataset = moabb_dataset(dataset) if isinstance(dataset, str) else dataset
        self.dataset_name = type(self.dataset).__name__
        self.name = f"moabb_{self.dataset_name}"  # type: ignore[misc]
        paradigm = str(self.dataset.paradigm)
        self.task = TASKS.get(paradigm, paradigm)  # type: ignore[misc]
        # label i <-> the dataset's i-th event in code order (MOABB's own event_id)
        self.label_names = tuple(sorted(self.dataset.event_id, key=self.dataset.event_id.get))  # type: ignore[misc]
        tmin, tmax = (float(v) for v in self.dataset.interval)
        self.interval = (tmin, tmax)
        window = max(MIN_WINDOW_S, float(math.floor(tmax - tmin)))
        # labelled benchmark: every trial kept (see base.py); one window per trial
        self.preprocess_overrides = {"window_s": window, "stride_s": window, "max_abs_uv": None}  # type: ignore[misc]
        self._cache: tuple[tuple[str, int], dict] | None = None

    def __repr__(self) -> str:
        return f"<MoabbCorpus {self.dataset_name} task={self.task!r} labels={self.label_names} interval={self.interval}>"

    def __getstate__(self) -> dict:  # to a worker process: the dataset object, not the subject read last
        return {**self.__dict__, "_cache": None}

    def _subject(self, root: Path, subject: int) -> dict:
        """``{session: {run: raw}}`` of one subject as MOABB reads it from ``root``; NotDownloaded when absent."""
        key = (str(root), int(subject))
        if self._cache is None or self._cache[0] != key:
            self._cache = None
            with offline(root):
                self._cache = (key, self.dataset.get_data([int(subject)])[int(subject)])
        return self._cache[1]

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        recs, missing = [], []
        for subject in self.dataset.subject_list:
            try:
                sessions = self._subject(root, subject)
            except Exception as err:  # noqa: BLE001 - MOABB wraps a refused download in many exception types
                if not _is_not_downloaded(err):
                    raise
                missing.append(subject)
                continue
            for session, runs in sorted(sessions.items()):
                for run in sorted(runs):
                    recs.append(Recording(
                        corpus=self.name, recording=safe_id(f"{self.dataset_name}_sub-{subject}_ses-{session}_run-{run}"),
                        subject=f"sub-{subject}", session=str(session), source=f"{self.dataset_name}/sub-{subject}/"
                        f"ses-{session}/run-{run}", path=root, task=self.task,
                        extra={"subject": str(subject), "session": str(session), "run": str(run)}))
        if missing:
            log.warning("%s: subject(s) %s not downloaded under %s: left out", self.name,
                        ", ".join(map(str, missing)), root)
        if not recs:
            raise FileNotFoundError(f"{self.name}: no subject of MOABB's {self.dataset_name} is downloaded under "
                                    f"{root} (download it with moabb first, e.g. dataset.download(path=...))")
        return unique_ids(recs)

    def load(self, rec: Recording) -> Loaded:
        sessions = self._subject(Path(rec.path), int(rec.extra["subject"]))
        raw = sessions[rec.extra["session"]][rec.extra["run"]]
        raw = raw.copy().load_data(verbose="error")  # the cached subject stays as MOABB gave it
        window = float(self.preprocess_overrides["window_s"])
        first = raw.first_time if raw.annotations.orig_time is not None else 0.0
        segments, skipped = [], {}
        for ann in raw.annotations:
            desc = str(ann["description"])
            if desc not in self.label_names:
                skipped[f"event_{desc}"] = skipped.get(f"event_{desc}", 0) + 1
                continue
            # MOABB's annotations start at onset + interval[0] and last the interval
            duration = max(float(ann["duration"]) or self.interval[1] - self.interval[0], window)
            segments.append(Segment(float(ann["onset"]) - first, duration, self.label_names.index(desc), desc))
        if not segments:
            raise LabelError(rec.source, f"no events of {', '.join(self.label_names)} in this run (MOABB's "
                                         f"{self.dataset_name}, paradigm {self.dataset.paradigm})")
        segments.sort(key=lambda s: s.onset_s)
        return Loaded(raw, segments, skipped)


def _is_not_downloaded(err: BaseException | None) -> bool:
    while err is not None:
        if isinstance(err, NotDownloaded):
            return True
        err = err.__cause__ or err.__context__
    return False


register_family("moabb", MoabbCorpus, "moabb:DATASET (a moabb.datasets class, e.g. moabb:BNCI2014_001)")
