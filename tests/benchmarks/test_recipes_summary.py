"""benchmarks.recipes.summarise: a fixed test set's item counts once over seeds."""

from types import SimpleNamespace

import pytest

from benchmarks.recipes import RECIPES, summarise


def _run(seed: int, fed: list[float], local_a: list[float], local_b: list[float]) -> dict:
    bench = "dolly_global_test"
    return {"seed": seed, "scores": {"base": {bench: {"loss": [3.0] * len(fed)}},
                                     "federated": {bench: {"loss": fed}},
                                     "local_only:a": {bench: {"loss": local_a}},
                                     "local_only:b": {bench: {"loss": local_b}}}}


def test_the_pooled_test_counts_each_global_test_record_once():
    # 4 records scored in 3 seeds; federated beats the local mean by 1 nat on every one.
    runs = [_run(s, [1.0, 1.5, 2.0, 2.5], [2.0, 2.5, 3.0, 3.5], [2.0, 2.5, 3.0, 3.5]) for s in range(3)]
    out = summarise(RECIPES["instruct"], SimpleNamespace(benchmarks=[]), runs)
    pooled = out["paired_tests"]["dolly_global_test"]["pooled"]
    assert pooled["n"] == 4  # not 12: the same 4 records in every seed
    assert pooled["diff"]["estimate"] == pytest.approx(-1.0)
    # Exact sign-flip over 4 items: only all-minus and all-plus reach |mean| 1, p = 2/16.
    # Three copies of each record counted apart would have given p = 2/4096 and a "met".
    assert pooled["p_value"] == pytest.approx(2 / 16)
    assert out["goals"]["dolly_global_test"].startswith("not separable")


def test_the_per_seed_rows_keep_every_model_and_the_local_mean():
    runs = [_run(s, [1.0, 2.0], [2.0, 2.0], [4.0, 4.0]) for s in range(3)]
    out = summarise(RECIPES["instruct"], SimpleNamespace(benchmarks=[]), runs)
    seed0 = {r["model"]: r["value"] for r in out["rows"] if r["seed"] == 0}
    assert seed0["federated"] == pytest.approx(1.5)
    assert seed0["base"] == pytest.approx(3.0)
    assert seed0["local_only (mean of 2)"] == pytest.approx(3.0)  # mean of 2.0 and 4.0 per record
    per_seed = out["paired_tests"]["dolly_global_test"]["per_seed"]
    assert [p["federated_minus_local"]["diff"]["estimate"] for p in per_seed] == pytest.approx([-1.5] * 3)
