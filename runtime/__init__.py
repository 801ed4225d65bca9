"""The ground floor of the suite: what every stage runs on, importing no other package of the suite.

- ``runtime.signal``: the signal contract (sampling rate, patch length, units) every package refers to.
- ``runtime.config_dict`` / ``runtime.configfile``: frozen config dataclasses from dicts, TOML files and
  ``--key value`` overrides, strictly (an unknown key is an error naming it).
- ``runtime.engine`` / ``runtime.resume_state``: the training engine shared by pretraining, tokenizer
  training and finetuning (accelerator, parameter groups, schedule, NaN guard, checkpoints, resume).
- ``runtime.atomic``: atomic file writes. ``runtime.cli_errors``: one-line errors of every entry point.
- ``runtime.score_error``: standard errors of the validation scores that pretraining's probe and LP-FT select on.

``foundation`` (the model) and ``shards`` (the data) import only the modules that need neither torch nor
Accelerate (``signal``, ``config_dict``, ``atomic``, ``cli_errors``); this file imports nothing, so
importing one of them loads no training code.
"""
