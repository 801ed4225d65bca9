"""Emotion recognition: calm vs stress (mental-stress Emotiv set), or SEED's negative/neutral/positive.

The label space follows the shards: :meth:`Recipe.resolve` picks SEED's three classes when the windows
carry those names, else calm/stress. Emotion labels are per recording (a stimulus per trial), so a
window-level split would leak the stimulus; subject-wise folds keep a person's recordings together.
"""

from __future__ import annotations

from finetune.recipes.base import Hyper, LabelSpace, Recipe

RECIPE = Recipe(
    name="emotion",
    task="emotion",
    task_id=3,
    label_spaces=(
        LabelSpace(
            "calm_stress",
            ("calm", "stress"),
            aliases=(("relaxing_music", "calm"), ("relaxed", "calm"), ("fear", "stress"), ("horror_video", "stress")),
        ),
        LabelSpace("seed", ("negative", "neutral", "positive"), aliases=(("sad", "negative"), ("happy", "positive"))),
    ),
    window_s=None,
    group_by="subject",
    n_folds=5,
    hyper=Hyper(),
    description="affective state per window: calm/stress or SEED negative/neutral/positive",
)
