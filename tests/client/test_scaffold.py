"""SCAFFOLD (Karimireddy et al. 2020, option II): control variates by hand and on quadratics."""

from __future__ import annotations

import torch
from quadratic_support import EXAMPLES, FakeAdapted, Quadratic

from fedlm.aggregation.scaffold_stage import ScaffoldControl
from fedlm.client.scaffold import (
    client_control_update,
    control_delta,
    correction,
    server_control_update,
)
from fedlm.client.trainer import train_local
from fedlm.stages import ClientUpdate, CohortValue, GlobalAtStart, RoundPlan


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs)


def test_option_two_client_update_by_hand():
    # c_i+ = c_i - c + (x - y_i) / (K eta); with Δy = [-0.3, 0.6], K = 3, eta = 0.1: (x - y)/(K eta) = [1, -2]
    new = client_control_update({"w": t(1.0, 0.0)}, {"w": t(0.5, 0.5)}, {"w": t(-0.3, 0.6)}, steps=3, lr=0.1)
    torch.testing.assert_close(new["w"], t(1.5, -2.5))


def test_empty_variates_are_zeros_and_correction_is_c_minus_ci():
    like = {"w": torch.zeros(2)}
    torch.testing.assert_close(correction({}, {}, like)["w"], torch.zeros(2))
    torch.testing.assert_close(correction({"w": t(1.0, 2.0)}, {"w": t(0.5, 0.5)}, like)["w"], t(0.5, 1.5))


def test_server_update_divides_by_the_population():
    # c + (1/N) Σ Δc_i with N = 4 and two clients this round
    new = server_control_update({"w": t(1.0)}, [{"w": t(2.0)}, {"w": t(-1.0)}], num_clients=4)
    torch.testing.assert_close(new["w"], t(1.25))


def test_server_stage_derives_the_clients_control_deltas():
    c = {"w": t(0.5, -0.5)}
    deltas = [t(-0.2, 0.4), t(0.6, 0.0)]
    steps = [2, 4]
    plan = RoundPlan(round=1, cohort=("a", "b"), lr=0.1, local_steps=2, seed=0).with_fields(GlobalAtStart({}, population=5))
    ups = [ClientUpdate("a", 1, 1, tensors={"w": deltas[0]}, metrics={"local_steps": 2}),
           ClientUpdate("b", 1, 1, tensors={"w": deltas[1]}, metrics={"local_steps": 4})]
    state, value, metrics = ScaffoldControl().apply({"c": c}, CohortValue(updates=ups), plan)
    # what each client computes for itself: Δc_i = c_i+ - c_i (any c_i)
    dcs = [{"w": client_control_update({"w": t(3.0, 1.0)}, c, {"w": d}, steps=k, lr=0.1)["w"] - t(3.0, 1.0)}
           for d, k in zip(deltas, steps, strict=True)]
    torch.testing.assert_close(dcs[0]["w"], control_delta(c, {"w": deltas[0]}, steps=2, lr=0.1)["w"])
    expected = c["w"] + (dcs[0]["w"] + dcs[1]["w"]) / 5
    torch.testing.assert_close(state["c"]["w"], expected)
    assert value.aggregate is None and metrics["clients"] == 2


def _federate(algorithm: str, rounds: int = 30) -> float:
    """Two quadratic clients with different curvature; full participation; local SGD."""
    clients = [(1.0, [1.0]), (4.0, [-1.0])]  # (a_i, t_i): optimum of the sum is (1 - 4) / 5 = -0.6
    x = torch.tensor([2.0])
    c: dict = {}
    c_i: list[dict] = [{}, {}]
    lr, steps = 0.05, 10
    for _ in range(rounds):
        deltas = []
        for i, (a, target) in enumerate(clients):
            model = FakeAdapted(Quadratic(x.tolist(), target, a=a))
            kw = {}
            if algorithm == "scaffold":
                like = {"w": x, "v": torch.zeros(1)}
                kw["correction"] = correction(c, c_i[i], like)
            train_local(model, EXAMPLES, steps=steps, batch_size=2, lr=lr, seed=0, max_grad_norm=None, optimizer="sgd",
                        frozen={"v"}, **kw)
            delta = {"w": model.model.w.detach() - x, "v": torch.zeros(1)}
            if algorithm == "scaffold":
                old = c_i[i]
                c_i[i] = client_control_update(old, c, delta, steps=steps, lr=lr)
            deltas.append(delta)
        if algorithm == "scaffold":
            dcs = [control_delta(c, d, steps=steps, lr=lr) for d in deltas]
            c = server_control_update(c, dcs, num_clients=2)
        x = x + (deltas[0]["w"] + deltas[1]["w"]) / 2
    return float(x)


def test_scaffold_removes_client_drift_on_heterogeneous_quadratics():
    # FedAvg with many local steps converges to a point biased towards the flatter client;
    # SCAFFOLD's control variates correct the drift and reach the optimum of the sum.
    fedavg, scaffold = _federate("fedavg"), _federate("scaffold")
    assert abs(scaffold - (-0.6)) < 1e-3
    assert abs(fedavg - (-0.6)) > 0.05
