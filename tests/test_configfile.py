"""Config files and overrides: precedence, strict keys, types."""

from dataclasses import dataclass, field

import pytest

from runtime.configfile import ConfigError, apply_overrides, load_toml, parse_cli, to_dict


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)


@dataclass(frozen=True)
class Run:
    name: str = "demo"
    steps: int = 10
    bf16: bool = False
    shards: tuple[str, ...] = ()
    optim: Optim = field(default_factory=Optim)
    notch: float | None = 50.0


def test_precedence_cli_over_file_over_defaults(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('steps = 20\nshards = ["a", "b"]\n[optim]\nlr = 5e-4\n')
    cfg, extra = parse_cli(Run, ["--config", str(path), "--optim.lr", "1e-4", "--resume", "x"], extra_flags=["resume"])
    assert cfg.steps == 20 and cfg.shards == ("a", "b")
    assert cfg.optim.lr == pytest.approx(1e-4) and cfg.optim.betas == (0.9, 0.98)
    assert cfg.name == "demo" and extra == {"resume": "x"}


def test_unknown_keys_are_errors_that_name_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlrr = 1\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_toml(Run, path)
    with pytest.raises(ConfigError, match="stepz"):
        apply_overrides(Run(), ["--stepz", "3"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_toml(Run, tmp_path / "missing.toml")


def test_types_are_checked_and_coerced():
    cfg = apply_overrides(Run(), ["--steps=7", "--bf16", "--notch", "none", "--optim.betas", "[0.8, 0.9]"])
    assert cfg.steps == 7 and cfg.bf16 is True and cfg.notch is None and cfg.optim.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match="steps"):
        apply_overrides(Run(), ["--steps", "many"])
    assert to_dict(cfg)["optim"]["betas"] == [0.8, 0.9]
