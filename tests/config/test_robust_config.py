"""RobustConfig: defaults, rejections, cohort bounds and secure-aggregation compatibility."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from fedlm.config import robust as robust_config
from fedlm.config.robust import (
    AGGREGATORS,
    RobustConfig,
    check_assumptions,
    needs_individual_updates,
    trim_count,
)
from fedlm.errors import ConfigError


def test_defaults_are_plain_fedavg() -> None:
    cfg = RobustConfig()
    assert cfg.aggregator == "fedavg" and cfg.num_byzantine == 0
    assert not cfg.needs_individual_updates
    cfg.check_secure_aggregation(True)  # fedavg composes with secure aggregation


def test_frozen_and_extra_forbidden() -> None:
    cfg = RobustConfig()
    with pytest.raises(ValidationError):
        cfg.aggregator = "krum"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="num_byzantines"):
        RobustConfig(num_byzantines=1)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"aggregator": "average"}, "aggregator"),
        ({"num_byzantine": -1}, "num_byzantine"),
        ({"trim_fraction": 0.5}, "trim_fraction"),
        ({"multi_krum_m": 0}, "multi_krum_m"),
        ({"norm_bound": 0.0}, "norm_bound"),
        ({"geomed_tol": 0.0}, "geomed_tol"),
        ({"fltrust_root_fraction": 0.0}, "fltrust_root_fraction"),
    ],
)
def test_out_of_range_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        RobustConfig(**kwargs)


def test_client_side_norm_bound_needs_norm_bound_aggregator_and_fixed_bound() -> None:
    with pytest.raises(ValidationError, match=r"only applies to robust\.aggregator='norm_bound'"):
        RobustConfig(aggregator="krum", norm_bound_client_side=True, norm_bound=1.0)
    with pytest.raises(ValidationError, match=r"needs a fixed robust\.norm_bound"):
        RobustConfig(aggregator="norm_bound", norm_bound_client_side=True)
    cfg = RobustConfig(aggregator="norm_bound", norm_bound_client_side=True, norm_bound=1.0)
    assert not cfg.needs_individual_updates
    cfg.check_secure_aggregation(True)


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_robust_aggregators_are_rejected_with_secure_aggregation(name: str) -> None:
    cfg = RobustConfig(aggregator=name)
    cfg.check_secure_aggregation(False)
    with pytest.raises(ConfigError, match="client-side norm bounding"):
        cfg.check_secure_aggregation(True)


def test_needs_individual_updates_rule() -> None:
    assert all(needs_individual_updates(name) for name in AGGREGATORS.names())
    assert needs_individual_updates("norm_bound")
    assert not needs_individual_updates("norm_bound", client_side_norm_bound=True)
    assert needs_individual_updates("krum", client_side_norm_bound=True)
    assert not needs_individual_updates("fedavg")


def test_trim_count_is_floor_without_float_surprises() -> None:
    assert trim_count(5, 0.2) == 1
    assert trim_count(100, 0.29) == 29  # 0.29 * 100 = 28.999... in floats
    assert trim_count(9, 0.1) == 0


@pytest.mark.parametrize(
    ("name", "n", "kwargs", "message"),
    [
        ("krum", 5, {"f": 2}, r"krum needs n >= 2f\+3: got n=5, f=2; lower f or sample more"),
        ("multi_krum", 4, {"f": 1}, r"multi_krum needs n >= 2f\+3: got n=4"),
        ("multi_krum", 7, {"f": 1, "multi_krum_m": 7}, r"1 <= m <= n-f: got m=7, n=7, f=1"),
        ("bulyan", 10, {"f": 2}, r"bulyan needs n >= 4f\+3: got n=10, f=2"),
        ("median", 4, {"f": 2}, r"median needs n >= 2f\+1"),
        ("geomed", 2, {"f": 1}, r"geomed needs n >= 2f\+1"),
        ("flame", 2, {"f": 1}, r"flame needs n >= 2f\+1"),
        ("trimmed_mean", 10, {"f": 2, "trim_fraction": 0.1}, r"k=1 per side .* f=2"),
        ("trimmed_mean", 10, {"trim_fraction": 0.6}, r"0 <= trim_fraction < 0.5"),
        ("trimmed_mean", 10, {}, r"trim_fraction"),
        ("krum", 0, {}, r"at least one update, got n=0"),
        ("krum", 9, {"f": -1}, r"f must be >= 0"),
        ("mean", 9, {}, r"unknown aggregator 'mean'"),
    ],
)
def test_check_assumptions_rejects_with_reason(name, n, kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_assumptions(name, n, **kwargs)


@pytest.mark.parametrize(
    ("name", "n", "kwargs"),
    [
        ("krum", 7, {"f": 2}),
        ("multi_krum", 7, {"f": 2, "multi_krum_m": 5}),
        ("bulyan", 11, {"f": 2}),
        ("median", 5, {"f": 2}),
        ("trimmed_mean", 10, {"f": 2, "trim_fraction": 0.2}),
        ("norm_bound", 1, {"f": 3}),
        ("fltrust", 1, {}),
        ("fedavg", 1, {"f": 1}),
    ],
)
def test_check_assumptions_accepts_the_bounds(name, n, kwargs) -> None:
    check_assumptions(name, n, **kwargs)  # must not raise


def test_check_cohort_uses_the_config_fields() -> None:
    cfg = RobustConfig(aggregator="bulyan", num_byzantine=1)
    cfg.check_cohort(7)
    with pytest.raises(ConfigError, match="got n=6, f=1"):
        cfg.check_cohort(6)


def test_config_module_does_not_import_torch() -> None:
    tree = ast.parse(Path(robust_config.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "torch" not in imported
