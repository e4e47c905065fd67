import subprocess
import sys

import pytest
from pydantic import ValidationError

from fedlm.config.secagg import SecAggConfig


def test_defaults():
    cfg = SecAggConfig()
    assert not cfg.enabled
    assert (cfg.bits, cfg.modulus_bits, cfg.max_weight) == (16, 32, 1)
    assert cfg.threshold is None and cfg.neighbours is None and cfg.threshold_fraction is None
    assert cfg.corrupt_fraction == 0.2 and cfg.dropout_tolerance == 0.0
    assert cfg.max_cohort() == 65537  # (2^32 - 1) // (2^16 - 1)
    assert SecAggConfig(max_weight=100).max_cohort() == 655


@pytest.mark.parametrize(
    "field,value",
    [
        ("bits", 0),
        ("bits", 33),
        ("modulus_bits", 1),
        ("modulus_bits", 65),
        ("clip_range", 0.0),
        ("clip_range", float("nan")),
        ("max_weight", 0),
        ("threshold", 1),
        ("threshold_fraction", 0.4),
        ("threshold_fraction", 1.1),
        ("neighbours", 1),
        ("corrupt_fraction", -0.1),
        ("corrupt_fraction", 1.0),
        ("dropout_tolerance", 1.0),
        ("dropout_rate", 1.0),
        ("dropout_rate", -0.1),
        ("unknown_key", 1),
    ],
)
def test_invalid_values_are_rejected_with_the_field_name(field, value):
    with pytest.raises(ValidationError, match=field):
        SecAggConfig(**{field: value})


def test_cross_field_checks():
    with pytest.raises(ValidationError, match="only one"):
        SecAggConfig(threshold=3, threshold_fraction=0.6)
    with pytest.raises(ValidationError, match="exceeds"):
        SecAggConfig(threshold=5, neighbours=4)
    with pytest.raises(ValidationError, match="headroom"):
        SecAggConfig(bits=32, modulus_bits=32)
    assert SecAggConfig(threshold=3, neighbours=4).threshold == 3


@pytest.mark.parametrize(
    "settings,needles",
    [
        # the review's case: t = 2 passed validation; now the field, the value and the fix
        ({"threshold": 2}, ["secure_aggregation.threshold=2", "secure_aggregation.neighbours too"]),
        ({"threshold": 2, "neighbours": 4}, ["secure_aggregation.threshold=2 is unsafe", "threshold >= 3"]),
        ({"threshold": 3, "neighbours": 5}, ["threshold=3 is unsafe", "(degree 6)", "threshold >= 4"]),
        ({"threshold": 5, "neighbours": 10, "corrupt_fraction": 0.0}, ["threshold=5 is unsafe", ">= 6"]),
        ({"threshold": 6, "neighbours": 10}, ["threshold=6 is unsafe", "controls 2 of", ">= 7"]),
        ({"threshold_fraction": 0.5}, ["threshold_fraction=0.5", "(1 + corrupt_fraction) / 2 = 0.6"]),
        ({"corrupt_fraction": 0.4, "dropout_tolerance": 0.3}, ["corrupt_fraction=0.4", "lower one"]),
        ({"threshold": 9, "neighbours": 10, "dropout_tolerance": 0.2}, ["tolerates 1 dropped", "lower threshold"]),
        ({"threshold_fraction": 0.8, "dropout_tolerance": 0.25}, ["threshold_fraction < 0.75"]),
    ],
)
def test_unsafe_thresholds_are_refused_naming_field_value_and_fix(settings, needles):
    with pytest.raises(ValidationError) as e:
        SecAggConfig(**settings)
    for needle in needles:
        assert needle in str(e.value), needle


def test_safe_thresholds_are_accepted():
    assert SecAggConfig(threshold=7, neighbours=10).threshold == 7  # (10 + 2) // 2 + 1
    assert SecAggConfig(threshold=6, neighbours=10, corrupt_fraction=0.0).threshold == 6
    assert SecAggConfig(threshold_fraction=0.6).threshold_fraction == 0.6
    assert SecAggConfig(corrupt_fraction=0.3, dropout_tolerance=0.34).dropout_tolerance == 0.34


def test_frozen():
    with pytest.raises(ValidationError):
        SecAggConfig().bits = 8  # type: ignore[misc]


def test_config_and_protocol_import_without_torch():
    code = "import sys, fedlm.config.secagg, fedlm.privacy.secagg; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
