"""What a downstream task is: the ``Recipe`` dataclass every recipe module fills in.

A recipe says which windows of the shards belong to the task (``task`` string of the sample json),
how their ``label_name`` maps onto the classes the head predicts, how long a window is, how the data
are split (by subject, else recording; k folds), and the default hyper-parameters. The defaults are
LaBraM's finetuning recipe (AdamW (0.9, 0.999), base lr 5e-4 with layer-wise decay 0.65, weight decay
0.05, label smoothing 0.1, 5 warm-up epochs then cosine to 1e-6, drop path 0.1, 50 epochs), the
reference the design card names; recipes change only what their data need.

Label names are compared after :func:`normalize_label` (case-insensitive, spaces and dashes as
underscores), so ``"Sleep stage W"``-style aliases can be listed once.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Hyper", "LabelSpace", "Recipe", "normalize_label"]


def normalize_label(name: str) -> str:
    """``"Sleep stage W"`` -> ``"sleep_stage_w"``; the key used to match label names."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


@dataclass(frozen=True)
class Hyper:
    """Optimisation defaults of a recipe (every field can be overridden from the finetune config)."""

    lr: float = 5e-4
    min_lr: float = 1e-6
    layer_decay: float = 0.65
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.1
    warmup_epochs: int = 5
    epochs: int = 50
    batch_size: int = 64
    drop_path: float = 0.1
    dropout: float = 0.0
    grad_clip: float = 3.0
    patience: int = 10


@dataclass(frozen=True)
class LabelSpace:
    """A set of classes and the shard label names (normalised) that map onto each.

    ``aliases`` pairs ``(shard label name, class name)``; every class name also matches itself.
    """

    name: str
    classes: tuple[str, ...]
    aliases: tuple[tuple[str, str], ...] = ()

    def mapping(self) -> dict[str, int]:
        """normalised shard label name -> class index."""
        out = {normalize_label(c): i for i, c in enumerate(self.classes)}
        for alias, cls in self.aliases:
            if cls not in self.classes:
                continue  # an alias for a class this (sub)space leaves out
            out[normalize_label(alias)] = self.classes.index(cls)
        return out

    def subset(self, classes: Sequence[str]) -> "LabelSpace":
        """The same space restricted to ``classes`` (in that order); KeyError naming unknown ones."""
        known = {normalize_label(c): c for c in self.classes}
        known.update({normalize_label(c): c for _, c in self.aliases})  # classes a subset left out
        known.update({normalize_label(a): c for a, c in self.aliases})
        picked = []
        for c in classes:
            key = normalize_label(c)
            if key not in known:
                raise KeyError(f"class {c!r} is not in label space {self.name!r} (classes: {', '.join(self.classes)})")
            picked.append(known[key])
        if len(set(picked)) != len(picked) or len(picked) < 2:
            raise ValueError(f"need at least 2 distinct classes, got {list(classes)}")
        return LabelSpace(self.name, tuple(picked), self.aliases)


@dataclass(frozen=True)
class Recipe:
    """One downstream task.

    Attributes:
        name: registry key (``"sleep"``).
        task: the ``task`` string of the shard samples this recipe reads.
        task_id: id given to the task-aware MoE: the row of ``foundation.tasks.TASK_IDS`` for ``task``.
        label_spaces: the first is the default; :meth:`resolve` may pick another the data fit better
            (e.g. SEED's negative/neutral/positive instead of calm/stress).
        window_s: seconds per training window; longer shard windows are cropped to their first
            ``window_s`` seconds, shorter ones are an error. None = use the shards' windows as they are.
        channels: canonical channel names to keep (in this order), None = every channel in the shards.
        extra_tasks: further shard ``task`` strings whose windows share the label space (e.g.
            EEGMMIDB's executed movements for a motor-imagery model); off by default.
        group_by: preferred split unit ("subject", falling back to "recording" when there are too few).
        n_folds: k of the group k-fold.
        hyper: default optimisation settings.
        rest_classes: for tasks whose windows are cut around cues or stimuli (motor imagery), the classes that
            mean "no cue" (``rest``). A model without one labels every window of a continuous recording as one
            of its cued classes, which ``finetune.predict`` says. None: every span of a recording belongs to
            some class of the task (sleep stages, seizure vs background, a condition per recording).
    """

    name: str
    task: str
    task_id: int
    label_spaces: tuple[LabelSpace, ...]
    window_s: float | None = None
    channels: tuple[str, ...] | None = None
    group_by: str = "subject"
    n_folds: int = 5
    hyper: Hyper = field(default_factory=Hyper)
    description: str = ""
    extra_tasks: tuple[str, ...] = ()
    rest_classes: tuple[str, ...] | None = None

    @property
    def accepted_tasks(self) -> tuple[str, ...]:
        """Shard ``task`` strings this recipe reads: its own plus ``extra_tasks`` (e.g. motor execution)."""
        return (self.task,) + tuple(t for t in self.extra_tasks if t != self.task)

    @property
    def space(self) -> LabelSpace:
        return self.label_spaces[0]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.space.classes

    @property
    def n_classes(self) -> int:
        return len(self.space.classes)

    def label_index(self, label_name: str | None) -> int | None:
        """Class index of a shard ``label_name``; None when this recipe does not use that label."""
        if label_name is None:
            return None
        return self.space.mapping().get(normalize_label(label_name))

    def with_classes(self, classes: Sequence[str]) -> "Recipe":
        """This recipe restricted/re-ordered to ``classes``, looked up in every label space."""
        errors = []
        for space in self.label_spaces:
            try:
                return dataclasses.replace(self, label_spaces=(space.subset(classes),))
            except KeyError as err:
                errors.append(str(err))
        raise KeyError(f"recipe {self.name!r}: {'; '.join(errors)}")

    def resolve(self, label_names: Iterable[str | None], *, drop_absent: bool = True) -> "Recipe":
        """Fit the recipe to the data's ``label_names`` (one per window).

        Picks the label space that covers most windows (ties: the earlier, i.e. the default), then,
        with ``drop_absent``, removes classes no window carries (a head cannot learn a class it never
        sees, and its inverse-frequency weight would be infinite).

        Raises:
            ValueError: naming the label names found when no space matches any window, or when fewer
                than two classes are left.
        """
        counts = Counter(normalize_label(n) for n in label_names if n is not None)
        best, best_cover = None, 0
        for space in self.label_spaces:
            mapping = space.mapping()
            cover = sum(c for name, c in counts.items() if name in mapping)
            if cover > best_cover:
                best, best_cover = space, cover
        if best is None:
            raise ValueError(
                f"recipe {self.name!r}: none of the label names in the data ({', '.join(sorted(counts)) or 'none'}) "
                f"match its label spaces ({'; '.join('/'.join(s.classes) for s in self.label_spaces)})"
            )
        if drop_absent:
            mapping = best.mapping()
            present = {mapping[name] for name in counts if name in mapping}
            kept = tuple(c for i, c in enumerate(best.classes) if i in present)
            if len(kept) < 2:
                raise ValueError(
                    f"recipe {self.name!r}: the data hold only class(es) {list(kept)} of {list(best.classes)}; "
                    "a classifier needs at least two"
                )
            best = LabelSpace(best.name, kept, best.aliases)
        return dataclasses.replace(self, label_spaces=(best,) + tuple(s for s in self.label_spaces if s.name != best.name))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description, saved as ``recipe.json`` next to a finetuned model."""
        return {
            "name": self.name,
            "task": self.task,
            "task_id": self.task_id,
            "extra_tasks": list(self.extra_tasks),
            "classes": list(self.classes),
            "label_space": self.space.name,
            "label_map": {k: self.classes[v] for k, v in sorted(self.space.mapping().items())},
            "window_s": self.window_s,
            "channels": list(self.channels) if self.channels is not None else None,
            "group_by": self.group_by,
            "n_folds": self.n_folds,
            "hyper": dataclasses.asdict(self.hyper),
            "description": self.description,
            "rest_classes": list(self.rest_classes) if self.rest_classes is not None else None,
        }


def merge_hyper(hyper: Hyper, overrides: Mapping[str, Any]) -> Hyper:
    """``hyper`` with the non-None entries of ``overrides`` applied (unknown keys are an error)."""
    names = {f.name for f in dataclasses.fields(Hyper)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise KeyError(f"unknown hyper-parameter(s) {unknown}; known: {sorted(names)}")
    return dataclasses.replace(hyper, **{k: v for k, v in overrides.items() if v is not None})
