"""Learned mixing of a global and a local adapter (personal.method=mix)."""

from __future__ import annotations

import pytest
import torch
from tests_support import tiny_overrides

from fedlm.capabilities import build_engine
from fedlm.capabilities.personal import MIX_KEY, PERSONAL_KEY
from fedlm.commands.experiment import prepare, run_experiment
from fedlm.config import load_config
from fedlm.eval.metrics import score_lm
from fedlm.personal.mixing import (
    alphas,
    learn_mixing,
    mixed,
    mixing_groups,
    module_of,
    theta_gradient,
)

Q = "model.layers.0.self_attn.q_proj"


def test_lora_a_and_b_share_one_module_and_other_weights_are_their_own():
    assert module_of(f"{Q}.lora_A.weight") == module_of(f"{Q}.lora_B.weight") == Q
    assert module_of(f"{Q}.lora_A.default.weight") == Q
    assert module_of("model.norm.weight") == "model.norm"
    groups = mixing_groups([f"{Q}.lora_A.weight", f"{Q}.lora_B.weight", "model.norm.weight"])
    assert groups == {Q: [f"{Q}.lora_A.weight", f"{Q}.lora_B.weight"], "model.norm": ["model.norm.weight"]}


def test_mixing_weight_zero_is_the_global_adapter_and_one_the_local():
    w = {f"{Q}.lora_A.weight": torch.tensor([1.0, 2.0]), f"{Q}.lora_B.weight": torch.tensor([3.0])}
    v = {f"{Q}.lora_A.weight": torch.tensor([5.0, -2.0]), f"{Q}.lora_B.weight": torch.tensor([-1.0])}
    assert all(torch.equal(mixed(w, v, {Q: 0.0})[n], w[n]) for n in w)
    assert all(torch.equal(mixed(w, v, {Q: 1.0})[n], v[n]) for n in w)
    quarter = mixed(w, v, {Q: 0.25})
    assert quarter[f"{Q}.lora_A.weight"].tolist() == [2.0, 1.0]  # 1 + 0.25 * 4, 2 + 0.25 * -4
    assert quarter[f"{Q}.lora_B.weight"].tolist() == [2.0]


def test_theta_gradient_matches_autograd_through_the_sigmoid():
    # L(p) = sum (p - target)^2 with p = w + sigmoid(theta_m) (v - w): dL/dp = 2 (p - target).
    torch.manual_seed(0)
    names = [f"{Q}.lora_A.weight", f"{Q}.lora_B.weight", "model.norm.weight"]
    w = {n: torch.randn(3, dtype=torch.float64) for n in names}
    v = {n: torch.randn(3, dtype=torch.float64) for n in names}
    target = {n: torch.randn(3, dtype=torch.float64) for n in names}
    theta = torch.tensor([0.3, -1.2], dtype=torch.float64, requires_grad=True)
    modules = [Q, "model.norm"]
    a = dict(zip(modules, torch.sigmoid(theta), strict=True))
    loss = sum(((w[n] + a[module_of(n)] * (v[n] - w[n]) - target[n]) ** 2).sum() for n in names)
    loss.backward()
    alpha = {m: float(x.detach()) for m, x in a.items()}
    p = mixed(w, v, alpha)
    got = theta_gradient({n: 2 * (p[n] - target[n]) for n in names}, w, v, alpha)
    assert [got[m] for m in modules] == pytest.approx(theta.grad.tolist(), rel=1e-10)


def test_learnt_mixing_lowers_the_training_loss(lm_data):
    config = load_config(None, tiny_overrides(lm_data))
    model, data = prepare(config)
    cid = data.ids()[0]
    train = data.clients[cid].train
    w = model.get_state()
    torch.manual_seed(1)
    v = {n: t + 0.05 * torch.randn_like(t) for n, t in w.items()}  # a local adapter apart from w
    pad = model.tokenizer.pad_token_id

    def train_loss(state):
        model.set_state(state)
        s = score_lm(model.model, train, pad_id=pad, batch_size=4)
        return s.loss_sum / s.tokens

    start = {m: 0.0 for m in mixing_groups(w)}
    before = train_loss(mixed(w, v, alphas(start)))
    theta = learn_mixing(model, train, w, v, start, steps=20, batch_size=4, lr=0.2, seed=0)
    assert set(theta) == set(start) and theta != start
    assert train_loss(mixed(w, v, alphas(theta))) < before


@pytest.mark.slow
def test_mix_keeps_a_local_adapter_and_its_weights_on_the_client(lm_data, tmp_path):
    config = load_config(None, tiny_overrides(lm_data, **{"personal.method": "mix", "personal.steps": 2,
                                                          "federation.clients_per_round": 4, "eval.max_clients": 4}))
    model, data = prepare(config)
    sim = build_engine(config, model, data)
    state = sim.init_state()
    opened = sim.begin_round(state)
    cid = opened.plan.cohort[0]
    outcome = sim.client_round(opened.plan, cid, opened.received, None)
    kept = outcome.state
    assert set(kept[PERSONAL_KEY]) == set(model.names())  # the local adapter: every trainable tensor
    assert set(kept[MIX_KEY]) == set(mixing_groups(model.names()))  # a logit per module
    run = run_experiment(config, out_dir=tmp_path / "run")
    personal = run.summary["personal"]
    assert personal["method"] == "mix" and all(c["has_personal"] for c in personal["clients"].values())
    for c in personal["clients"].values():
        assert c["personal"]["eval_loss"] != c["global"]["eval_loss"]
