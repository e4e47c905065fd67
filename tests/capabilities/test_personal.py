"""Personal modules stay local, Ditto's personal adapter, local fine-tuning, personal eval."""

from __future__ import annotations

import math

import pytest
import torch
from tests_support import tiny_overrides

from fedlm.capabilities import Personalization, build_engine
from fedlm.capabilities.personal import PERSONAL_KEY
from fedlm.commands.experiment import prepare, run_experiment
from fedlm.config import load_config
from fedlm.engine import pipelines
from fedlm.errors import ConfigError
from fedlm.personal import personal_names, prox_toward, split_personal
from fedlm.stages import CohortValue

LAST = "layers.1."  # tiny-llama has 2 layers: its last layer's adapters stay local (FedPer's head)


def _sim(lm_data, **extra):
    config = load_config(None, tiny_overrides(lm_data, **extra))
    model, data = prepare(config)
    return build_engine(config, model, data)


def test_personal_names_and_split():
    names = ["m.layers.0.q.lora_A", "m.layers.0.q.lora_B", "m.layers.1.q.lora_A", "m.layers.1.q.lora_B"]
    assert personal_names(names, ["layers.1."]) == {"m.layers.1.q.lora_A", "m.layers.1.q.lora_B"}
    t = {n: torch.full((1,), float(i)) for i, n in enumerate(names)}
    shared, own = split_personal(t, {"m.layers.1.q.lora_B"})
    assert list(own) == ["m.layers.1.q.lora_B"] and len(shared) == 3
    with pytest.raises(ConfigError, match="matches no trainable tensor"):
        personal_names(names, ["nope"])
    with pytest.raises(ConfigError, match="nothing is federated"):
        personal_names(names, ["layers"])


def test_config_rejects_bad_personal_settings(lm_data):
    with pytest.raises(ConfigError, match=r"needs personal\.local_modules"):
        load_config(None, tiny_overrides(lm_data, **{"personal.method": "modules"}))
    with pytest.raises(ConfigError, match=r"only read by personal\.method"):
        load_config(None, tiny_overrides(lm_data, **{"personal.local_modules": "[v_proj]"}))
    with pytest.raises(ConfigError, match="secure aggregation"):
        load_config(None, tiny_overrides(lm_data, **{"personal.method": "modules", "personal.local_modules": "[v_proj]",
                                                     "secure_aggregation.enabled": "true",
                                                     "federation.weighting": "uniform"}))


def test_personal_modules_never_appear_in_an_upload(lm_data):
    sim = _sim(lm_data, **{"personal.method": "modules", "personal.local_modules": f"[{LAST}]"})
    own = {n for n in sim.model.names() if LAST in n}
    assert own and len(own) < len(sim.model.names())
    state = sim.init_state()
    opened = sim.begin_round(state)
    cid = opened.plan.cohort[0]
    outcome = sim.client_round(opened.plan, cid, opened.received, None)
    # What crosses the wire: decode the payload exactly as the server does.
    _, value, _ = sim.server_pipeline.apply(state.server_states, CohortValue([outcome.update]), opened.plan,
                                            kinds=pipelines.INTAKE_KINDS)
    assert value.rejected == [] and len(value.updates) == 1
    sent = set(value.updates[0].tensors)
    assert sent.isdisjoint(own) and sent == set(sim.model.names()) - own
    # ...and the personal tensors are in the client's own state, trained away from the broadcast.
    kept = outcome.state[PERSONAL_KEY]
    assert set(kept) == own
    assert any(not torch.equal(kept[n], opened.received[n]) for n in own)


def test_personal_modules_persist_and_global_keeps_them_untouched(lm_data):
    sim = _sim(lm_data, **{"personal.method": "modules", "personal.local_modules": f"[{LAST}]",
                           "federation.clients_per_round": 4})
    state = sim.init_state()
    init = {k: v.clone() for k, v in state.global_state.items()}
    state, _ = sim.run_round(state)
    first = {c: {k: v.clone() for k, v in s[PERSONAL_KEY].items()} for c, s in state.client_states.items()}
    state, record = sim.run_round(state)
    own = set(first["alpha"])
    for n in own:  # the server never moves the personal modules
        assert torch.equal(state.global_state[n], init[n])
    for n in set(init) - own:  # the shared ones are federated
        assert not torch.equal(state.global_state[n], init[n])
    # Round 2 started from each client's round-1 personal tensors: they changed again.
    assert all(any(not torch.equal(state.client_states[c][PERSONAL_KEY][n], first[c][n]) for n in own) for c in first)
    assert record["accepted"] == 4


def test_fedrep_trains_the_personal_modules_first_then_only_the_shared_ones(lm_data):
    fedrep = {"personal.method": "modules", "personal.local_modules": f"[{LAST}]", "personal.head_steps": 3}
    sim = _sim(lm_data, **fedrep)
    state = sim.init_state()
    opened = sim.begin_round(state)
    cid = opened.plan.cohort[0]
    own = {n for n in sim.model.names() if LAST in n}
    # The head phase alone: only the personal modules move.
    sim.model.set_state(opened.received)
    sim.capability(Personalization).method.fit_head(opened.plan, cid, sim.data.clients[cid].train)
    head = sim.model.get_state()
    assert all(torch.equal(head[n], opened.received[n]) for n in set(head) - own)
    assert all(not torch.equal(head[n], opened.received[n]) for n in own if "lora_B" in n)
    # The whole client round: the personal modules kept are exactly the head phase's (the body
    # phase froze them), and the upload is the shared tensors' change only.
    outcome = sim.client_round(opened.plan, cid, opened.received, None)
    kept = outcome.state[PERSONAL_KEY]
    assert set(kept) == own and all(torch.equal(kept[n], head[n]) for n in own)
    _, value, _ = sim.server_pipeline.apply(state.server_states, CohortValue([outcome.update]), opened.plan,
                                            kinds=pipelines.INTAKE_KINDS)
    sent = value.updates[0].tensors
    assert set(sent) == set(head) - own and any(bool(v.abs().sum() > 0) for v in sent.values())
    # FedPer (no head_steps) trains both together, so its personal modules differ.
    fedper = _sim(lm_data, **{k: v for k, v in fedrep.items() if k != "personal.head_steps"})
    opened_p = fedper.begin_round(fedper.init_state())
    joint = fedper.client_round(opened_p.plan, cid, opened_p.received, None).state[PERSONAL_KEY]
    assert any(not torch.equal(joint[n], kept[n]) for n in own)


def test_fedrep_settings_are_checked(lm_data):
    with pytest.raises(ConfigError, match="head_steps"):
        load_config(None, tiny_overrides(lm_data, **{"personal.method": "ditto", "personal.head_steps": 2}))


def test_prox_toward_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    prox_toward([("w", p)], {"w": torch.tensor([3.0, 2.0])}, lr=0.1, lam=10.0)  # c = 1: midpoint
    assert torch.allclose(p.data, torch.tensor([2.0, 0.0]))
    prox_toward([("w", p)], {"w": torch.tensor([5.0, 5.0])}, lr=0.1, lam=0.0)  # lam 0: untouched
    assert torch.allclose(p.data, torch.tensor([2.0, 0.0]))
    prox_toward([("w", p)], {"w": torch.tensor([5.0, 5.0])}, lr=0.1, lam=math.inf)
    assert torch.equal(p.data, torch.tensor([5.0, 5.0]))


@pytest.mark.parametrize("lam", [math.inf, 1e9])
def test_ditto_with_infinite_lambda_is_the_global_model(lm_data, lam):
    sim = _sim(lm_data, **{"personal.method": "ditto", "personal.lam": lam, "federation.clients_per_round": 4})
    state = sim.init_state()
    for _ in range(2):
        received = state.global_state
        state, _ = sim.run_round(state)
        for cs in state.client_states.values():  # v_k equals the broadcast w it was pulled toward
            for k, v in cs[PERSONAL_KEY].items():
                assert torch.allclose(v, received[k], rtol=0, atol=1e-6), k
    out = sim.capability(Personalization).evaluate(sim, state.global_state, state.client_states)
    # Each client's personal model is the global model it last received, scored on its own held-out data.
    for c in out["clients"].values():
        assert c["has_personal"]


def test_ditto_small_lambda_moves_away_and_does_not_change_the_global_update(lm_data):
    plain = _sim(lm_data, **{"federation.clients_per_round": 4})
    ditto = _sim(lm_data, **{"personal.method": "ditto", "personal.lam": 0.01, "federation.clients_per_round": 4})
    s1, s2 = plain.init_state(), ditto.init_state()
    s1, _ = plain.run_round(s1)
    s2, _ = ditto.run_round(s2)
    for k in s1.global_state:  # Ditto's global side is FedAvg, unchanged
        assert torch.allclose(s1.global_state[k], s2.global_state[k], atol=1e-6)
    v = s2.client_states["alpha"][PERSONAL_KEY]
    assert any(not torch.allclose(v[k], s2.global_state[k], atol=1e-4) for k in v)


@pytest.mark.slow
def test_run_writes_personal_and_fairness_to_summary_and_report(lm_data, tmp_path):
    config = load_config(None, tiny_overrides(lm_data, **{"personal.method": "finetune", "personal.steps": 3}))
    result = run_experiment(config, out_dir=tmp_path / "run")
    s = result.summary
    assert set(s["fairness"]) >= {"perplexity", "eval_loss"}
    p = s["personal"]
    assert p["method"] == "finetune" and set(p["clients"]) == set(s["clients"])
    for cid, c in p["clients"].items():
        assert c["global"] == s["clients"][cid]["final"]  # the global column is the final eval
        assert c["has_personal"] and c["personal"]["perplexity"] < c["global"]["perplexity"]  # fine-tuned on its data
    assert p["fairness"]["personal"]["perplexity"]["mean"] < p["fairness"]["global"]["perplexity"]["mean"]
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Personalisation" in html and "Fairness across clients" in html


@pytest.mark.slow
def test_personal_state_is_checkpointed_so_resume_gives_the_same_personal_models(lm_data, tmp_path):
    from fedlm.commands.experiment import resume_experiment

    extra = {"personal.method": "ditto", "personal.lam": 0.5, "output.report": "false"}
    full = run_experiment(load_config(None, tiny_overrides(lm_data, **{"federation.rounds": 3, **extra})),
                          out_dir=tmp_path / "full").summary["personal"]
    run_experiment(load_config(None, tiny_overrides(lm_data, **{"federation.rounds": 2, **extra})), out_dir=tmp_path / "r")
    resumed = resume_experiment(tmp_path / "r", overrides=["federation.rounds=3"]).summary["personal"]
    for cid, c in full["clients"].items():  # round 3 trained each v_k from its checkpointed round-2 value
        assert resumed["clients"][cid]["personal"]["eval_loss"] == pytest.approx(c["personal"]["eval_loss"], abs=1e-6)
