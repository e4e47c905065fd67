import dataclasses
import io

import pytest
import torch

from fedlm.attacks.selection import COLLUDERS, stable_seed
from fedlm.attacks.stages import (
    ATTACKS,
    GaussianStage,
    LargeNormStage,
    ModelReplacementStage,
    NaNStage,
    SignFlipStage,
    attack_stages,
    collude_updates,
)
from fedlm.compression.codecs import CODECS
from fedlm.compression.stages import EncodeStage
from fedlm.config.attacks import AttackConfig
from fedlm.errors import ConfigError, PipelineError
from fedlm.privacy.stages import ClipStage
from fedlm.stages import CLIENT_ORDER, ClientUpdate, Pipeline, RoundPlan, Stage

BAD = frozenset({"b"})
PLAN = RoundPlan(round=1, cohort=("a", "b", "c", "d"), lr=0.1, local_steps=1, seed=11)


def _update(cid, w=(3.0, 4.0)):
    return ClientUpdate(
        client_id=cid,
        round=1,
        num_examples=5,
        tensors={"w": torch.tensor(w), "b": torch.tensor([[0.0, 0.0]])},
    )


def _gen(stage_name, seed, who):
    return torch.Generator().manual_seed(stable_seed(stage_name, seed, PLAN.seed, who))


# (stage, expected "w" for the malicious client given w = [3, 4], b = [[0, 0]])
CASES = [
    (ModelReplacementStage(malicious=BAD, server_lr=2.0), torch.tensor([6.0, 8.0])),  # 4 / 2 = 2
    (ModelReplacementStage(malicious=BAD, boost=5.0), torch.tensor([15.0, 20.0])),
    (SignFlipStage(malicious=BAD), torch.tensor([-3.0, -4.0])),
    (SignFlipStage(malicious=BAD, s=0.5), torch.tensor([-1.5, -2.0])),
    (LargeNormStage(malicious=BAD, norm=10.0), torch.tensor([6.0, 8.0])),  # ||delta|| = 5
]


@pytest.mark.parametrize(("stage", "expected_w"), CASES)
def test_deterministic_attacks_follow_their_formula(stage, expected_w):
    _, out, metrics = stage.apply(stage.init(), _update("b"), PLAN)
    assert torch.equal(out.tensors["w"], expected_w)
    assert metrics["malicious"] == 1.0 and metrics["norm_before"] == 5.0
    assert metrics["norm_after"] == pytest.approx(float(expected_w.norm()))


def test_gaussian_stage_draws_from_plan_seed_and_client_id():
    stage = GaussianStage(malicious=BAD, std=2.0, seed=3)
    _, out, _ = stage.apply(None, _update("b"), PLAN)
    g = _gen(stage.name, 3, "b")
    expect_b = torch.randn((1, 2), generator=g) * 2.0
    expect_w = torch.randn((2,), generator=g) * 2.0
    assert torch.equal(out.tensors["b"], expect_b) and torch.equal(out.tensors["w"], expect_w)
    _, added, _ = GaussianStage(malicious=BAD, std=2.0, seed=3, mode="add").apply(
        None, _update("b"), PLAN
    )
    assert torch.equal(added.tensors["w"], torch.tensor([3.0, 4.0]) + expect_w)


def test_nan_stage_produces_nan():
    _, out, metrics = NaNStage(malicious=BAD).apply(None, _update("b"), PLAN)
    assert out.tensors["w"].isnan().all() and out.tensors["b"].isnan().all()
    assert metrics["nan_entries"] == 4.0
    _, half, _ = NaNStage(malicious=BAD, fraction=0.5).apply(None, _update("b"), PLAN)
    assert int(half.tensors["w"].isnan().sum()) == 1


ALL = [s for s, _ in CASES] + [GaussianStage(malicious=BAD), NaNStage(malicious=BAD)]


@pytest.mark.parametrize("stage", ALL, ids=lambda s: s.name)
def test_honest_clients_pass_through_bit_identical(stage):
    for cid in ("a", "c", "d"):
        before = _update(cid)
        snapshot = {k: t.clone() for k, t in before.tensors.items()}
        _, out, metrics = stage.apply(stage.init(), before, PLAN)
        assert out is before and metrics == {"malicious": 0.0}
        for k, t in snapshot.items():
            assert torch.equal(out.tensors[k], t) and out.tensors[k].dtype == t.dtype


@pytest.mark.parametrize("stage", ALL, ids=lambda s: s.name)
def test_every_attack_stage_meets_the_contract(stage):
    assert isinstance(stage, Stage)
    assert stage.kind == "transform" and stage.name.startswith("attack_")
    state = stage.init()
    torch.save(state, io.BytesIO())
    with pytest.raises(dataclasses.FrozenInstanceError):
        stage.malicious = frozenset()  # type: ignore[misc]
    Pipeline(
        [stage, ClipStage(clip_norm=1.0), EncodeStage(CODECS.create("fp32"))],
        order=CLIENT_ORDER,
        side="client",
    )
    pipe = Pipeline([stage], order=CLIENT_ORDER, side="client")
    _, out, metrics = pipe.apply(pipe.init(), _update("b"), PLAN)
    assert metrics[stage.name]["malicious"] == 1.0 and not torch.equal(
        out.tensors["w"], _update("b").tensors["w"]
    )
    with pytest.raises(PipelineError, match="order"):
        Pipeline([ClipStage(clip_norm=1.0), stage], order=CLIENT_ORDER, side="client")
    # An attack after encode has only bytes to work on: a clear error, not a silent no-op.
    encoded = dataclasses.replace(_update("b"), tensors=None, payload=b"x")
    with pytest.raises(PipelineError, match="before any encode"):
        stage.apply(state, encoded, PLAN)


def test_colluders_share_random_draws():
    both = frozenset({"b", "c"})
    for cls in (GaussianStage, NaNStage):
        kw = {"fraction": 0.5} if cls is NaNStage else {}
        col = cls(malicious=both, colluding=True, **kw)
        _, ub, _ = col.apply(None, _update("b"), PLAN)
        _, uc, _ = col.apply(None, _update("c"), PLAN)
        assert torch.equal(ub.tensors["w"].isnan(), uc.tensors["w"].isnan())
        assert torch.equal(torch.nan_to_num(ub.tensors["w"]), torch.nan_to_num(uc.tensors["w"]))
    g = _gen("attack_gaussian", 0, COLLUDERS)
    torch.randn((1, 2), generator=g)
    _, ub, _ = GaussianStage(malicious=both, colluding=True).apply(None, _update("b"), PLAN)
    assert torch.equal(ub.tensors["w"], torch.randn((2,), generator=g))
    alone = GaussianStage(malicious=both)
    _, ub, _ = alone.apply(None, _update("b"), PLAN)
    _, uc, _ = alone.apply(None, _update("c"), PLAN)
    assert not torch.equal(ub.tensors["w"], uc.tensors["w"])


def test_collude_updates_sends_the_mean_to_every_colluder():
    ups = [_update("a", (9.0, 9.0)), _update("b", (1.0, 3.0)), _update("c", (3.0, 5.0))]
    out = collude_updates(ups, frozenset({"b", "c"}))
    assert out[0] is ups[0]
    for u in out[1:]:
        assert torch.equal(u.tensors["w"], torch.tensor([2.0, 4.0]))
    assert torch.equal(ups[1].tensors["w"], torch.tensor([1.0, 3.0]))  # inputs untouched


def test_attack_stages_from_config():
    ids = [f"c{i}" for i in range(10)]
    assert attack_stages(AttackConfig(), ids) == []
    assert attack_stages(AttackConfig(kind="backdoor", fraction=0.2), ids) == []
    (mr,) = attack_stages(
        AttackConfig(kind="model_replacement", fraction=0.2, seed=1), ids, server_lr=0.5
    )
    assert isinstance(mr, ModelReplacementStage) and len(mr.malicious) == 2
    assert mr.server_lr == 0.5 and mr.gamma(PLAN) == 8.0  # 4 / 0.5
    (mr2,) = attack_stages(
        AttackConfig(kind="model_replacement", client_ids=("c1",), server_lr=2.0), ids
    )
    assert mr2.server_lr == 2.0 and mr2.malicious == frozenset({"c1"})
    (gs,) = attack_stages(
        AttackConfig(
            kind="gaussian", client_ids=("c1",), noise_std=0.3, noise_mode="add", colluding=True
        ),
        ids,
    )
    assert (gs.std, gs.mode, gs.colluding) == (0.3, "add", True)
    (ln,) = attack_stages(AttackConfig(kind="large_norm", client_ids=("c1",)), ids)
    assert ln.norm == LargeNormStage.norm  # unset config value -> the stage's default
    assert sorted(ATTACKS.names()) == [
        "gaussian",
        "large_norm",
        "model_replacement",
        "nan",
        "sign_flip",
    ]


def test_stage_arguments_are_checked():
    with pytest.raises(ConfigError, match="frozenset"):
        SignFlipStage(malicious={"b"})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="mode"):
        GaussianStage(malicious=BAD, mode="mul")
    with pytest.raises(ConfigError, match="norm"):
        LargeNormStage(malicious=BAD, norm=0.0)
    with pytest.raises(ConfigError, match="fraction"):
        NaNStage(malicious=BAD, fraction=0.0)
    with pytest.raises(ConfigError, match="server_lr"):
        ModelReplacementStage(malicious=BAD, server_lr=0.0)


def test_model_replacement_makes_the_average_equal_the_attackers_model():
    # Bagdasaryan et al. 2020: honest deltas ~ 0 near convergence; with gamma = n / eta the
    # server step eta * mean(deltas) equals the attacker's own delta X - G.
    from fedlm.aggregation.fedavg import WeightedMean
    from fedlm.stages import CohortValue

    eta = 0.5
    stage = ModelReplacementStage(malicious=BAD, server_lr=eta)
    ups = [
        ClientUpdate(
            client_id=c,
            round=1,
            num_examples=5,
            tensors={"w": torch.zeros(2), "b": torch.zeros(1, 2)},
        )
        for c in PLAN.cohort
    ]
    ups[1] = _update("b")
    sent = [stage.apply(None, u, PLAN)[1] for u in ups]
    _, agg, _ = WeightedMean(weighting="uniform").apply(None, CohortValue(updates=sent), PLAN)
    step = {k: eta * v for k, v in agg.aggregate.items()}
    assert torch.allclose(step["w"], torch.tensor([3.0, 4.0]))
    assert torch.equal(step["b"], torch.zeros(1, 2))


def test_attack_rounds_limit_the_attack_and_leave_other_rounds_untouched():
    stage = ModelReplacementStage(malicious=BAD, boost=5.0, rounds=frozenset({2}))
    update = _update("b")
    _, same, metrics = stage.apply(stage.init(), update, PLAN)  # PLAN.round == 1: bide time
    assert same is update and metrics == {"malicious": 1.0}
    _, boosted, _ = stage.apply(stage.init(), update, dataclasses.replace(PLAN, round=2))
    assert torch.equal(boosted.tensors["w"], torch.tensor([15.0, 20.0]))


def test_attack_stages_pass_the_configured_rounds():
    cfg = AttackConfig(kind="sign_flip", client_ids=("b",), rounds=(3, 5))
    (stage,) = attack_stages(cfg, ["a", "b"])
    assert stage.rounds == frozenset({3, 5})
