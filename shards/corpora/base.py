"""The corpus-adapter interface and the registry of adapters.

An adapter knows one corpus's folder layout and where its labels live. ``find(root)`` lists the
recordings (cheap: file names and small sidecars only, never signals), ``load(rec)`` reads one
recording with :func:`shards.readers.read_raw` (or a text reader) and turns its annotations into
labelled :class:`~shards.preprocess.Segment` spans in seconds. The writer cuts windows inside the
segments (``None`` = unlabeled: window the whole recording).

Labelled adapters set ``max_abs_uv: None`` in ``preprocess_overrides``: the amplitude bound is an
artifact filter for pretraining corpora, but on a benchmark it would remove exactly the high-amplitude
classes (seizures, TUEV's eye-movement/artifact events, blinks in motor-imagery trials) and make results
incomparable with the literature, which keeps every trial. Flat and NaN windows are still dropped.

One bad file must never stop a build: ``find`` lists what is there, ``load`` raises
:class:`shards.readers.ReadError` (signal unreadable) or :class:`LabelError` (annotation unreadable or
inconsistent) for that recording only, and the writer records it as skipped.

Registering a new adapter is one decorator plus one import line in ``shards/corpora/__init__.py``::

    @register
    class MyCorpus(Adapter):
        name = "my_corpus"
        ...
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import mne

from shards.preprocess import Segment

__all__ = [
    "Adapter",
    "CORPORA",
    "LabelError",
    "Loaded",
    "Recording",
    "get_corpus",
    "register",
    "register_family",
    "FAMILIES",
    "safe_id",
]


class LabelError(ValueError):
    """An annotation / label file is missing, unreadable or inconsistent with its recording."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # keep the two-argument form picklable across writer worker processes
        return (type(self), (str(self.path), self.reason))


@dataclass(frozen=True)
class Recording:
    """One recording of a corpus, as listed by :meth:`Adapter.find` (no signal read yet)."""

    corpus: str
    recording: str  # id unique within the corpus, only [A-Za-z0-9_-]
    subject: str
    session: str
    source: str  # main file path relative to the corpus root (posix)
    # Absolute main file as listed, symlinks kept: in DataLad / git-annex datasets (OpenNeuro, NEMAR) every file
    # is a link to .git/annex/objects/../SHA256E-s123--abc.edf, and only the link's name and folder carry the
    # BIDS entities and the sidecars of multi-file formats (.vmrk/.eeg next to a .vhdr, .fdt next to a .set).
    path: Path
    task: str | None  # "seizure" | "sleep" | "emotion" | "motor_imagery" | other task string | None
    extra: Mapping[str, str] = field(default_factory=dict)  # adapter-specific (sidecar paths, split, ...)
    # Per-subject facts (age, sex, task performance) from the corpus's own tables; copied into every
    # sample's JSON as ``subject_info`` (absent when empty), unlike ``extra``, which stays build-side.
    subject_info: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Loaded:
    """A loaded recording: the raw signal and its labelled spans.

    ``skipped`` counts annotated spans that carry no usable label (e.g. DREAMS code -1, Sleep-EDF
    "Movement time" / "?") by reason, so the manifest can report them; it is empty when none were.
    ``mains_hz`` is the power-line frequency the recording states (BIDS ``PowerLineFrequency``): the build
    notches this recording there instead of at its configured ``notch`` (None = the recording does not say).
    """

    raw: mne.io.BaseRaw
    segments: list[Segment] | None  # None = unlabeled, window the whole recording
    skipped: dict[str, int] = field(default_factory=dict)
    mains_hz: float | None = None


class Adapter:
    """Base class of corpus adapters. Subclasses set the class attributes and implement find/load."""

    name: ClassVar[str] = ""
    task: ClassVar[str | None] = None
    label_names: ClassVar[tuple[str, ...]] = ()  # label int i <-> label_names[i]
    mains_hz: ClassVar[float | None] = 50.0
    preprocess_overrides: ClassVar[Mapping[str, Any]] = {}
    # Raw channel name -> canonical name for names the vocabulary cannot know (preprocess_raw's channel_map).
    channel_map: ClassVar[Mapping[str, str] | None] = None

    def find(self, root: Path) -> list[Recording]:
        """All recordings under ``root``, sorted by id; FileNotFoundError naming ``root`` if none."""
        raise NotImplementedError

    def load(self, rec: Recording) -> Loaded:
        """Read one recording; ReadError / LabelError naming the file and the reason."""
        raise NotImplementedError

    # helpers shared by the adapters ------------------------------------------------------------
    def label(self, name: str) -> int:
        return self.label_names.index(name)

    def segment(self, onset_s: float, duration_s: float, label_name: str) -> Segment:
        return Segment(float(onset_s), float(duration_s), self.label(label_name), label_name)

    def whole(self, raw: mne.io.BaseRaw, label_name: str) -> list[Segment]:
        """One segment covering the whole recording, for corpora labelled per recording."""
        return [self.segment(0.0, raw.n_times / raw.info["sfreq"], label_name)]

    def recording(
        self,
        root: Path,
        path: Path,
        recording: str,
        subject: str,
        session: str,
        task: str | None | object = ...,
        subject_info: Mapping[str, Any] | None = None,
        **extra: str,
    ) -> Recording:
        return Recording(
            corpus=self.name,
            recording=safe_id(recording),
            subject=subject,
            session=session,
            source=path.relative_to(root).as_posix(),
            path=path.absolute(),  # never resolved: see Recording.path
            task=self.task if task is ... else task,  # ... = the adapter's task; None = unlabeled
            extra=dict(extra),
            subject_info=dict(subject_info or {}),
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} corpus={self.name!r} task={self.task!r} labels={self.label_names}>"


CORPORA: dict[str, Adapter] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: instantiate the adapter and add it to :data:`CORPORA` under ``cls.name``."""
    if not cls.name or not re.fullmatch(r"[A-Za-z0-9_-]+", cls.name):
        raise ValueError(f"adapter {cls.__name__} needs a name of [A-Za-z0-9_-], got {cls.name!r}")
    if cls.name in CORPORA and type(CORPORA[cls.name]) is not cls:
        raise ValueError(f"corpus name {cls.name!r} registered twice ({type(CORPORA[cls.name]).__name__}, {cls.__name__})")
    CORPORA[cls.name] = cls()
    return cls


# Adapters made per argument: ``family:ARG`` (``moabb:BNCI2014_001``) -> factory(ARG), with a usage line for ``list``.
FAMILIES: dict[str, tuple[Callable[[str], Adapter], str]] = {}


def register_family(prefix: str, factory: Callable[[str], Adapter], usage: str) -> None:
    """Make ``get_corpus(f"{prefix}:ARG")`` return ``factory(ARG)`` (one adapter per dataset of a library)."""
    FAMILIES[prefix] = (factory, usage)


def get_corpus(name: str) -> Adapter:
    """The registered adapter called ``name`` (or ``family:ARG``); KeyError listing the known names otherwise."""
    family, sep, arg = name.partition(":")
    if sep and family in FAMILIES:
        if not arg:
            raise KeyError(f"corpus {name!r} names no dataset; usage: {FAMILIES[family][1]}")
        try:
            return FAMILIES[family][0](arg)
        except ValueError as err:
            raise KeyError(str(err)) from None
    try:
        return CORPORA[name]
    except KeyError:
        known = sorted(CORPORA) + [usage for _, usage in FAMILIES.values()]
        raise KeyError(f"unknown corpus {name!r}; known corpora: {', '.join(known)}") from None


# ---------------------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9_-]`` replaced by one ``_``.

    Sample keys are ``{corpus}__{recording}__{window}`` and WebDataset groups members by the part
    before the first dot, so a dot in an id would split one sample into several.
    """
    out = _UNSAFE.sub("_", text).strip("_")
    if not out:
        raise ValueError(f"cannot make a recording id from {text!r}")
    return out


def unique_ids(records: Sequence[Recording]) -> list[Recording]:
    """Sorted by id; ids that collide after :func:`safe_id` get a short hash of their source appended.

    The hash depends only on the relative path, so ids stay stable between builds and machines.
    """
    counts: dict[str, int] = {}
    for r in records:
        counts[r.recording] = counts.get(r.recording, 0) + 1
    out = []
    for r in records:
        if counts[r.recording] > 1:
            digest = hashlib.sha1(r.source.encode()).hexdigest()[:8]
            r = dataclasses.replace(r, recording=f"{r.recording}-{digest}")
        out.append(r)
    return sorted(out, key=lambda r: r.recording)


def require_found(records: list[Recording], root: Path, corpus: str, pattern: str) -> list[Recording]:
    """``records`` sorted and de-duplicated; FileNotFoundError naming ``root`` when empty/absent."""
    if not records:
        raise FileNotFoundError(f"{corpus}: no recordings matching {pattern} under {root}")
    return unique_ids(records)


def check_root(root: Path | str, corpus: str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{corpus}: corpus root {root} does not exist or is not a folder")
    return root.resolve()


def sidecar(rec: Recording, key: str, what: str) -> Path:
    """The label file ``rec.extra[key]`` (hypnogram, event list, summary); LabelError naming it when missing."""
    path = Path(rec.extra[key])
    if not path.is_file():
        raise LabelError(path, f"{what} for {rec.path.name} is missing")
    return path
