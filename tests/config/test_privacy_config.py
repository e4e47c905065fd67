import subprocess
import sys

import pytest
from pydantic import ValidationError

from fedlm.config.privacy import PrivacyConfig
from fedlm.errors import ConfigError


def test_default_is_disabled_and_valid():
    cfg = PrivacyConfig()
    assert cfg.enabled is False
    assert cfg.mode == "central" and cfg.accountant == "rdp" and cfg.sampling == "poisson"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"enabled": True, "noise_multiplier": 1.0},
        {"enabled": True, "target_epsilon": 8.0},
        {"enabled": True, "target_epsilon": 8.0, "on_budget_exhausted": "calibrate"},
        {
            "enabled": True,
            "noise_multiplier": 1.0,
            "target_epsilon": 8.0,
            "on_budget_exhausted": "stop",
        },
        {
            "enabled": True,
            "noise_multiplier": 1.0,
            "adaptive_clipping": True,
            "clipped_count_stddev": 1.0,
        },
        {"enabled": True, "noise_multiplier": 1.0, "weighting": "capped", "max_weight": 100},
        {
            "enabled": True,
            "noise_multiplier": 1.0,
            "mode": "distributed",
            "min_honest_fraction": 0.5,
        },
        {"enabled": True, "noise_multiplier": 1.0, "accountant": "pld", "sampling": "none"},
    ],
)
def test_valid_configs(kwargs):
    PrivacyConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"enabled": True}, "exactly one of privacy.noise_multiplier and privacy.target_epsilon"),
        (
            {"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 8.0},
            "on_budget_exhausted='stop'",
        ),
        ({"enabled": True, "noise_multiplier": 1.0, "on_budget_exhausted": "stop"}, "needs both"),
        (
            {"enabled": True, "noise_multiplier": 1.0, "on_budget_exhausted": "calibrate"},
            "needs privacy.target_epsilon",
        ),
        (
            {"enabled": True, "noise_multiplier": 1.0, "adaptive_clipping": True},
            "needs privacy.clipped_count_stddev",
        ),
        (
            {"enabled": True, "noise_multiplier": 1.0, "clipped_count_stddev": 1.0},
            "only applies with privacy.adaptive_clipping",
        ),
        (
            {
                "enabled": True,
                "noise_multiplier": 1.0,
                "adaptive_clipping": True,
                "clipped_count_stddev": 0.5,
            },
            "clipped_count_stddev=0.5 is too small",
        ),
        (
            {"enabled": True, "noise_multiplier": 1.0, "weighting": "capped"},
            "needs privacy.max_weight",
        ),
        (
            {"enabled": True, "noise_multiplier": 1.0, "max_weight": 10},
            "only applies to privacy.weighting='capped'",
        ),
        (
            {
                "enabled": True,
                "noise_multiplier": 1.0,
                "mode": "distributed",
                "weighting": "capped",
                "max_weight": 10,
            },
            "needs privacy.weighting='uniform'",
        ),
        (
            {
                "enabled": True,
                "noise_multiplier": 1.0,
                "mode": "distributed",
                "adaptive_clipping": True,
                "clipped_count_stddev": 2.0,
            },
            "does not support privacy.adaptive_clipping",
        ),
        (
            {"enabled": True, "noise_multiplier": 1.0, "min_honest_fraction": 0.5},
            "only applies to privacy.mode='distributed'",
        ),
        (
            {"enabled": True, "noise_multiplier": 1.0, "accountant": "pld", "sampling": "fixed"},
            "use accountant='rdp'",
        ),
    ],
)
def test_invalid_combinations_name_field_value_and_fix(kwargs, needle):
    with pytest.raises(ValidationError) as info:
        PrivacyConfig(**kwargs)
    assert needle in str(info.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("noise_multiplier", 0.0),
        ("noise_multiplier", -1.0),
        ("target_epsilon", 0.0),
        ("delta", 0.0),
        ("delta", 1.0),
        ("clip_norm", 0.0),
        ("target_quantile", 1.0),
        ("clip_lr", 0.0),
        ("accountant", "moments"),
        ("sampling", "shuffle"),
        ("mode", "local"),
        ("min_honest_fraction", 0.0),
    ],
)
def test_out_of_range_values_rejected_naming_the_field(field, value):
    with pytest.raises(ValidationError) as info:
        PrivacyConfig(**{field: value})
    assert field in str(info.value)


def test_unknown_keys_rejected_and_frozen():
    with pytest.raises(ValidationError, match="epsilon"):
        PrivacyConfig(epsilon=3.0)
    cfg = PrivacyConfig()
    with pytest.raises(ValidationError):
        cfg.enabled = True


def test_delta_cross_check_against_population():
    cfg = PrivacyConfig(enabled=True, noise_multiplier=1.0, delta=1e-3)
    cfg.check_population(100)
    with pytest.raises(ConfigError, match=r"below 1/num_clients = 0\.001"):
        cfg.check_population(1000)


def test_every_field_has_a_description():
    for name, field in PrivacyConfig.model_fields.items():
        assert field.description, name


def test_config_module_does_not_import_torch():
    code = "import sys, fedlm.config.privacy; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
