"""Generic unlabeled "folder of recordings": every EEG recording under a root, for pretraining corpora.

Every format of :data:`shards.formats.FORMATS` counts (EDF, BDF, GDF, FIF, EEGLAB, BrainVision, Neuroscan /
ANT CNT, Curry, Persyst, Nihon Kohden, EGI ``.mff`` folders and ``.raw`` files, eXimia, NEDF, Nicolet, BCI2000, NSx, MEF3, XDF,
and the clinical formats MNE cannot read, which are skipped with the way out). Multi-file formats count once,
by their header file; sidecars (``.fdt``, ``.vmrk``, ``.21E``, Persyst's ``.dat``, split FIF parts, ...), readmes
and montage files are not recordings. The subject is BIDS ``sub-XX`` when the path has one, else the name of the folder holding
the file.

Folder symlinks are followed once (a linked folder outside the root is searched). A link back into a folder
already searched (a symlink loop, or a second link to the same folder) and a file link that loops or dangles
are listed as recordings that the build skips with that reason, so nothing is left out without a word.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from shards import formats
from shards.corpora.base import Adapter, Loaded, Recording, check_root, register, require_found
from shards.readers import ReadError, read_raw

EXTENSIONS = formats.recording_extensions()
_BIDS = re.compile(r"^(sub|ses)-([A-Za-z0-9]+)")


def recording_suffix(path: Path) -> str | None:
    """The recording extension of ``path`` (lower case) or None for sidecars and other files."""
    fmt = formats.detect(path)
    if fmt is None or not fmt.discover:
        return None
    return formats.extension(path)


def bids_entities(rel: Path) -> dict[str, str]:
    """``{"sub": "01", "ses": "02"}`` from folder/file names like ``sub-01/ses-02/eeg/sub-01_..``."""
    found: dict[str, str] = {}
    for part in rel.parts:
        for token in part.split("_"):
            m = _BIDS.match(token)
            if m and m.group(1) not in found:
                found[m.group(1)] = m.group(2)
    return found


def find_recordings(root: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Recording paths under ``root`` (files and format folders, hidden names left out) and the folder links
    not followed, each with the reason.

    Real folders are searched first, then folder symlinks whose target is not searched yet; a link whose
    target was searched is a loop (it leads to one of its own ancestors) or a duplicate.
    """
    found: list[Path] = []
    unfollowed: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    links: list[Path] = []

    def walk(folder: Path) -> None:
        stack = [folder]
        while stack:
            d = stack.pop()
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError as err:
                unfollowed.append((d, f"cannot list folder ({err.strerror or err})"))
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path = Path(entry.path)
                fmt = formats.detect(path)
                if os.path.isdir(path):  # follows links; a looping link is not a dir and goes on as a file below
                    if fmt is not None and fmt.folder and fmt.discover:
                        found.append(path)
                    elif entry.is_symlink():
                        links.append(path)
                    else:
                        seen.add(path.resolve())
                        stack.append(path)
                elif fmt is not None and fmt.discover and not fmt.folder:
                    found.append(path)
                elif entry.is_symlink() and not os.path.exists(path) and formats.extension(path) in EXTENSIONS:
                    found.append(path)  # a looping or dangling link named like a recording: read_raw says which

    seen.add(root.resolve())
    walk(root)
    while links:
        link = links.pop(0)
        target = link.resolve()
        if target in seen:
            ancestor = target == link.parent.resolve() or target in link.parent.resolve().parents
            what = "symlink loop: it leads back to its own ancestor" if ancestor else "link to a folder already searched"
            unfollowed.append((link, f"{what} {target}; its recordings are listed once, under their own paths"))
            continue
        seen.add(target)
        walk(link)
    return found, unfollowed


@register
class Recordings(Adapter):
    name = "recordings"
    task = None
    label_names = ()
    mains_hz = 50.0  # unknown in general; 50 Hz covers most of the world (override per corpus)

    def find(self, root: Path) -> list[Recording]:
        root = check_root(root, self.name)
        found, unfollowed = find_recordings(root)
        recs = [self._recording(root, path) for path in found]
        for link, reason in unfollowed:
            rel = link.relative_to(root)
            recs.append(self.recording(root, link, rel.as_posix() + "_link", subject=rel.parent.name or root.name,
                                       session="", skip=reason, link=str(link)))
        return require_found(recs, root, self.name, "|".join(f"*{e}" for e in EXTENSIONS))

    def _recording(self, root: Path, path: Path) -> Recording:
        rel = path.relative_to(root)
        ext = formats.extension(path)
        bids = bids_entities(rel)
        subject = f"sub-{bids['sub']}" if "sub" in bids else (rel.parent.name or root.name)
        session = f"ses-{bids['ses']}" if "ses" in bids else ""
        # The id keeps the folders and the extension: test.edf and test.bdf side by side are two recordings.
        rid = rel.as_posix()[: -len(ext)] + "_" + ext.lstrip(".").replace(".", "_")
        return self.recording(root, path, rid, subject=subject, session=session, format=ext)

    def load(self, rec: Recording) -> Loaded:
        if "skip" in rec.extra:
            raise ReadError(rec.extra.get("link", rec.path), rec.extra["skip"])
        return Loaded(read_raw(rec.path), None)
