"""Sleep staging: W / N1 / N2 / N3 / REM per scoring epoch (Sleep-EDF, SHHS, DREAMS).

AASM classes; R&K stages map onto them (S1 -> N1, S2 -> N2, S3 and S4 -> N3). Each window is one
scoring epoch as the shards cut it (30 s for Sleep-EDF/SHHS, 5 s for the DREAMS excerpts), so
``window_s`` stays None. N1 is rare and hard: balanced accuracy and Cohen's kappa are the numbers to
read, accuracy flatters a model that predicts N2 everywhere. Subject-wise folds (SleepEDF-20 style).
"""

from __future__ import annotations

from finetune.recipes.base import Hyper, LabelSpace, Recipe
from foundation.tasks import TASK_IDS

_ALIASES = (
    ("wake", "W"),
    ("sleep stage w", "W"),
    ("s0", "W"),
    ("s1", "N1"),
    ("sleep stage 1", "N1"),
    ("sleep stage n1", "N1"),
    ("s2", "N2"),
    ("sleep stage 2", "N2"),
    ("sleep stage n2", "N2"),
    ("s3", "N3"),
    ("s4", "N3"),
    ("sleep stage 3", "N3"),
    ("sleep stage 4", "N3"),
    ("sleep stage n3", "N3"),
    ("r", "REM"),
    ("sleep stage r", "REM"),
)

RECIPE = Recipe(
    name="sleep",
    task="sleep",
    task_id=TASK_IDS["sleep"],
    label_spaces=(LabelSpace("aasm", ("W", "N1", "N2", "N3", "REM"), aliases=_ALIASES),),
    window_s=None,
    group_by="subject",
    n_folds=5,
    hyper=Hyper(),
    description="5-class AASM sleep staging per scoring epoch",
)
