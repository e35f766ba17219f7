"""TrainingConfig: defaults, YAML, overrides, round-trip, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmforge.config import TrainingConfig, load_config, parse_overrides
from llmforge.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_without_file() -> None:
    cfg = load_config(None)
    assert cfg.model_name is None
    assert cfg.max_steps > cfg.warmup_steps
    assert cfg.run_name is None


def test_yaml_values_override_defaults_and_run_name_from_stem(tmp_path: Path) -> None:
    p = tmp_path / "mine.yaml"
    p.write_text("max_steps: 77\nlearning_rate: 0.01\nmodel_name: qwen-0.5b-base\n")
    cfg = load_config(p)
    assert (cfg.max_steps, cfg.learning_rate, cfg.model_name) == (77, 0.01, "qwen-0.5b-base")
    assert cfg.run_name == "mine"


def test_cli_overrides_win(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("max_steps: 77\n")
    cfg = load_config(p, {"max_steps": 12, **parse_overrides(["precision=bf16", "data_path=null"])})
    assert cfg.max_steps == 12 and cfg.precision == "bf16" and cfg.data_path is None


@pytest.mark.parametrize("model_name", [None, "qwen-0.5b-base"])
def test_to_dict_from_dict_round_trip(model_name: str | None) -> None:
    cfg = TrainingConfig(model_name=model_name, max_steps=50, run_name="r")
    d = cfg.to_dict()
    assert "model_name" in d and d["model_name"] == model_name
    assert TrainingConfig.from_dict(d) == cfg


def test_warmup_default_shrinks_for_short_runs() -> None:
    assert load_config(None, {"max_steps": 20}).warmup_steps == 2


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("max_steps: [1,\n", "not valid YAML at line"),
        ("max_stepz: 10\n", "unknown key 'max_stepz'"),
        ("max_steps: lots\n", "key 'max_steps'"),
        ("max_steps: 10\nwarmup_steps: 10\n", "warmup_steps (10) must be smaller than max_steps"),
        ("d_model: 100\nn_heads: 3\n", "divisible"),
        ("precision: fp8\n", "key 'precision'"),
        ("learning_rate: -1\n", "key 'learning_rate'"),
        ("- a\n- b\n", "must hold a mapping"),
        ("run_name: ../escape\n", "run_name"),
    ],
)
def test_bad_configs_name_the_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert needle in str(e.value)
    assert str(p) in str(e.value)


def test_missing_file_and_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["max_steps"])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.run_name == path.stem
