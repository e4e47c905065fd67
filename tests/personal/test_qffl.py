"""q-FFL (q-FedAvg): q = 0 is FedAvg, a hand-worked q = 1 step, and the stage in a run."""

from __future__ import annotations

import pytest
import torch
from tests_support import tiny_overrides

from fedlm.aggregation.fedavg import WeightedMean
from fedlm.aggregation.qffl import LOSS_KEY, QFFLMean, qffl_step
from fedlm.capabilities import build_engine
from fedlm.commands.experiment import prepare
from fedlm.config import load_config
from fedlm.errors import ConfigError
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan

PLAN = RoundPlan(round=1, cohort=("a", "b"), lr=0.5, local_steps=1, seed=0)


def _updates():
    return [
        ClientUpdate("a", 1, 3, tensors={"w": torch.tensor([1.0, 0.0])}, metrics={LOSS_KEY: 2.0}),
        ClientUpdate("b", 1, 1, tensors={"w": torch.tensor([0.0, 2.0])}, metrics={LOSS_KEY: 1.0}),
    ]


@pytest.mark.parametrize("weighting", ["examples", "uniform"])
def test_q_zero_equals_fedavg(weighting):
    _, fedavg, _ = WeightedMean(weighting=weighting).apply(None, CohortValue(_updates()), PLAN)
    _, qffl, m = QFFLMean(q=0.0, weighting=weighting).apply(None, CohortValue(_updates()), PLAN)
    assert torch.allclose(qffl.aggregate["w"], fedavg.aggregate["w"], atol=1e-7)
    assert m["q"] == 0.0


def test_q_one_step_by_hand():
    # uniform p; L = 1/lr = 2; ||d_a||^2 = 1, ||d_b||^2 = 4; F_a = 2, F_b = 1
    # den = (1*2^0*2*1 + 2) + (1*1^0*2*4 + 1) = 4 + 9 = 13; num = 2*d_a + 1*d_b = [2, 2]
    step, info = qffl_step([u.tensors for u in _updates()], [2.0, 1.0], [1.0, 1.0], q=1.0, lipschitz=2.0)
    assert torch.allclose(step["w"], torch.tensor([2 / 13, 2 / 13]))
    assert info["denominator"] == pytest.approx(13.0)
    _, value, m = QFFLMean(q=1.0, weighting="uniform").apply(None, CohortValue(_updates()), PLAN)  # L from plan.lr
    assert torch.allclose(value.aggregate["w"], step["w"])
    assert m["weights"]["a"] == pytest.approx(2 / 13)


def test_higher_q_leans_toward_the_worse_client():
    ups = [u.tensors for u in _updates()]
    w = [qffl_step(ups, [2.0, 1.0], [1.0, 1.0], q=q, lipschitz=1e-6)[1]["weights"] for q in (0.0, 1.0, 4.0)]
    shares = [x[0] / sum(x) for x in w]  # client a has the higher loss
    assert shares[0] == pytest.approx(0.5) and shares[0] < shares[1] < shares[2]


@pytest.mark.parametrize("bad", [{}, {LOSS_KEY: float("nan")}, {LOSS_KEY: -1.0}, {LOSS_KEY: "high"}])
def test_an_update_without_a_usable_loss_is_rejected_not_fatal(bad):
    # A client's reported loss is hostile until checked: one bad report must not end the run.
    ups = _updates()
    ups[1].metrics = bad
    _, out, metrics = QFFLMean(q=1.0).apply(None, CohortValue(ups), PLAN)
    assert [(x["client_id"], x["reason"]) for x in out.rejected] == [("b", "bad_metric")]
    alone, _ = qffl_step([ups[0].tensors], [float(ups[0].metrics[LOSS_KEY])], [float(ups[0].num_examples)], q=1.0,
                         lipschitz=1.0 / PLAN.lr)
    assert metrics["clients"] == 1 and all(torch.equal(out.aggregate[k], alone[k]) for k in alone)


def test_config_rejects_qffl_with_robust_aggregators(lm_data):
    with pytest.raises(ConfigError, match=r"fairness\.qffl_q"):
        load_config(None, tiny_overrides(lm_data, **{"fairness.qffl_q": 1.0, "robust.aggregator": "median"}))


def test_qffl_in_a_run_sends_the_loss_and_q_zero_matches_fedavg(lm_data):
    def run(**extra):
        config = load_config(None, tiny_overrides(lm_data, **{"federation.weighting": "uniform", **extra}))
        model, data = prepare(config)
        sim = build_engine(config, model, data)
        state, record = sim.run_round(sim.init_state())
        return state, record

    s0, r0 = run(**{"fairness.qffl_q": 0.0})
    s1, _ = run()
    assert r0["server"]["qffl"]["clients"] == 3 and all(f > 0 for f in r0["server"]["qffl"]["losses"].values())
    for k in s0.global_state:
        assert torch.allclose(s0.global_state[k], s1.global_state[k], atol=1e-6)
