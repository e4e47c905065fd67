"""benchmarks.recipes: a fixed test set's item counts once over seeds; ``--pool`` reads the
recorded items back."""

from types import SimpleNamespace

import pytest

from benchmarks import recipes
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


def _items_row(seed: int, model: str, loss: list[float], **changes) -> dict:
    return {"recipe": "instruct", "seed": seed, "clients": ["c1", "c2"], "quick": False, "lrs": [0.001, 0.003],
            "max_items": None, "model": model, "benchmark": "dolly_global_test", "items": {"loss": loss},
            **changes}


def _pool_args(**changes) -> SimpleNamespace:
    return SimpleNamespace(**{"recipe": "instruct", "benchmarks": [], "lrs": [0.001, 0.003], "max_items": None,
                              **changes})


def _recorded(monkeypatch, items: list[dict], runs: list[dict] = ()) -> None:
    monkeypatch.setattr(recipes, "read_results",
                        lambda name, **kw: {"recipes_items": items, "recipes": list(runs)}[name])


def test_pool_rebuilds_each_seed_from_its_scored_items(monkeypatch):
    items = [_items_row(s, m, [1.0 + s, 2.0]) for s in (0, 1) for m in ("base", "federated", "local_only:c1")]
    items.append(_items_row(0, "federated", [0.5, 0.5]))  # scored again: the later row counts
    items.append(_items_row(0, "federated", [9.0, 9.0], lrs=[0.01]))  # other settings: ignored
    _recorded(monkeypatch, items, [{"recipe": "instruct", "chosen": {"0": {"federated": {"lr": 0.003}}}}])
    runs = recipes.recorded_runs(_pool_args(), [1, 0])
    assert [r["seed"] for r in runs] == [1, 0]
    assert runs[1]["scores"]["federated"]["dolly_global_test"]["loss"] == [0.5, 0.5]
    assert runs[0]["scores"]["local_only:c1"]["dolly_global_test"]["loss"] == [2.0, 2.0]
    assert runs[1]["chosen"] == {"federated": {"lr": 0.003}} and runs[0]["chosen"] is None
    assert runs[0]["clients"] == ["c1", "c2"]


def test_pool_refuses_an_unscored_seed_or_two_client_draws(monkeypatch):
    _recorded(monkeypatch, [_items_row(0, "federated", [1.0])])
    with pytest.raises(SystemExit, match="seed 0 is not fully scored"):
        recipes.recorded_runs(_pool_args(), [0])
    with pytest.raises(SystemExit, match=r"seed 1 is not fully scored.*--seeds 1"):
        recipes.recorded_runs(_pool_args(), [1])
    _recorded(monkeypatch, [_items_row(0, "federated", [1.0]), _items_row(0, "local_only:c1", [1.0]),
                            _items_row(0, "base", [1.0], clients=["c3", "c4"])])
    with pytest.raises(SystemExit, match="2 client draws"):
        recipes.recorded_runs(_pool_args(), [0])
