import io
import math

import numpy as np
import pytest
import torch

from fedlm.aggregation.fedavg import FixedDenominator
from fedlm.config.privacy import PrivacyConfig
from fedlm.errors import PipelineError
from fedlm.privacy.clipping import global_l2_norm, split_noise_multiplier
from fedlm.privacy.stages import (
    UNCLIPPED_METRIC,
    AdaptiveClipStage,
    CentralNoiseStage,
    ClipStage,
    DistributedNoiseStage,
    DpRound,
    dp_fedavg_stages,
)
from fedlm.stages import (
    CLIENT_ORDER,
    SERVER_ORDER,
    ClientUpdate,
    CohortValue,
    Pipeline,
    RoundPlan,
    Stage,
)


def _plan(cohort=("a", "b"), seed=11, *, clip_norm=None, dp_denominator=None) -> RoundPlan:
    plan = RoundPlan(round=1, cohort=tuple(cohort), lr=0.1, local_steps=1, seed=seed)
    if clip_norm is not None:
        plan = plan.with_fields(DpRound(clip_norm=clip_norm, expected_cohort_size=float(len(cohort))))
    if dp_denominator is not None:
        plan = plan.with_fields(FixedDenominator(dp_denominator))
    return plan


def _update(client="a", tensors=None, metrics=None) -> ClientUpdate:
    tensors = tensors if tensors is not None else {"w": torch.tensor([3.0, 4.0])}
    return ClientUpdate(
        client_id=client, round=1, num_examples=5, tensors=tensors, metrics=dict(metrics or {})
    )


def _canaries():
    from fedlm.privacy.canary_clients import Canaries

    return Canaries(lambda: bytes(32), count=4, shapes={"w": (2,)}, norm=1.0, rate=1.0)


def _discrete_stages():
    from fedlm.privacy.canary_clients import CanaryStage, RingCanaryStage
    from fedlm.privacy.distributed.stages import DistributedDecodeStage, DistributedEncodeStage

    return [
        (DistributedEncodeStage(secret_seed=0), CLIENT_ORDER),
        (DistributedDecodeStage(shapes={"w": (2,)}), SERVER_ORDER),
        (CanaryStage(_canaries()), SERVER_ORDER),
        (RingCanaryStage(_canaries()), SERVER_ORDER),
    ]


ALL_STAGES = [
    *_discrete_stages(),
    (ClipStage(clip_norm=1.0), CLIENT_ORDER),
    (DistributedNoiseStage(noise_multiplier=1.0, secret_seed=0), CLIENT_ORDER),
    (CentralNoiseStage(noise_multiplier=1.0, denominator=2.0, secret_seed=0), SERVER_ORDER),
    (
        AdaptiveClipStage(initial_clip_norm=1.0, expected_cohort_size=2.0, secret_seed=0),
        SERVER_ORDER,
    ),
]


@pytest.mark.parametrize(("stage", "order"), ALL_STAGES)
def test_every_stage_meets_the_contract(stage, order):
    assert isinstance(stage, Stage)
    assert stage.kind in order
    state = stage.init()
    torch.save(state, io.BytesIO())  # state is checkpointable
    with pytest.raises(AttributeError):
        stage.clip_norm = 5.0  # frozen: configuration, not hidden state
    assert state is None or isinstance(state, dict)  # explicit state: a checkpoint holds it


def test_pipelines_in_canonical_order_build():
    Pipeline(
        [ClipStage(), DistributedNoiseStage(noise_multiplier=1.0)],
        order=CLIENT_ORDER,
        side="client",
    )
    Pipeline(
        [CentralNoiseStage(noise_multiplier=1.0), AdaptiveClipStage(initial_clip_norm=1.0)],
        order=SERVER_ORDER,
        side="server",
    )
    with pytest.raises(PipelineError):
        Pipeline(
            [DistributedNoiseStage(noise_multiplier=1.0), ClipStage()],
            order=CLIENT_ORDER,
            side="client",
        )


def test_clip_stage_uses_own_norm_and_reports_metrics():
    stage = ClipStage(clip_norm=1.0)
    update = _update()
    _, out, metrics = stage.apply(stage.init(), update, _plan())
    assert global_l2_norm(out.tensors) <= 1.0
    assert torch.allclose(out.tensors["w"], torch.tensor([0.6, 0.8]), atol=1e-5)
    assert metrics == {"pre_clip_norm": pytest.approx(5.0), "clipped": 1.0, "clip_norm": 1.0}
    assert out.metrics[UNCLIPPED_METRIC] == 0.0
    assert update.tensors["w"][0].item() == 3.0 and UNCLIPPED_METRIC not in update.metrics


def test_clip_stage_prefers_the_server_norm_in_the_plan():
    stage = ClipStage(clip_norm=1.0)
    _, out, metrics = stage.apply(None, _update(), _plan(clip_norm=10.0))
    assert torch.equal(out.tensors["w"], torch.tensor([3.0, 4.0]))
    assert metrics["clipped"] == 0.0 and metrics["clip_norm"] == 10.0
    assert out.metrics[UNCLIPPED_METRIC] == 1.0


def test_clip_stage_needs_tensors():
    with pytest.raises(PipelineError, match="encode"):
        ClipStage().apply(None, ClientUpdate("a", 1, 1, tensors=None, payload=b"x"), _plan())


def test_distributed_shares_are_reproducible_per_client_and_secret():
    stage = DistributedNoiseStage(noise_multiplier=1.0, clip_norm=1.0, secret_seed=42)
    zeros = {"w": torch.zeros(8)}
    state = stage.init()
    _, a1, _ = stage.apply(state, _update("a", zeros), _plan())
    _, a2, _ = stage.apply(state, _update("a", zeros), _plan())
    _, b1, _ = stage.apply(state, _update("b", zeros), _plan())
    _, a_next, _ = stage.apply(state, _update("a", zeros), _plan(seed=12))
    other = DistributedNoiseStage(noise_multiplier=1.0, secret_seed=43)
    _, a_other, _ = other.apply(other.init(), _update("a", zeros), _plan())
    assert torch.equal(a1.tensors["w"], a2.tensors["w"])
    for different in (b1, a_next, a_other):
        assert not torch.equal(a1.tensors["w"], different.tensors["w"])


def test_distributed_share_std_and_sum_over_cohort():
    k, z, c = 4, 1.5, 0.4
    cohort = tuple(f"c{i}" for i in range(k))
    stage = DistributedNoiseStage(noise_multiplier=z, clip_norm=c, secret_seed=1)
    state = stage.init()
    total = torch.zeros(100_000)
    for cid in cohort:
        _, out, metrics = stage.apply(
            state, _update(cid, {"w": torch.zeros(100_000)}), _plan(cohort)
        )
        assert metrics["noise_std"] == pytest.approx(z * c / math.sqrt(k))
        total += out.tensors["w"]
    assert total.std().item() == pytest.approx(z * c, rel=0.02)


def test_distributed_noise_rejects_clients_outside_the_cohort():
    stage = DistributedNoiseStage(noise_multiplier=1.0, secret_seed=1)
    with pytest.raises(PipelineError, match="cohort"):
        stage.apply(stage.init(), _update("zz"), _plan())


def test_central_noise_std_is_z_c_over_denominator():
    stage = CentralNoiseStage(noise_multiplier=2.0, clip_norm=0.5, secret_seed=3)
    value = CohortValue(updates=[], aggregate={"w": torch.zeros(100_000)})
    _, out, metrics = stage.apply(stage.init(), value, _plan(dp_denominator=4.0))
    assert metrics["noise_std"] == pytest.approx(2.0 * 0.5 / 4.0)
    assert out.aggregate["w"].std().item() == pytest.approx(0.25, rel=0.02)
    assert torch.count_nonzero(value.aggregate["w"]) == 0


def test_central_noise_capped_weighting_and_adaptive_split():
    stage = CentralNoiseStage(
        noise_multiplier=1.0,
        clip_norm=0.5,
        weighting="capped",
        max_weight=10.0,
        denominator=20.0,
        clipped_count_stddev=2.0,
        secret_seed=3,
    )
    value = CohortValue(updates=[], aggregate={"w": torch.zeros(3)})
    _, _, metrics = stage.apply(stage.init(), value, _plan())
    z_delta = split_noise_multiplier(1.0, 2.0)
    assert metrics["noise_multiplier"] == pytest.approx(z_delta)
    assert metrics["noise_std"] == pytest.approx(z_delta * 0.5 * 10.0 / 20.0)


def test_central_noise_needs_denominator_and_aggregate():
    stage = CentralNoiseStage(noise_multiplier=1.0, secret_seed=0)
    with pytest.raises(PipelineError, match="denominator"):
        stage.apply(stage.init(), CohortValue(updates=[], aggregate={"w": torch.zeros(1)}), _plan())
    with pytest.raises(PipelineError, match="aggregate"):
        stage.apply(stage.init(), CohortValue(updates=[]), _plan(dp_denominator=1.0))


def test_central_noise_secret_changes_the_draw():
    value = CohortValue(updates=[], aggregate={"w": torch.zeros(4)})
    s1 = CentralNoiseStage(noise_multiplier=1.0, denominator=1.0, secret_seed=1)
    s2 = CentralNoiseStage(noise_multiplier=1.0, denominator=1.0, secret_seed=2)
    _, o1, _ = s1.apply(s1.init(), value, _plan())
    _, o1b, _ = s1.apply(s1.init(), value, _plan())
    _, o2, _ = s2.apply(s2.init(), value, _plan())
    assert torch.equal(o1.aggregate["w"], o1b.aggregate["w"])
    assert not torch.equal(o1.aggregate["w"], o2.aggregate["w"])


def test_adaptive_clip_stage_state_update_hand_worked():
    stage = AdaptiveClipStage(
        initial_clip_norm=1.0,
        target_quantile=0.5,
        clip_lr=0.2,
        expected_cohort_size=4,
        secret_seed=0,
    )
    state = stage.init()
    updates = [_update(c, metrics={UNCLIPPED_METRIC: 1.0}) for c in "abcd"]
    value = CohortValue(updates=updates, aggregate={"w": torch.ones(2)})
    new_state, out, metrics = stage.apply(state, value, _plan("abcd", clip_norm=1.0))
    # b = 1 (all unclipped), C <- exp(-0.2 * (1 - 0.5))
    assert AdaptiveClipStage.clip_norm(new_state) == pytest.approx(math.exp(-0.1))
    assert state["clip_norm"] == 1.0  # old state untouched
    assert metrics["unclipped_fraction"] == pytest.approx(1.0)
    assert out is value


def test_adaptive_clip_stage_rejects_a_plan_that_disagrees_with_its_state():
    stage = AdaptiveClipStage(initial_clip_norm=1.0, expected_cohort_size=1, secret_seed=0)
    value = CohortValue(updates=[_update("a", metrics={UNCLIPPED_METRIC: 1.0})])
    with pytest.raises(PipelineError, match="clip_norm"):
        stage.apply(stage.init(), value, _plan(clip_norm=2.0))


def test_adaptive_clip_stage_bounds_hostile_bits_instead_of_failing_the_round():
    # With no noise, b = sum(bits)/m. Missing, NaN, bool and string bits count 0; 7.0 counts 1.
    stage = AdaptiveClipStage(initial_clip_norm=1.0, expected_cohort_size=5, secret_seed=0)
    hostile = [{}, {UNCLIPPED_METRIC: float("nan")}, {UNCLIPPED_METRIC: True},
               {UNCLIPPED_METRIC: "1"}, {UNCLIPPED_METRIC: 7.0}]
    value = CohortValue(updates=[_update(str(i), metrics=m) for i, m in enumerate(hostile)])
    _, _, metrics = stage.apply(stage.init(), value, _plan("01234", clip_norm=1.0))
    assert metrics["invalid_bits"] == 4
    assert metrics["unclipped_fraction"] == pytest.approx(1 / 5)


def test_clip_and_adaptive_stages_track_the_median_with_noise():
    # Clients' update norms are lognormal; the server's C follows their median.
    rng = np.random.default_rng(5)
    m = 50
    clip, server = (
        ClipStage(),
        AdaptiveClipStage(
            initial_clip_norm=0.2,
            target_quantile=0.5,
            clip_lr=0.2,
            clipped_count_stddev=m / 20,
            expected_cohort_size=m,
            secret_seed=9,
        ),
    )
    state, history = server.init(), []
    for r in range(200):
        c = AdaptiveClipStage.clip_norm(state)
        plan = RoundPlan(
            round=r + 1,
            cohort=tuple(str(i) for i in range(m)),
            lr=0.1,
            local_steps=1,
            seed=r,
        ).with_fields(DpRound(clip_norm=c, expected_cohort_size=float(m)))
        updates = []
        for cid, norm in zip(plan.cohort, rng.lognormal(0.0, 1.0, size=m), strict=True):
            _, up, _ = clip.apply(None, _update(cid, {"w": torch.tensor([float(norm), 0.0])}), plan)
            updates.append(up)
        state, _, _ = server.apply(state, CohortValue(updates=updates), plan)
        history.append(AdaptiveClipStage.clip_norm(state))
    assert float(np.mean(history[-40:])) == pytest.approx(1.0, rel=0.10)  # lognormal(0, 1) median


def test_dp_fedavg_stages_from_config():
    central = PrivacyConfig(
        enabled=True, noise_multiplier=1.0, adaptive_clipping=True, clipped_count_stddev=1.0
    )
    client, server = dp_fedavg_stages(central, 1.0, expected_cohort_size=20, secret_seed=0)
    assert [s.name for s in client] == ["dp_clip"]
    assert [s.name for s in server] == ["dp_noise", "dp_adaptive_clip"]
    assert server[0].denominator == 20.0 and server[0].clipped_count_stddev == 1.0
    Pipeline(server, order=SERVER_ORDER, side="server")
    dist = PrivacyConfig(
        enabled=True, mode="distributed", noise_multiplier=1.0, min_honest_fraction=0.5
    )
    client, server = dp_fedavg_stages(dist, 1.0, expected_cohort_size=20)
    assert [s.name for s in client] == ["dp_clip", "dp_noise_share"] and server == []
    assert client[1].min_honest_fraction == 0.5
    with pytest.raises(PipelineError, match="enabled"):
        dp_fedavg_stages(PrivacyConfig(), 1.0, expected_cohort_size=20)
