"""Seizure detection: ictal vs non-ictal windows (CHB-MIT, Siena, TUSZ, Bonn).

Binary, so AUROC and AUC-PR are reported next to balanced accuracy. Ictal windows are rare in
long-term monitoring (a few percent), which is why the class weights (inverse training frequency)
matter most here. Windows are the shards' (Bonn: 5 s every 2.5 s; CHB-MIT style corpora: whatever the
corpus adapter chose). Subjects split when the corpus names them; Bonn does not (its segments are
anonymous), so its splits fall back to segments/recordings.
"""

from __future__ import annotations

from finetune.recipes.base import Hyper, LabelSpace, Recipe
from foundation.tasks import TASK_IDS

RECIPE = Recipe(
    name="seizure",
    task="seizure",
    task_id=TASK_IDS["seizure"],
    label_spaces=(
        LabelSpace(
            "seizure",
            ("non_seizure", "seizure"),
            aliases=(
                ("background", "non_seizure"),
                ("bckg", "non_seizure"),
                ("interictal", "non_seizure"),
                ("non-ictal", "non_seizure"),
                ("nonseizure", "non_seizure"),
                ("normal", "non_seizure"),
                ("ictal", "seizure"),
                ("seiz", "seizure"),
            ),
        ),
    ),
    window_s=None,
    group_by="subject",
    n_folds=5,
    hyper=Hyper(),
    description="binary ictal vs non-ictal window classification",
)
