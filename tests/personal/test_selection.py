"""Choosing a personal model on a validation split of the client's own training data."""

from __future__ import annotations

import math

import pytest
import torch
from tests_support import tiny_overrides

from fedlm.capabilities import build_engine
from fedlm.capabilities import personal as personal_run
from fedlm.capabilities.personal import Personalization
from fedlm.capabilities.personal import base as personal_base
from fedlm.client.trainer import train_local
from fedlm.commands.experiment import prepare, run_experiment
from fedlm.config import load_config
from fedlm.data.federated import ClientData, FederatedData
from fedlm.engine.capability import EngineContext
from fedlm.errors import ConfigError
from fedlm.eval.metrics import score_lm
from fedlm.personal.selection import best_index, split_validation, validation_size
from fedlm.seeds import derive_seed


def _sim(lm_data, **extra):
    config = load_config(None, tiny_overrides(lm_data, **extra))
    model, data = prepare(config)
    return build_engine(config, model, data)


def _val_loss(sim, examples) -> float:
    s = score_lm(sim.model.model, examples, pad_id=sim.model.tokenizer.pad_token_id, batch_size=4)
    return s.loss_sum / s.tokens


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- the split and the choice
@pytest.mark.parametrize(("n", "fraction", "held"), [(8, 0.25, 2), (9, 0.25, 3), (10, 0.01, 1), (2, 0.5, 1)])
def test_split_holds_out_ceil_fraction_disjoint_and_covers_every_example(n, fraction, held):
    examples = [f"e{i}" for i in range(n)]
    fit, val = split_validation(examples, fraction, seed=7, client="c")
    assert validation_size(n, fraction) == held == len(val)
    assert sorted(fit + val) == sorted(examples) and not set(fit) & set(val)
    assert (fit, val) == split_validation(examples, fraction, seed=7, client="c")  # seeded: the same every time
    assert fit == [e for e in examples if e in set(fit)]  # order kept


def test_split_depends_on_the_seed_and_refuses_a_client_with_nothing_left_to_train_on():
    examples = list(range(40))
    assert split_validation(examples, 0.25, seed=1, client="c")[1] != split_validation(examples, 0.25, seed=2,
                                                                                         client="c")[1]
    with pytest.raises(ConfigError, match=r"client 'tiny' has 1 training example.*lower personal\.val_fraction"):
        split_validation(["only"], 0.1, seed=0, client="tiny")
    with pytest.raises(ConfigError, match="would leave none"):
        split_validation(list(range(4)), 0.9, seed=0, client="c")


def test_best_index_takes_the_lowest_finite_loss_and_the_earliest_on_ties():
    assert best_index([3.0, 2.0, 2.5]) == 1
    assert best_index([2.0, 2.0, 1.0, 1.0]) == 2  # tie: fewer steps
    assert best_index([1.0, 1.0]) == 0  # tie between global and personal: the global model
    assert best_index([math.nan, 5.0, math.inf, 4.0]) == 3
    with pytest.raises(ValueError, match="no finite validation loss"):
        best_index([math.nan, math.inf])


def test_config_allows_val_fraction_only_where_a_held_out_split_is_unseen(lm_data):
    for method in ("finetune", "ditto", "mix"):
        load_config(None, tiny_overrides(lm_data, **{"personal.method": method, "personal.val_fraction": 0.25}))
    with pytest.raises(ConfigError, match="no personal model to choose"):
        load_config(None, tiny_overrides(lm_data, **{"personal.val_fraction": 0.25}))
    with pytest.raises(ConfigError, match="train in the round's local steps"):
        load_config(None, tiny_overrides(lm_data, **{"personal.method": "modules", "personal.local_modules": "[v_proj]",
                                                     "personal.val_fraction": 0.25}))
    with pytest.raises(ConfigError, match="val_fraction"):
        load_config(None, tiny_overrides(lm_data, **{"personal.method": "ditto", "personal.val_fraction": 1.0}))


def test_a_client_too_small_to_split_is_refused_when_the_run_is_built(lm_data):
    sim = _sim(lm_data, **{"personal.method": "finetune", "personal.val_fraction": 0.25})
    first = sim.data.clients[sim.data.ids()[0]]
    small = FederatedData({"solo": ClientData(train=first.train[:1], heldout=first.heldout)}, sim.data.format)
    with pytest.raises(ConfigError, match="client 'solo' has 1 training example"):
        Personalization(EngineContext(sim.config, sim.model, small))


# ---------------------------------------------------------------------- finetune: the step count
def test_finetune_scores_each_step_as_a_plain_run_would_and_refits_on_all_examples_for_the_best_count(lm_data):
    steps = 4
    sim = _sim(lm_data, **{"personal.method": "finetune", "personal.steps": steps, "personal.val_fraction": 0.25})
    run, cid = sim.capability(Personalization), "beta"
    g = sim.init_state().global_state
    own = run.personal_state(cid, g, {})
    choice = run.choices[cid]
    fit, val = split_validation(sim.data.clients[cid].train, 0.25,
                                seed=derive_seed(sim.config.federation.seed, 1, 4), client=cid)
    seed = derive_seed(sim.config.federation.seed, 1, 3)  # the personal stream of client 1 ("beta")
    want = []  # the validation loss after j steps of a run that never paused to score
    for j in range(steps + 1):
        sim.model.set_state(g)
        train_local(sim.model, fit, steps=j, batch_size=2, lr=0.01, seed=seed)
        want.append(_val_loss(sim, val))
    assert choice["val_loss_by_step"] == pytest.approx(want, rel=1e-5)
    k = choice["steps"]
    assert k == min(range(steps + 1), key=lambda j: (want[j], j)) and k > 0  # these steps fit the client's words
    assert choice["chosen"] == "personal"
    sim.model.set_state(g)
    train_local(sim.model, sim.data.clients[cid].train, steps=k, batch_size=2, lr=0.01, seed=seed)
    assert _same(own, sim.model.get_state())


def test_finetune_that_only_hurts_keeps_the_global_model(lm_data):
    # An lr this high wrecks the adapter at the first step: zero steps is best.
    sim = _sim(lm_data, **{"personal.method": "finetune", "personal.steps": 2, "personal.lr": 30.0,
                           "personal.val_fraction": 0.3})
    g = sim.init_state().global_state
    g = {k: v + 0.01 * torch.randn_like(v) for k, v in g.items()}  # a trained-looking adapter (B != 0)
    own = sim.capability(Personalization).personal_state("alpha", g, {})
    assert sim.capability(Personalization).choices["alpha"]["steps"] == 0 and sim.capability(Personalization).choices["alpha"]["chosen"] == "global"
    assert _same(own, g)


# ---------------------------------------------------------------------- ditto and mix: personal or global
@pytest.mark.parametrize("method", ["ditto", "mix"])
def test_personal_training_never_sees_the_validation_split(lm_data, monkeypatch, method):
    sim = _sim(lm_data, **{"personal.method": method, "personal.val_fraction": 0.3,
                           "federation.clients_per_round": 4})
    seen: list = []
    real = personal_base.train_local

    def spy(model, examples, **kw):
        seen.extend(id(e) for e in examples)
        return real(model, examples, **kw)

    monkeypatch.setattr(personal_base, "train_local", spy)
    sim.run_round(sim.init_state())
    for cid in sim.data.ids():
        fit, val = sim.capability(Personalization).method.split(cid)
        assert val and not {id(e) for e in val} & set(seen)
        assert {id(e) for e in fit} <= set(seen)


def test_ditto_keeps_whichever_model_scores_lower_on_the_split(lm_data):
    sim = _sim(lm_data, **{"personal.method": "ditto", "personal.lam": 0.01, "personal.val_fraction": 0.3,
                           "federation.clients_per_round": 4})
    state, _ = sim.run_round(sim.init_state())
    out = sim.capability(Personalization).evaluate(sim, state.global_state, state.client_states)
    for cid, c in out["clients"].items():
        choice = c["selection"]
        _, val = sim.capability(Personalization).method.split(cid)
        for side in ("global", "personal"):  # the recorded losses are the models' losses on the split
            model = state.global_state if side == "global" else state.client_states[cid][personal_run.PERSONAL_KEY]
            sim.model.set_state(model)
            assert choice["val_loss"][side] == pytest.approx(_val_loss(sim, val), rel=1e-5)
        lower = min(("global", "personal"), key=lambda s: (choice["val_loss"][s], s != "global"))
        assert choice["chosen"] == lower
        if lower == "global":  # the personal column is then the global model's score
            assert c["personal"] == c["global"]


def test_a_personal_model_equal_to_the_global_one_ties_and_the_global_one_is_kept(lm_data):
    sim = _sim(lm_data, **{"personal.method": "ditto", "personal.lam": math.inf, "personal.val_fraction": 0.3,
                           "federation.clients_per_round": 4})
    state, _ = sim.run_round(sim.init_state())
    # lam = inf pins v to the broadcast it trained toward; scored against that same broadcast.
    v = state.client_states["gamma"][personal_run.PERSONAL_KEY]
    own = sim.capability(Personalization).personal_state("gamma", v, state.client_states)
    choice = sim.capability(Personalization).choices["gamma"]
    assert choice["val_loss"]["global"] == pytest.approx(choice["val_loss"]["personal"], abs=1e-6)
    assert choice["chosen"] == "global" and own is v


@pytest.mark.slow
def test_run_records_each_clients_choice_in_summary_and_report(lm_data, tmp_path):
    config = load_config(None, tiny_overrides(lm_data, **{"personal.method": "finetune", "personal.steps": 3,
                                                          "personal.val_fraction": 0.25}))
    p = run_experiment(config, out_dir=tmp_path / "run").summary["personal"]
    for c in p["clients"].values():
        sel = c["selection"]
        assert len(sel["val_loss_by_step"]) == 4 and sel["steps"] == best_index(sel["val_loss_by_step"])
    assert "chosen on validation" in (tmp_path / "run" / "report.html").read_text()
