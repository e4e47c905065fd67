"""Server optimizers: hand-worked two-round updates, torch parity, state round trip, config."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import pydantic
import pytest
import torch

from fedlm.aggregation.server_opt import (
    SERVER_OPTIMIZERS,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    OuterNesterov,
    ServerOptimizer,
    server_optimizer_from_config,
)
from fedlm.config.server_opt import SERVER_OPT_FIELDS, ServerOptConfig
from fedlm.errors import ConfigError, PipelineError, ProtocolError
from fedlm.stages import SERVER_ORDER, ClientUpdate, CohortValue, RoundPlan, Stage

PLAN = RoundPlan(round=1, cohort=("a", "b"), lr=0.1, local_steps=1, seed=0)


def run(opt: ServerOptimizer, deltas: list[list[float]]) -> tuple[dict, list[torch.Tensor]]:
    """Apply ``opt`` to a sequence of one-tensor deltas; return the final state and the steps."""
    state = opt.init()
    steps = []
    for d in deltas:
        value = CohortValue(updates=[], aggregate={"w": torch.tensor(d)})
        state, value, _ = opt.apply(state, value, PLAN)
        steps.append(value.aggregate["w"])
    return state, steps


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------- hand-worked updates


def test_fedavg_scales_delta_by_server_lr():
    _, (s1, s2) = run(FedAvg(lr=0.5), [[2.0, -4.0], [1.0, 1.0]])
    close(s1, [1.0, -2.0])
    close(s2, [0.5, 0.5])


def test_fedavgm_two_rounds():
    # m1 = [2, -4], step1 = 0.5 m1; m2 = 0.5 m1 + [1, 1] = [2, -1], step2 = 0.5 m2
    state, (s1, s2) = run(FedAvgM(lr=0.5, momentum=0.5), [[2.0, -4.0], [1.0, 1.0]])
    close(s1, [1.0, -2.0])
    close(s2, [1.0, -0.5])
    close(state["m"]["w"], [2.0, -1.0])


# Shared by the three adaptive rules: lr 1, beta1 0.5, beta2 0.75, tau 0.5 (v0 = 0.25).
# Delta1 = [2, 0.25], Delta2 = [1, 0.5]; Delta1^2 = [4, 0.0625], Delta2^2 = [1, 0.25].
# m1 = 0.5 Delta1 = [1, 0.125];  m2 = 0.5 m1 + 0.5 Delta2 = [1, 0.3125].
ADAPTIVE_DELTAS = [[2.0, 0.25], [1.0, 0.5]]
M1, M2 = [1.0, 0.125], [1.0, 0.3125]
ADAPTIVE_V = {
    # v1 = 0.25 + D1^2; v2 = v1 + D2^2
    "fedadagrad": ([4.25, 0.3125], [5.25, 0.5625]),
    # v1 = 0.75*0.25 + 0.25 D1^2 = [1.1875, 0.203125]; v2 = 0.75 v1 + 0.25 D2^2
    "fedadam": ([1.1875, 0.203125], [1.140625, 0.21484375]),
    # element 0: v0 < D1^2 so v grows: 0.25 + 0.25*4 = 1.25; then v1 > D2^2: 1.25 - 0.25 = 1.0
    # element 1: v0 > D1^2 so v shrinks: 0.25 - 0.015625 = 0.234375; then v1 < D2^2: + 0.0625
    "fedyogi": ([1.25, 0.234375], [1.0, 0.296875]),
}


@pytest.mark.parametrize("name", sorted(ADAPTIVE_V))
def test_adaptive_two_rounds(name: str):
    opt = SERVER_OPTIMIZERS.create(name, lr=1.0, beta1=0.5, beta2=0.75, tau=0.5)
    state = opt.init()
    v_expected = ADAPTIVE_V[name]
    for t, (m, v) in enumerate(zip((M1, M2), v_expected, strict=True)):
        value = CohortValue(updates=[], aggregate={"w": torch.tensor(ADAPTIVE_DELTAS[t])})
        state, value, _ = opt.apply(state, value, PLAN)
        close(state["m"]["w"], m)
        close(state["v"]["w"], v)
        close(
            value.aggregate["w"], [mi / (math.sqrt(vi) + 0.5) for mi, vi in zip(m, v, strict=True)]
        )
    assert state["steps"] == 2


def test_adaptive_second_moment_starts_at_tau_squared():
    # A zero delta leaves only the decayed initial value: v1 = 0.75 * tau^2 = 0.75 * 0.04.
    state, _ = run(FedAdam(lr=1.0, beta1=0.5, beta2=0.75, tau=0.2), [[0.0]])
    close(state["v"]["w"], [0.75 * 0.04])


def test_outer_nesterov_two_rounds():
    # g1 = [-2, 4]; m1 = g1; step1 = -0.5 (g1 + 0.5 m1) = [1.5, -3]
    # g2 = [-1, -1]; m2 = 0.5 m1 + g2 = [-2, 1]; step2 = -0.5 (g2 + 0.5 m2) = [1, 0.25]
    state, (s1, s2) = run(OuterNesterov(lr=0.5, momentum=0.5), [[2.0, -4.0], [1.0, 1.0]])
    close(s1, [1.5, -3.0])
    close(s2, [1.0, 0.25])
    close(state["m"]["w"], [-2.0, 1.0])


def test_outer_nesterov_defaults_are_diloco():
    opt = OuterNesterov()
    assert (opt.lr, opt.momentum) == (0.7, 0.9)


@pytest.mark.parametrize(("lr", "momentum"), [(0.7, 0.9), (0.3, 0.5)])
def test_outer_nesterov_matches_torch_sgd_nesterov(lr: float, momentum: float):
    gen = torch.Generator().manual_seed(0)
    x_ref = torch.randn(3, 4, generator=gen)
    x_ours = x_ref.clone()
    param = torch.nn.Parameter(x_ref.clone())
    sgd = torch.optim.SGD([param], lr=lr, momentum=momentum, nesterov=True)
    opt = OuterNesterov(lr=lr, momentum=momentum)
    state = opt.init()
    for _ in range(4):
        delta = torch.randn(3, 4, generator=gen)
        param.grad = -delta  # the pseudo-gradient
        sgd.step()
        state, value, _ = opt.apply(state, CohortValue(updates=[], aggregate={"w": delta}), PLAN)
        x_ours = x_ours + value.aggregate["w"]
        torch.testing.assert_close(x_ours, param.detach(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- contract table


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS.names())
def test_contract_and_state_round_trip(name: str):
    opt = SERVER_OPTIMIZERS.create(name)
    assert isinstance(opt, Stage)
    assert opt.kind == "optimize" and opt.kind in SERVER_ORDER
    gen = torch.Generator().manual_seed(1)
    deltas = [
        {"a": torch.randn(2, 3, generator=gen), "b": torch.randn(4, generator=gen)}
        for _ in range(3)
    ]
    updates = [ClientUpdate(client_id="c", round=1, num_examples=3)]
    state = opt.init()
    state, value, metrics = opt.apply(
        state, CohortValue(updates=updates, aggregate=deltas[0]), PLAN
    )
    assert value.updates is updates and set(value.aggregate) == {"a", "b"}
    assert metrics["step_norm"] > 0 and metrics["delta_norm"] > 0

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=True)

    for delta in deltas[1:]:
        state, v1, _ = opt.apply(state, CohortValue(updates=[], aggregate=delta), PLAN)
        restored, v2, _ = opt.apply(restored, CohortValue(updates=[], aggregate=delta), PLAN)
        for k in delta:
            assert torch.equal(v1.aggregate[k], v2.aggregate[k])
    assert state["steps"] == restored["steps"] == 3


@pytest.mark.parametrize("name", SERVER_OPTIMIZERS.names())
def test_step_keeps_delta_dtype(name: str):
    opt = SERVER_OPTIMIZERS.create(name)
    delta = {"w": torch.tensor([0.5, -0.25], dtype=torch.bfloat16)}
    state, value, _ = opt.apply(opt.init(), CohortValue(updates=[], aggregate=delta), PLAN)
    assert value.aggregate["w"].dtype == torch.bfloat16
    assert all(m.dtype == torch.float32 for m in state["m"].values())


def test_missing_aggregate_is_a_pipeline_error():
    with pytest.raises(PipelineError, match="aggregate stage"):
        FedAvg().apply(FedAvg().init(), CohortValue(updates=[]), PLAN)


def test_changed_tensor_set_is_a_protocol_error():
    opt = FedAdam()
    state, _ = run(opt, [[1.0, 2.0]])
    with pytest.raises(ProtocolError, match="new in delta"):
        opt.apply(state, CohortValue(updates=[], aggregate={"other": torch.zeros(2)}), PLAN)
    with pytest.raises(ProtocolError, match="shape"):
        opt.apply(state, CohortValue(updates=[], aggregate={"w": torch.zeros(3)}), PLAN)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (FedAvg, {"lr": 0.0}),
        (FedAvgM, {"momentum": 1.0}),
        (FedYogi, {"tau": -1.0}),
        (FedAdagrad, {"beta1": 1.5}),
        (OuterNesterov, {"lr": -0.1}),
    ],
)
def test_bad_hyperparameters_raise(cls, kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        cls(**kwargs)


# ------------------------------------------------------------- config


def test_config_names_match_registry():
    assert sorted(SERVER_OPT_FIELDS) == SERVER_OPTIMIZERS.names()


def test_config_builds_optimizer_with_defaults_for_unset_fields():
    opt = server_optimizer_from_config(ServerOptConfig(name="fedyogi", lr=0.05, tau=1e-2))
    assert isinstance(opt, FedYogi)
    assert (opt.lr, opt.tau, opt.beta1, opt.beta2) == (0.05, 1e-2, 0.9, 0.99)
    assert isinstance(server_optimizer_from_config(ServerOptConfig()), FedAvg)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "sgd"}, "unknown"),
        ({"lr": 0.0}, "lr"),
        ({"name": "fedadam", "beta2": 1.0}, "beta2"),
        ({"name": "fedavgm", "momentum": -0.1}, "momentum"),
        ({"name": "fedavg", "momentum": 0.9}, "does not read"),
        ({"name": "fedadagrad", "beta2": 0.9}, "does not read"),
        ({"name": "fedavg", "extra": 1}, "extra"),
    ],
)
def test_config_rejects(kwargs, match):
    with pytest.raises(pydantic.ValidationError, match=match):
        ServerOptConfig(**kwargs)


def test_config_is_frozen_and_torch_free():
    cfg = ServerOptConfig(name="nesterov")
    with pytest.raises(pydantic.ValidationError):
        cfg.lr = 0.1  # type: ignore[misc]
    code = "import sys, fedlm.config.server_opt; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
