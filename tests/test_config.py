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


# -- defaults that depend on what is trained (issue 15, item 21) -----------------------------
@pytest.mark.parametrize(
    ("data", "kind", "lr", "wd"),
    [
        ({}, "from scratch", 2e-3, 0.1),
        ({"model_name": "m"}, "full fine-tune", 2e-5, 0.0),
        ({"model_name": "m", "finetune": "lora"}, "LoRA", 2e-4, 0.0),
    ],
)
def test_optimisation_defaults_follow_what_is_trained(
    data: dict, kind: str, lr: float, wd: float
) -> None:
    cfg = TrainingConfig.from_dict(data)
    assert (cfg.kind, cfg.learning_rate, cfg.weight_decay) == (kind, lr, wd)
    assert cfg.min_lr == pytest.approx(lr / 10) and cfg.min_lr == float(f"{lr / 10:g}")
    chosen = cfg.chosen_defaults
    assert {"learning_rate", "min_lr", "weight_decay", "warmup_steps"} <= set(chosen)
    # chosen keys do not count as set by the user (a resume compares only those)
    assert not {"learning_rate", "weight_decay"} & cfg.model_fields_set


def test_keys_the_user_set_are_never_changed(tmp_path: Path) -> None:
    p = tmp_path / "ft.yaml"
    p.write_text("model_name: m\nlearning_rate: 0.001\nweight_decay: 0.05\n")
    cfg = load_config(p)
    assert (cfg.learning_rate, cfg.weight_decay, cfg.min_lr) == (0.001, 0.05, 0.0001)
    assert "learning_rate" not in cfg.chosen_defaults and "min_lr" in cfg.chosen_defaults
    # a user lr below the old fixed min_lr default (2e-4) is no longer an error
    assert load_config(None, {"learning_rate": 1e-4}).min_lr == 1e-5


def test_every_shipped_config_sets_its_optimisation_keys() -> None:
    for path in CONFIGS.glob("*.yaml"):
        assert not load_config(path).chosen_defaults.keys() - {"precision"}, path.name


# -- a warmup longer than the run is capped (item 19) ----------------------------------------
def test_warmup_not_below_max_steps_is_capped_with_a_note() -> None:
    cfg = load_config(CONFIGS / "custom-transformer.yaml", {"max_steps": 6})
    assert (cfg.max_steps, cfg.warmup_steps) == (6, 5)
    assert any("capped at 5" in n for n in cfg.notes)
    assert load_config(CONFIGS / "custom-transformer.yaml").notes == []


# -- precision: auto is the default (item 20) ------------------------------------------------
def test_precision_defaults_to_auto_and_auto_allows_bf16_weights() -> None:
    assert TrainingConfig().precision == "auto"
    assert TrainingConfig(param_dtype="bf16").precision == "auto"
    with pytest.raises(ValueError, match="precision"):
        TrainingConfig(param_dtype="bf16", precision="fp32")


# -- absurd numbers and names are refused with a short message (items 8, 10, 14) -------------
@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"seed": 2**70}, "key 'seed'"),
        ({"seed": -1}, "key 'seed'"),
        ({"memory_limit_gb": float("inf")}, "key 'memory_limit_gb'"),
        ({"dist_timeout": float("nan")}, "key 'dist_timeout'"),
        ({"lora": {"alpha": float("inf")}}, "key 'lora.alpha'"),
        ({"batch_size": 0}, "key 'batch_size'"),
        ({"batch_size": 10**9}, "key 'batch_size'"),
        ({"block_size": 10**9}, "key 'block_size'"),
        ({"max_steps": 0}, "key 'max_steps'"),
        ({"max_steps": -1}, "key 'max_steps'"),
        ({"sample_tokens": 10**9}, "key 'sample_tokens'"),
        ({"threads": 10**6}, "key 'threads'"),
        ({"run_name": "a" * 5000}, "5,000 characters long"),
        ({"run_name": "a/b"}, "never a path"),
        ({"run_name": ".."}, "never a path"),
        ({"run_name": ".hidden"}, "never a path"),
    ],
)
def test_absurd_values_are_refused_briefly(override: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, override)
    assert needle in str(e.value)
    assert len(str(e.value)) < 700


def test_a_huge_value_is_echoed_briefly(tmp_path: Path) -> None:
    # 10 x 10 x 10 x 10 aliases: 10,000 values, under the YAML bound, into one string key
    p = tmp_path / "aliases.yaml"
    p.write_text(
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "model_name: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(p, {"a": None, "b": None, "c": None})
    assert len(str(e.value)) < 800, str(e.value)[:300]


def test_a_config_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"cannot be read|does not exist"):
        load_config(tmp_path / ("x" * 5000 + ".yaml"))


def test_a_run_name_from_an_unusable_file_name_says_where_it_came_from(tmp_path: Path) -> None:
    p = tmp_path / "my config.yaml"
    p.write_text("max_steps: 10\n")
    with pytest.raises(ConfigError, match=r"named after the config file.*--run-name"):
        load_config(p)
    assert load_config(p, {"run_name": "mine"}).run_name == "mine"
