"""ExplainConfig: defaults, field checks and the exact-Shapley cohort bound."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fedlm.config.explain import EXACT_MAX_COHORT, ExplainConfig
from fedlm.errors import ConfigError


def test_defaults_are_off_and_frozen() -> None:
    cfg = ExplainConfig()
    assert cfg.contribution == "off"
    with pytest.raises(ValidationError):
        cfg.contribution = "gtg"  # type: ignore[misc]


@pytest.mark.parametrize(
    "bad",
    [
        {"contribution": "banzhaf"},
        {"gtg_epsilon": -0.1},
        {"gtg_round_threshold": -1.0},
        {"gtg_max_permutations": 0},
        {"gtg_convergence_tol": 0.0},
        {"validation_size": 0},
        {"negative_tol": -1.0},
        {"unknown_key": 1},
    ],
)
def test_rejects_invalid_fields(bad: dict) -> None:
    with pytest.raises(ValidationError, match=next(iter(bad))):
        ExplainConfig(**bad)


def test_every_field_has_a_description() -> None:
    assert all(f.description for f in ExplainConfig.model_fields.values())


def test_exact_is_limited_to_cohorts_of_eight() -> None:
    exact = ExplainConfig(contribution="exact")
    exact.check_cohort(EXACT_MAX_COHORT)  # 256 coalitions: allowed
    with pytest.raises(ConfigError, match=r"contribution='exact'.*9 clients.*'gtg'"):
        exact.check_cohort(9)
    for method in ("gtg", "loo", "off"):
        ExplainConfig(contribution=method).check_cohort(100)
    with pytest.raises(ConfigError, match=">= 0"):
        exact.check_cohort(-1)


def test_config_module_does_not_import_torch() -> None:
    import ast
    from pathlib import Path

    import fedlm.config.explain as mod

    tree = ast.parse(Path(mod.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "torch" for name in imported)
    assert "pydantic" in imported  # the walk does see the module's imports
