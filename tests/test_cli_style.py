"""One command-line style: ``python -m shards``, ``pretrain/run.py``, ``finetune/run.py`` and ``python -m
finetune.predict`` spell every option with underscores (as its config / manifest key), read the dashed spelling
with one notice, and group their ``--help``."""

from __future__ import annotations

import re

import pytest

from runtime.cli_spelling import argparse_options, canonical_spelling

DASHED = re.compile(r"(?<![\w-])--[a-z0-9]+(?:-[a-z0-9]+)+\b")


def _help(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_every_entry_point_spells_options_with_underscores_and_groups_its_help(capsys):
    from finetune.predict import main as predict_main
    from finetune.run import main as finetune_main
    from pretrain.run import main as pretrain_main
    from shards.__main__ import main as shards_main

    pages = {
        "shards build": (_help(shards_main, ["build", "--help"], capsys), ("input and output:", "build:", "preprocessing")),
        "shards synth": (_help(shards_main, ["synth", "--help"], capsys), ("simulation:", "output:")),
        "predict": (_help(predict_main, ["--help"], capsys), ("model and output:", "windows:", "machinery:")),
        "pretrain": (_help(pretrain_main, ["--help"], capsys), ("run:", "[data]", "[model]", "[optim]", "[train]")),
        "finetune": (_help(finetune_main, ["--help"], capsys), ("run:", "model:", "data and split:", "machinery:")),
    }
    for name, (text, groups) in pages.items():
        assert [g for g in groups if g not in text] == [], name
        assert DASHED.findall(text.replace("--help", "")) == [], (name, DASHED.findall(text))
    assert "--window_s" in pages["shards build"][0] and "--window_s" in pages["predict"][0]
    assert "--window_s" in pages["finetune"][0] and "--data.crop_s" in pages["pretrain"][0]


def test_the_dashed_spelling_is_read_with_one_notice(capsys):
    from finetune.config import FinetuneConfig
    from runtime.configfile import parse_cli
    from shards.__main__ import make_parser

    config, _ = parse_cli(FinetuneConfig, ["--window-s", "3", "--max-windows=5", "--recipe", "sleep"], prog="finetune/run.py")
    assert (config.window_s, config.max_windows, config.recipe) == (3.0, 5, "sleep")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["finetune/run.py: note: options are spelled with underscores; read --window-s as --window_s, "
                   "--max-windows as --max_windows"]

    parser = make_parser()
    argv = ["build", "bonn", "--root", "r", "--out", "o", "--max-abs-uv", "none", "--window_s", "5", "--", "--not-an-option"]
    fixed = canonical_spelling(argv, argparse_options(parser), prog="python -m shards")
    assert fixed == ["build", "bonn", "--root", "r", "--out", "o", "--max_abs_uv", "none", "--window_s", "5", "--",
                     "--not-an-option"]
    assert capsys.readouterr().err.count("note:") == 1
    args = parser.parse_args(fixed[:-2])
    assert (args.max_abs_uv, args.window_s) == (None, 5.0)
    # A dashed word that is no option of the command is left to argparse, which names it.
    assert canonical_spelling(["--no-such-thing"], argparse_options(parser)) == ["--no-such-thing"]
    assert capsys.readouterr().err == ""
