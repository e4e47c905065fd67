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
        {"enabled": True, "target_epsilon": 8.0, "mode": "ddgauss", "distributed": {"beta": 0.0}},
        {"enabled": True, "noise_multiplier": 1.0, "mode": "skellam", "min_honest_fraction": 0.8},
        {"enabled": True, "noise_multiplier": 1.0, "sampling_key": "public", "audit": {"enabled": True}},
        {"audit": {"enabled": True, "canaries": 64}},  # the audit of plain training
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
            "only applies to the client noise modes",
        ),
        (
            {"enabled": True, "noise_multiplier": 1.0, "accountant": "pld", "sampling": "fixed"},
            "use accountant='rdp'",
        ),
        (
            {"enabled": True, "noise_multiplier": 1.0, "weighting": "capped", "max_weight": 0.5},
            "privacy.max_weight=0.5 must be >= 1",
        ),
        ({"enabled": True, "noise_multiplier": 1.0, "mode": "ddgauss", "accountant": "pld"}, "use 'rdp'"),
        ({"enabled": True, "noise_multiplier": 1.0, "mode": "skellam", "sampling": "fixed"}, "Poisson-sampling bound"),
        ({"enabled": True, "noise_multiplier": 1.0, "distributed": {"gamma": 0.1}}, "only applies to privacy.mode"),
        (
            {"dp_sgd": {"enabled": True}, "audit": {"enabled": True}},
            "privacy.audit audits client-level DP",
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


def _experiment(**overrides):
    from fedlm.config import load_config

    base = {"privacy.enabled": "true", "privacy.noise_multiplier": 1.0, "privacy.delta": 1e-3,
            "federation.weighting": "uniform"}
    return load_config(None, [f"{k}={v}" for k, v in {**base, **overrides}.items()])


@pytest.mark.parametrize("mode", ["distributed", "ddgauss", "skellam"])
def test_client_noise_without_secure_aggregation_is_refused_with_the_reason(mode):
    from fedlm.config.privacy import check_trust

    cfg = _experiment(**{"privacy.mode": mode})
    with pytest.raises(ConfigError, match=r"needs secure_aggregation.enabled=true.*noise std z C / sqrt\(k\)"):
        check_trust(cfg)
    bits = 1 if mode != "distributed" else 16  # the discrete modes mask ring elements: no float quantisation
    check_trust(_experiment(**{"privacy.mode": mode, "secure_aggregation.enabled": "true",
                               "secure_aggregation.bits": bits}))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"privacy.mode": "ddgauss", "compression.upload": "fp16"}, "compression.upload=fp32"),
        ({"privacy.mode": "distributed", "compression.upload": "bf16"}, "grows with the noise"),
        ({"compression.upload": "int8", "compression.upload_params": '{"fixed_scale": 0.1}',
          "compression.error_feedback": "true"}, "error_feedback"),
        ({"privacy.mode": "ddgauss", "secure_aggregation.modulus_bits": 64, "secure_aggregation.bits": 1},
         "at most 62"),
        ({"privacy.mode": "skellam"}, "set secure_aggregation.bits=1"),
    ],
)
def test_secure_aggregation_compositions_that_void_the_bound_are_refused(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        _experiment(**{"secure_aggregation.enabled": "true", **overrides})
