"""Finetuning recipes and task heads on top of a pretrained EEGMamba backbone.

- ``finetune/run.py``: ``accelerate launch finetune/run.py --recipe sleep --checkpoint DIR|none --data SHARDS``
  (several recipes separated by commas = one multi-task model with a head per task).
- ``finetune.recipes``: seizure, sleep, emotion, motor_imagery (label spaces, splits, LaBraM's hyper-parameters).
- ``finetune.train.finetune(config)``: the Accelerate loop; ``finetune.predict.predict_file``: label a raw recording.
- ``finetune.metrics`` / ``finetune.report`` / ``finetune.splits`` / ``finetune.heads`` / ``finetune.model``.
"""
