"""Place channels whose names say nothing ("EEG 000", "1", BioSemi "A17") at standard 10-05 sites by position.

Where a recording carries electrode positions (EEGLAB chanlocs, BrainVision coordinates, FIF digitisation,
Neuroscan / Curry sensor files, a montage file next to the recording (:func:`shards.formats.montage_file`): all
read by MNE into ``info["chs"][i]["loc"]`` in its head frame) or a known cap layout is named
(``montage="biosemi64"`` for BioSemi ABC labels), each channel without a vocabulary name is mapped to the
nearest 10-05 site, if that site is within ``max_distance_mm``.

How the recording's head is compared with a standard one (:func:`_align`, :func:`_choose`,
:func:`place_by_position`):
- a standard head is the 10-05 sites the vocabulary knows as unit directions from its sphere's centre. Three
  are kept: MNE's ``spherical_1005`` with the polar angle stretched by 90/72 to the cap files' convention (10-20
  equator at 90 degrees; the default), the Colin27 MRI head of MNE's ``standard_1005`` (digitised positions) and
  ``spherical_1005`` as MNE draws it (equator at 72 degrees);
- the recording's positions (4 or more) get a least-squares sphere fit, and each is replaced by its unit
  direction from the fitted centre: head size and the origin's offset drop out, the orientation is taken to be
  MNE's head frame (x right, y nose, z up) as the file gave it. Degenerate clouds (too few, coplanar) place nothing;
- with 4 or more named channels that also have positions (anchors), their median distance from their own sites
  is measured; only when it exceeds 5 mm (a frame from another convention) are all directions rotated by the
  least-squares rotation onto those sites (Kabsch, no reflection, no scale). Below that nothing is moved: a fit
  to a few anchors would also bend positions that were right;
- the default head is used unless another fits the recording clearly better (:func:`_choose`);
- distances are chords between unit directions times the standard head's radius (~9.5 cm), in mm. Channels
  take sites greedily in order of distance (a 10-05 half site counts 3 mm farther than a 10-10 site), each site
  at most once, sites of named channels never; a channel whose best free site is farther than the limit stays
  out with the reason.
Default limit 10 mm: about half the spacing of the 10-10 sites, so a channel is never placed on a neighbour
(measured: the 61 chanlocs of MNE's ``test_raw_chanloc.set`` renamed to ``EEG 000``... land on their own
sites; see tests/test_positions.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import mne
import numpy as np

from shards.vocabulary import CHANNELS, classify_channel

__all__ = ["ABC_MONTAGES", "MAX_DISTANCE_MM", "Placement", "place_by_position", "place_unnamed", "standard_sites"]

MAX_DISTANCE_MM = 10.0
ABC_MONTAGES = ("biosemi16", "biosemi32", "biosemi64", "biosemi128", "biosemi160", "biosemi256")
_MIN_ANCHORS = 4
_POLAR_STRETCH = 90.0 / 72.0
# A channel between a 10-10 site and a 10-05 half site goes to the 10-10 one unless the half site is this much
# closer: most caps are 10-20 / 10-10 layouts, and cap coordinates are only accurate to a few mm.
_HALF_SITE_MM = 3.0
_ROTATE_ABOVE_MM = 5.0
# Another head than the cap files' sphere is used where it fits (median channel within 6 mm) and 3 mm better.
_HEAD_FITS_MM = 6.0
_OTHER_HEAD_MARGIN_MM = 3.0
_TEN_TEN = re.compile(r"^(FP|AF|F|FC|FT|C|T|CP|TP|P|PO|O|I)(\d+|Z)$")
_ABC = re.compile(r"^([A-H])(\d{1,2})$")
_SINGLE = frozenset(n for n in CHANNELS[2:] if "-" not in n)


@dataclass(frozen=True)
class Placement:
    """Outcome for one channel: ``canonical`` site (None = left out), distance in mm, and the reason text."""

    canonical: str | None
    distance_mm: float
    reason: str


def _montage(name: str) -> mne.channels.DigMontage:
    if name == "standard_1005" and "colin27_1005" in mne.channels.get_builtin_montages():
        name = "colin27_1005"  # the same positions under MNE >= 1.13's name (standard_1005 is deprecated)
    return mne.channels.make_standard_montage(name)


def _head_positions(montage: mne.channels.DigMontage) -> dict[str, np.ndarray]:
    """Channel name -> position in MNE's head frame (via the montage's fiducials when it has them)."""
    pos = montage.get_positions()
    names = list(pos["ch_pos"])
    xyz = np.array([pos["ch_pos"][n] for n in names], float)
    if pos["coord_frame"] != "head" and all(pos[k] is not None for k in ("nasion", "lpa", "rpa")):
        xyz = mne.transforms.apply_trans(mne.channels.compute_native_head_t(montage), xyz)
    return dict(zip(names, xyz))


@dataclass(frozen=True)
class _Head:
    """A standard head to place channels on: canonical 10-05 ``names``, their unit ``directions [K, 3]`` from the
    head's fitted sphere centre (MNE's head orientation), the sphere's ``radius`` (m) that distances are reported
    on, and ``half [K]``: 1.0 for the 10-05 half sites that are not 10-10 sites (FFC3H, AFF1, ...), else 0.0."""

    names: tuple[str, ...]
    directions: np.ndarray
    radius: float
    half: np.ndarray


def _sites(montage: str) -> tuple[list[str], np.ndarray]:
    names, xyz = [], []
    for raw_name, p in _head_positions(_montage(montage)).items():
        canonical = classify_channel(raw_name)[0]
        if canonical in _SINGLE and canonical not in names and np.isfinite(p).all():
            names.append(canonical)
            xyz.append(p)
    return names, np.array(xyz)


def _head(names: list[str], unit: np.ndarray, radius: float) -> _Head:
    return _Head(tuple(names), unit, radius, np.array([0.0 if _TEN_TEN.match(n) else 1.0 for n in names]))


@lru_cache(maxsize=1)
def _heads() -> tuple[_Head, ...]:
    """The standard heads, the default first: spherical as cap files draw it, realistic (digitised positions),
    and spherical as MNE's ``spherical_10xx`` montages draw it (equator at 72 degrees); see :func:`_choose`."""
    names, xyz = _sites("colin27_1005")  # MNE's standard_1005: the 10-05 sites on the Colin27 MRI head
    centre, radius = _sphere(xyz)
    mne_names, mne_xyz = _sites("spherical_1005")
    mne_radius = float(np.median(np.linalg.norm(mne_xyz, axis=1)))
    return (_head(*standard_sites()), _head(names, _on_sphere(xyz, centre), radius),
            _head(mne_names, mne_xyz / np.linalg.norm(mne_xyz, axis=1, keepdims=True), mne_radius))


@lru_cache(maxsize=1)
def standard_sites() -> tuple[tuple[str, ...], np.ndarray, float]:
    """The 10-05 sites the vocabulary knows on MNE's spherical head (``spherical_1005``, the convention of
    spherical cap files: EEGLAB, BESA, BrainVision): canonical names, unit directions ``[K, 3]`` from the
    sphere's centre in MNE's head orientation, and the sphere's radius (m) that distances are reported on."""
    names, xyz = _sites("spherical_1005")
    radius = float(np.median(np.linalg.norm(xyz, axis=1)))
    unit = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    # MNE's spherical_1005 puts the 10-20 equator (Fpz, T7, Oz, T8) 72 degrees from the vertex; cap files
    # (EEGLAB, BESA, BrainVision, Neuroscan) put it at 90 (C3 at 45). Stretch the polar angle to theirs.
    theta = np.arccos(np.clip(unit[:, 2], -1, 1)) * _POLAR_STRETCH
    phi = np.arctan2(unit[:, 1], unit[:, 0])
    unit = np.c_[np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)]
    return tuple(names), unit, radius


def montage_sites(ch_names: Sequence[str], montage: str) -> tuple[dict[int, str], dict[int, np.ndarray]]:
    """BioSemi ABC labels (``A1``..``H32``) under the named cap layout: ``(index -> canonical name, index ->
    head-frame position)``.

    MNE's biosemi16/32/64 layouts list 10-20 names in the cap's A1, A2, ... order (A1..A32 then B1..B32), so
    those labels get their name directly; biosemi128/160/256 label their sites A1..H32 themselves, and those
    channels get the layout's positions, to be placed like recorded ones.
    """
    if montage not in ABC_MONTAGES:
        raise ValueError(f"montage {montage!r} is not a BioSemi ABC layout; known: {', '.join(ABC_MONTAGES)}")
    layout = _montage(montage)
    order = list(layout.ch_names)
    head = _head_positions(layout)
    named, placed = {}, {}
    for i, name in enumerate(ch_names):
        m = _ABC.match(name.strip().upper())
        if m is None or not 1 <= int(m.group(2)) <= 32:
            continue
        k = (ord(m.group(1)) - ord("A")) * 32 + int(m.group(2)) - 1
        if k >= len(order):
            continue
        canonical = classify_channel(order[k])[0]
        if canonical in _SINGLE:
            named[i] = canonical
        else:
            placed[i] = head[order[k]]
    return named, placed


def recorded_positions(info: mne.Info) -> dict[int, np.ndarray]:
    """Channel index -> head-frame position (m) for every channel whose file gave one."""
    out = {}
    for i, ch in enumerate(info["chs"]):
        loc = np.asarray(ch["loc"][:3], float)
        if ch["coord_frame"] == mne.io.constants.FIFF.FIFFV_COORD_HEAD and np.isfinite(loc).all() and loc.any():
            out[i] = loc
    return out


def _sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through ``points [N, 3]``: centre and radius."""
    a = np.c_[2 * points, np.ones(len(points))]
    sol, *_ = np.linalg.lstsq(a, (points**2).sum(1), rcond=None)
    centre = sol[:3]
    return centre, float(np.sqrt(sol[3] + centre @ centre))


def _on_sphere(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
    v = points - centre
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _kabsch(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Rotation ``[3, 3]`` taking unit vectors ``src [N, 3]`` closest to ``dst`` (no reflection)."""
    u, _, vt = np.linalg.svd(dst.T @ src)
    d = np.eye(3)
    d[2, 2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    return u @ d @ vt


def _align(points: np.ndarray, anchors: Mapping[int, str], rows: Sequence[int], head: _Head) -> np.ndarray | None:
    """``points [N, 3]`` (rows = channel indices) as unit directions on ``head``'s sphere, or None when they do
    not lie on a head-shaped surface (too few, or coplanar)."""
    site_of = dict(zip(head.names, head.directions))
    try:
        centre, radius = _sphere(points)
    except np.linalg.LinAlgError:
        return None
    if not np.isfinite(radius) or radius <= 0:
        return None
    unit = _on_sphere(points, centre)
    pairs = [(rows.index(i), site_of[c]) for i, c in anchors.items() if c in site_of and i in rows]
    if len(pairs) >= _MIN_ANCHORS:
        # Named channels check MNE's head frame; they rotate the cap only where it is visibly off (a frame
        # from another convention), since a fit to a few anchors also bends positions that were right.
        got, want = unit[[k for k, _ in pairs]], np.array([s for _, s in pairs])
        off_mm = np.median(np.linalg.norm(got - want, axis=1)) * head.radius * 1000.0
        if off_mm > _ROTATE_ABOVE_MM:
            unit = unit @ _kabsch(got, want).T
    return unit


def _choose(points: np.ndarray, anchors: Mapping[int, str], rows: Sequence[int]) -> tuple[_Head, np.ndarray] | None:
    """The standard head that ``points`` fit, and their directions on it (None: not head-shaped).

    Spherical cap files (EEGLAB, BESA, BrainVision, Neuroscan) follow the cap files' sphere (the default);
    digitised and template positions (FIF, Polhemus / Xensor ``.elc``, ``standard_1005`` exports) follow a real
    head, whose 10-20 equator sits lower at the front; MNE's ``spherical_10xx`` montages put the equator at 72
    degrees. On the wrong head a 10-10 cap lands between sites. The fit of a head is the median distance (mm) of
    the anchors from their own sites, or, with fewer than 4 anchors, of every channel from its nearest 10-10 site.
    Another head replaces the default only where it fits (within :data:`_HEAD_FITS_MM`) and at least
    :data:`_OTHER_HEAD_MARGIN_MM` better. Measured medians on the right head / the others: the shared caps
    3.3-4.9 / 9.4-11.8 mm, MNE's ``colin27_1020`` 2.0 / 10.5-12.0, ``mgh60`` 2.1 / 12.5-13.0, ``easycap-M1``
    3.3 / 10.8-11.6; EGI nets and the 128-channel ``scan41_short.cnt`` fit none (11.9-15.6) and stay on the default.
    """
    fits = []
    for head in _heads():
        unit = _align(points, anchors, rows, head)
        if unit is None:
            return None
        site_of = dict(zip(head.names, head.directions))
        pairs = [(rows.index(i), site_of[c]) for i, c in anchors.items() if c in site_of and i in rows]
        if len(pairs) >= _MIN_ANCHORS:
            off = np.linalg.norm(unit[[k for k, _ in pairs]] - np.array([s for _, s in pairs]), axis=1)
        else:
            ten = head.directions[head.half == 0.0]
            off = np.min(np.linalg.norm(unit[:, None] - ten[None], axis=2), axis=1)
        fits.append((float(np.median(off)) * head.radius * 1000.0, head, unit))
    best = min(fits[1:], key=lambda f: f[0])
    _, head, unit = best if best[0] <= _HEAD_FITS_MM and best[0] + _OTHER_HEAD_MARGIN_MM < fits[0][0] else fits[0]
    return head, unit


def place_by_position(
    positions: Mapping[int, np.ndarray],
    anchors: Mapping[int, str],
    candidates: Sequence[int],
    ch_names: Sequence[str],
    max_distance_mm: float = MAX_DISTANCE_MM,
    taken: Mapping[str, str] | None = None,
) -> dict[int, Placement]:
    """Nearest free 10-05 site for each channel index in ``candidates`` that has a position.

    ``positions``: channel index -> head-frame position (m) of every channel with one; ``anchors``: index ->
    canonical name of the channels already named (they align the heads and keep their sites); ``taken``:
    further sites already used (canonical -> raw name), e.g. by named channels without a position.
    """
    rows = sorted(positions)
    todo = [i for i in candidates if i in positions]
    if not todo or len(rows) < _MIN_ANCHORS:
        return {}
    chosen = _choose(np.array([positions[i] for i in rows]), anchors, rows)
    if chosen is None:
        return {}
    head, unit = chosen
    moved = dict(zip(rows, unit))
    names = head.names
    taken = {**(taken or {}), **{c: ch_names[i] for i, c in anchors.items()}}
    dist = {i: np.linalg.norm(head.directions - moved[i], axis=1) * head.radius * 1000.0 for i in todo}
    cost = {i: dist[i] + _HALF_SITE_MM * head.half for i in todo}
    out: dict[int, Placement] = {}
    for _, i, k in sorted((float(cost[i][k]), i, k) for i in todo for k in np.argsort(cost[i])[:8]):
        d = float(dist[i][k])
        if i in out or names[k] in taken or d > max_distance_mm:
            continue
        taken[names[k]] = ch_names[i]
        out[i] = Placement(names[k], d, f"placed by position at {names[k]} ({d:.1f} mm)")
    for i in todo:
        if i not in out:
            k = int(np.argmin(dist[i]))
            d = float(dist[i][k])
            why = (f"nearest 10-05 site {names[k]} ({d:.1f} mm) is taken by {taken[names[k]]!r}"
                   if names[k] in taken and d <= max_distance_mm else
                   f"no 10-05 site within {max_distance_mm:g} mm (nearest {names[k]} at {d:.1f} mm)")
            out[i] = Placement(None, d, f"position unknown to the vocabulary: {why}")
    return out


# Types a channel placed by position may have: EEG, or "misc" where the file did not say (BrainVision without a
# unit). Channels the file types as EOG/EMG/... stay out, whatever their position.
_PLACEABLE_TYPES = ("eeg", "misc")


def place_unnamed(
    raw: mne.io.BaseRaw,
    keep_idx: list[int],
    keep_names: list[str],
    dropped: dict[str, str],
    *,
    montage: str | None = None,
    max_distance_mm: float = MAX_DISTANCE_MM,
) -> tuple[list[int], list[str], dict[str, str], dict[str, str]]:
    """Extend a name-based channel selection with the channels placed by position (or by ``montage``).

    Takes and returns the selection (``keep_idx``, ``keep_names`` in file order; ``dropped``: raw name ->
    reason) plus ``placed``: raw name -> ``"placed by position at FC3 (4.2 mm)"`` for every channel added.
    Only channels dropped for an unknown name are candidates; those too far from any free site keep a
    reason saying how far.
    """
    names = raw.ch_names
    types = raw.get_channel_types()
    candidates = [i for i, n in enumerate(names)
                  if dropped.get(n, "").startswith("unknown name") and types[i] in _PLACEABLE_TYPES]
    if not candidates:
        return keep_idx, keep_names, dropped, {}
    found: dict[int, Placement] = {}
    positions = recorded_positions(raw.info)
    if montage is not None:  # the cap's sites for its ABC labels; other channels keep their recorded positions
        named, cap_positions = montage_sites(names, montage)
        positions.update(cap_positions)
        used = set(keep_names)
        for i in candidates:
            if i in named and named[i] not in used:
                found[i] = Placement(named[i], 0.0, f"placed by the {montage} cap layout at {named[i]}")
                used.add(named[i])
    rest = [i for i in candidates if i not in found]
    if rest and positions:
        anchors = {i: c for i, c in zip(keep_idx, keep_names) if i in positions}
        taken = {c: names[i] for i, c in zip(keep_idx, keep_names)}
        taken.update({p.canonical: names[i] for i, p in found.items()})
        found.update(place_by_position(positions, anchors, rest, names, max_distance_mm, taken))
    placed: dict[str, str] = {}
    dropped = dict(dropped)
    keep = dict(zip(keep_idx, keep_names))
    for i, p in found.items():
        if p.canonical is None:
            dropped[names[i]] = p.reason
            continue
        keep[i] = p.canonical
        placed[names[i]] = p.reason or f"placed by position at {p.canonical} ({p.distance_mm:.1f} mm)"
        del dropped[names[i]]
    order = sorted(keep)
    return order, [keep[i] for i in order], dropped, placed
