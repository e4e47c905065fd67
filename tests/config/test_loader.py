from pathlib import Path

import pytest

from fedlm.config import ExperimentConfig, apply_override, dump_config, load_config
from fedlm.errors import ConfigError


def test_defaults_are_the_builtin_default_run():
    cfg = load_config()
    assert cfg.model.name == "smollm2-135m"
    assert cfg.data.source == "shakespeare"
    assert cfg.lora.enabled and cfg.lora.r == 8


def test_examples_default_yaml_spells_out_the_builtin_default():
    example = Path(__file__).resolve().parents[2] / "examples" / "default.yaml"
    assert load_config(example) == ExperimentConfig()


def test_dotted_overrides_parse_yaml_scalars():
    cfg = load_config(None, ["federation.rounds=7", "lora.r=16", "lora.target_modules=[q_proj]", "data.max_clients=null"])
    assert cfg.federation.rounds == 7 and cfg.lora.r == 16
    assert cfg.lora.target_modules == ["q_proj"]
    assert cfg.data.max_clients is None


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("federaton.rounds=2", "did you mean 'federation'"),
        ("federation.rouns=2", "did you mean 'federation.rounds'"),
        ("lora.rank=4", "did you mean 'lora.r'"),
        ("zzz=1", "unknown config key 'zzz'"),
    ],
)
def test_unknown_keys_name_the_nearest_valid_key(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lora.r=0"], "lora.r"),
        (["federation.lr=-1"], "federation.lr"),
        (["federation.rounds=abc"], "federation.rounds"),
        (["federation.local_epochs=1"], "exactly one of federation.local_steps and federation.local_epochs"),
        (["federation.fraction=0.1"], "exactly one of federation.clients_per_round and federation.fraction"),
        (["data.source=jsonl"], "data.path is required"),
        (["data.partition=dirichlet", "data.num_clients=3"], "label_field"),
        (["data.partition=iid"], "num_clients"),
        (["data.source=csv", "data.path=x.csv"], "client_field"),
        (["server_opt.name=fedadamm"], "server_opt.name"),
        (["name=a/b"], "name"),
    ],
)
def test_invalid_values_and_combinations_are_rejected_with_the_field(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, overrides)


def test_config_sections_are_frozen():
    cfg = load_config()
    with pytest.raises(Exception, match="frozen"):
        cfg.federation.rounds = 9  # type: ignore[misc]


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_override({}, "federation.rounds")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"lora": 3}, "lora.r=4")


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["federation.rounds=5", "lora.target_modules=[q_proj, v_proj]"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
