"""Emotion recognition: calm vs stress (mental-stress Emotiv set), SEED's negative/neutral/positive, or
mental workload rest vs arithmetic (EEGMAT).

The label space follows the shards: :meth:`Recipe.resolve` picks SEED's three classes or EEGMAT's
rest/arithmetic when the windows carry those names, else calm/stress. Workload is its own space, not
aliases of calm/stress: EEGMAT's labels are task conditions (resting before the task vs serial
subtraction), not a reported affective state, and the published protocol scores rest vs arithmetic. Folding
them into calm/stress would let a horror-video stress model be scored on arithmetic as if the two were one
construct; the cross-dataset shift (``benchmarks/shift.py``) states that correspondence explicitly instead.
It stays in the emotion recipe (task id 3) because it is the same family the foundation-model papers
file it under ("mental stress detection") and shares its settings. Emotion labels are per recording (a stimulus per trial), so a
window-level split would leak the stimulus; subject-wise folds keep a person's recordings together.
"""

from __future__ import annotations

from finetune.recipes.base import Hyper, LabelSpace, Recipe
from foundation.tasks import TASK_IDS

RECIPE = Recipe(
    name="emotion",
    task="emotion",
    task_id=TASK_IDS["emotion"],
    label_spaces=(
        LabelSpace(
            "calm_stress",
            ("calm", "stress"),
            aliases=(("relaxing_music", "calm"), ("relaxed", "calm"), ("fear", "stress"), ("horror_video", "stress")),
        ),
        LabelSpace("seed", ("negative", "neutral", "positive"), aliases=(("sad", "negative"), ("happy", "positive"))),
        LabelSpace(
            "workload",
            ("rest", "arithmetic"),
            aliases=(("resting", "rest"), ("baseline", "rest"), ("mental_arithmetic", "arithmetic"),
                     ("serial_subtraction", "arithmetic")),
        ),
    ),
    window_s=None,
    group_by="subject",
    n_folds=5,
    hyper=Hyper(),
    description="affective state / workload per window: calm/stress, SEED negative/neutral/positive, or rest/arithmetic",
)
