"""Motor imagery: imagined movements per cue (EEGMMIDB, BCI Competition IV-2a).

Default: left vs right fist (EEGMMIDB runs 4/8/12). Other label spaces, picked from the data by
:meth:`Recipe.resolve` or set with ``--classes``: BCI-IV-2a's four classes (left_hand, right_hand,
feet, tongue) and EEGMMIDB's both_fists vs both_feet. ``rest`` is left out unless asked for
(``--classes rest,left_fist,right_fist``). One window per cue (4 s). With one subject (our EEGMMIDB
excerpt) the folds go over runs, and with two runs the validation set is a time block of the training
run (see :mod:`finetune.splits`). LaBraM's BCI-IV-2a recipe is the reference for the hyper-parameters.
"""

from __future__ import annotations

from finetune.recipes.base import Hyper, LabelSpace, Recipe
from foundation.tasks import TASK_IDS

RECIPE = Recipe(
    name="motor_imagery",
    task="motor_imagery",
    task_id=TASK_IDS["motor_imagery"],
    label_spaces=(
        LabelSpace(
            "left_right_fist",
            ("left_fist", "right_fist", "rest"),
            aliases=(("left", "left_fist"), ("right", "right_fist"), ("t0", "rest"), ("rest", "rest")),
        ).subset(("left_fist", "right_fist")),
        LabelSpace(
            "bci_iv_2a",
            ("left_hand", "right_hand", "feet", "tongue"),
            aliases=(("769", "left_hand"), ("770", "right_hand"), ("771", "feet"), ("772", "tongue")),
        ),
        LabelSpace("fists_feet", ("both_fists", "both_feet", "rest"), aliases=(("t0", "rest"), ("rest", "rest"))).subset(
            ("both_fists", "both_feet")
        ),
    ),
    window_s=None,
    group_by="subject",
    n_folds=5,
    hyper=Hyper(),
    description="imagined movement per cue (default left vs right fist)",
    rest_classes=("rest",),
)
