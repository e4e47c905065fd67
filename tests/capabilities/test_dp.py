"""Client-level DP inside `fedlm run`: accounting per round, budget, sampling, weighting."""

import json
import math
from types import SimpleNamespace

import dp_accounting as dpa
import numpy as np
import pytest
import torch
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from tests_support import run_crashing_in_round, tiny_overrides, write_lm_jsonl
from transformers import AutoModelForCausalLM

from fedlm.aggregation.fedavg import FixedDenominator
from fedlm.capabilities.dp import DifferentialPrivacy
from fedlm.commands.experiment import run_experiment
from fedlm.config import load_config
from fedlm.errors import ConfigError
from fedlm.models.loading import load_base_model
from fedlm.privacy import sampling as secret
from fedlm.privacy.records import PrivateRounds
from fedlm.privacy.stages import DpMeanStage, DpRound
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan

N_CLIENTS = 12
SECURE = {"secure_aggregation.enabled": "true", "secure_aggregation.clip_range": 0.5, "secure_aggregation.seed": 5,
          "federation.weighting": "uniform"}


@pytest.fixture
def many_clients(tmp_path):
    return write_lm_jsonl(tmp_path / "many.jsonl", clients=N_CLIENTS, rows=6)


def _dp(data, **extra):
    base = {
        "privacy.enabled": "true", "privacy.delta": 1e-3, "privacy.noise_seed": 1,
        "output.report": "false", "eval.max_clients": 1, "federation.local_steps": 1,
    }
    return load_config(None, tiny_overrides(data, **{**base, **extra}))


def _records(run_dir, kind="round"):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == kind]


def _private(run_dir):
    """The full round records, cohorts and per-client metrics included (private/rounds.jsonl)."""
    return PrivateRounds(run_dir).read()


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_epsilon_each_round_equals_dp_accounting_called_directly(many_clients, tmp_path, accountant):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.accountant": accountant})
    summary = run_experiment(cfg, out_dir=tmp_path / accountant).summary
    q = 3 / N_CLIENTS  # clients_per_round / N
    for r, rec in enumerate(_records(tmp_path / accountant), start=1):
        ref = PLDAccountant() if accountant == "pld" else RdpAccountant()
        ref.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(1.0)), r))
        assert rec["privacy"]["epsilon"] == pytest.approx(ref.get_epsilon(1e-3), rel=1e-9)
        assert rec["privacy"]["rounds_accounted"] == r
    p = summary["privacy"]
    assert p["accountant"] == accountant and p["delta"] == 1e-3 and p["noise_multiplier"] == 1.0
    assert p["epsilon"] == pytest.approx(_records(tmp_path / accountant)[-1]["privacy"]["epsilon"])
    assert p["epsilon_by_accountant"]["pld"] < p["epsilon_by_accountant"]["rdp"]  # PLD is tighter


def test_target_epsilon_calibrates_z_and_lands_at_or_just_under_it(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.target_epsilon": 6.0})
    p = run_experiment(cfg, out_dir=tmp_path / "cal").summary["privacy"]
    assert p["noise_multiplier_source"] == "calibrated" and p["rounds_accounted"] == 2
    assert 6.0 * 0.99 <= p["epsilon"] <= 6.0


def test_budget_stop_ends_cleanly_saves_the_adapter_and_records_why(many_clients, tmp_path):
    # z = 1, q = 0.5: epsilon is 2.69 after round 1 and 3.75 after round 2 (RDP, delta 1e-3)
    cfg = _dp(many_clients, **{
        "privacy.noise_multiplier": 1.0, "privacy.target_epsilon": 3.0, "privacy.on_budget_exhausted": "stop",
        "federation.clients_per_round": 6, "federation.rounds": 4,
    })
    run = run_experiment(cfg, out_dir=tmp_path / "stop")
    p = run.summary["privacy"]
    assert run.summary["rounds_completed"] == 1
    assert p["stopped_early"] and "round 2 would take epsilon" in p["stop_reason"]
    assert p["epsilon"] == pytest.approx(2.6865, rel=1e-3) and p["epsilon"] <= 3.0
    assert (run.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_poisson_cohorts_vary_and_fixed_cohorts_have_k_clients(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "federation.rounds": 3})
    run_experiment(cfg, out_dir=tmp_path / "poisson")
    fixed = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.sampling": "fixed", "federation.rounds": 1})
    run_experiment(fixed, out_dir=tmp_path / "fixed")
    assert [len(r["cohort"]) for r in _private(tmp_path / "fixed")] == [3]
    assert [r["cohort_size"] for r in _records(tmp_path / "fixed")] == [3]  # metrics.jsonl: the size only
    ref = RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    ref.compose(dpa.SampledWithoutReplacementDpEvent(N_CLIENTS, 3, dpa.GaussianDpEvent(0.5)))
    assert _records(tmp_path / "fixed")[0]["privacy"]["epsilon"] == pytest.approx(ref.get_epsilon(1e-3))
    # Poisson: the cohort is whoever drew u < q; the private record says who took part
    for rec in _private(tmp_path / "poisson"):
        assert set(rec["cohort"]) == set(rec["clients"])


def test_poisson_cohort_has_rate_q():
    class Stub(DifferentialPrivacy):
        def __init__(self):
            self.client_level = True
            self.config = load_config(None, ["privacy.enabled=true", "privacy.noise_multiplier=1.0"])
            self.plan = SimpleNamespace(sample_rate=0.1)
            self._key, self.run_dir, self._next_round = None, None, 1

    stub, rng = Stub(), np.random.default_rng(0)
    ids = [f"c{i}" for i in range(1000)]
    sizes = []
    for r in range(200):  # the engine's generator is not used: the secret key draws each round
        stub.adopt(SimpleNamespace(round=r))
        sizes.append(len(stub.choose_cohort(rng, ids, ())))
    assert np.mean(sizes) == pytest.approx(100, abs=2)  # std of the mean: sqrt(90/200) = 0.67
    assert np.std(sizes) == pytest.approx(math.sqrt(90), rel=0.2)


def test_updates_are_clipped_and_the_server_adds_z_c_over_d(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 0.5, "privacy.clip_norm": 0.01,
                               "federation.rounds": 1, "privacy.sampling": "fixed"})
    run_experiment(cfg, out_dir=tmp_path / "clip")
    rec = _private(tmp_path / "clip")[0]
    for m in rec["clients"].values():
        assert m["dp_clip.clip_norm"] == 0.01 and m["dp_clip.pre_clip_norm"] > 0.01  # every update was clipped
    noise = rec["server"]["dp_noise"]
    assert noise["noise_std"] == pytest.approx(0.5 * 0.01 / 3)  # z C / D, D = 3 expected clients
    assert rec["server"]["dp_mean"]["denominator"] == 3.0


@pytest.mark.parametrize("mode", ["distributed", "ddgauss", "skellam"])
def test_distributed_noise_without_secure_aggregation_is_refused_before_training(many_clients, tmp_path, mode):
    # Each client's share is z C / sqrt(k): without SecAgg+ the server would see every update
    # with that little noise, and the reported epsilon would not hold against it.
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.mode": mode, "federation.weighting": "uniform"})
    with pytest.raises(ConfigError, match=r"needs secure_aggregation\.enabled=true"):
        run_experiment(cfg, out_dir=tmp_path / "dist")
    assert not (tmp_path / "dist" / "metrics.jsonl").exists()


def test_distributed_mode_adds_shares_on_clients_and_no_server_noise(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.mode": "distributed",
                               "privacy.sampling": "fixed", "federation.rounds": 1, **SECURE})
    run_experiment(cfg, out_dir=tmp_path / "dist")
    rec = _private(tmp_path / "dist")[0]
    margin = run_summary(tmp_path / "dist")["privacy"]["encoding_margin"]
    for m in rec["clients"].values():  # z (C + margin) / sqrt(k): the share covers SecAgg+'s rounding
        assert m["dp_noise_share.noise_std"] == pytest.approx(1.0 * (1.0 + margin) / math.sqrt(3))
    assert "dp_noise" not in rec["server"] and "secagg" in rec["server"]


def run_summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def _update(cid, value, n):
    return ClientUpdate(client_id=cid, round=1, num_examples=n, tensors={"w": torch.tensor(value)})


def test_dp_mean_divides_by_the_public_denominator_with_uniform_or_capped_weights():
    plan = RoundPlan(round=1, cohort=("a", "b"), lr=0.1, local_steps=1, seed=0).with_fields(
        DpRound(clip_norm=1.0, expected_cohort_size=2.0), FixedDenominator(4.0))
    value = CohortValue(updates=[_update("a", [3.0, 4.0], 10), _update("b", [0.3, 0.4], 1)])
    _, out, m = DpMeanStage(clip_norm=1.0).apply(None, value, plan)
    # a is clipped from norm 5 to 1: (0.6, 0.8); b is kept; the sum over D = 4 (not 2)
    assert torch.allclose(out.aggregate["w"], torch.tensor([0.9, 1.2]) / 4, atol=1e-5)
    assert m["reclipped"] == 1
    value = CohortValue(updates=[_update("a", [3.0, 4.0], 10), _update("b", [0.3, 0.4], 1)])
    _, out, m = DpMeanStage(clip_norm=1.0, weighting="capped", max_weight=2.0).apply(None, value, plan)
    # weights min(n, 2) = 2 and 1
    assert torch.allclose(out.aggregate["w"], (2 * torch.tensor([0.6, 0.8]) + torch.tensor([0.3, 0.4])) / 4, atol=1e-5)
    assert m["total_weight"] == 3.0


def test_capped_weighting_uses_the_expected_total_weight(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.weighting": "capped",
                               "privacy.max_weight": 2, "federation.rounds": 1})
    p = run_experiment(cfg, out_dir=tmp_path / "capped").summary["privacy"]
    # every tiny client has >= 2 training examples, so D = q * N * 2 = 3 * 2
    assert p["denominator"] == pytest.approx(6.0) and p["sensitivity"] == 2.0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"privacy.noise_multiplier": 1.0, "privacy.delta": 0.1}, "below 1/num_clients"),
        # even z = 1000 spends epsilon 0.24 in 10,000 rounds without amplification
        ({"privacy.target_epsilon": 0.1, "privacy.sampling": "none", "federation.rounds": 10000}, "unreachable"),
    ],
)
def test_invalid_settings_fail_before_training(many_clients, tmp_path, extra, needle):
    with pytest.raises(ConfigError, match=needle):
        run_experiment(_dp(many_clients, **extra), out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["privacy.enabled=true", "privacy.noise_multiplier=1", "privacy.delta=0.05"], "below 1/num_clients"),
        (["privacy.enabled=true", "privacy.noise_multiplier=0"], "noise_multiplier"),
        (["privacy.enabled=true", "privacy.noise_multiplier=-1"], "noise_multiplier"),
        (["privacy.enabled=true", "privacy.noise_multiplier=1", "robust.aggregator=median",
          "federation.clients_per_round=5"], "robust.aggregator='fedavg'"),
        (["audit.enabled=true", "audit.canaries=2", "data.format=instruction"], "data.format='lm'"),
    ],
)
def test_config_rejects_impossible_privacy_settings(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, overrides)


def test_resume_continues_the_privacy_ledger(many_clients, tmp_path, monkeypatch):
    from fedlm.commands.experiment import resume_experiment

    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "federation.rounds": 3})
    full = run_experiment(cfg, out_dir=tmp_path / "full").summary["privacy"]
    run_crashing_in_round(cfg, tmp_path / "crashed", monkeypatch, at_round=3)
    resumed = resume_experiment(tmp_path / "crashed").summary["privacy"]
    assert resumed["rounds_accounted"] == 3
    assert resumed["epsilon"] == pytest.approx(full["epsilon"], rel=1e-12)
    # The secret key came back from the checkpoint: round 3's cohort is the one the key draws.
    key = secret.load_key(tmp_path / "crashed")
    cohorts = [tuple(r["cohort"]) for r in _private(tmp_path / "crashed")]
    ids = sorted(f"c{i}" for i in range(N_CLIENTS))
    assert cohorts == [secret.poisson_cohort(key, r, ids, 3 / N_CLIENTS) for r in (1, 2, 3)]


def test_dp_sgd_run_reports_each_clients_opacus_epsilon(many_clients, tmp_path):
    from opacus.accountants import RDPAccountant

    cfg = _dp(many_clients, **{"privacy.enabled": "false", "privacy.dp_sgd.enabled": "true",
                               "privacy.dp_sgd.noise_multiplier": 1.3, "federation.rounds": 2})
    run = run_experiment(cfg, out_dir=tmp_path / "dpsgd")
    p = run.summary["privacy"]
    assert p["level"] == "sample" and p["accountant"] == "opacus-rdp"
    rounds = _records(run.run_dir)
    taken = {}
    for rec in rounds:
        for cid, m in rec["clients"].items():
            taken[cid] = taken.get(cid, 0) + m["steps"]
    assert set(p["dp_sgd"]["clients"]) == set(taken)
    from fedlm.commands.experiment import prepare

    _, data = prepare(cfg)
    for cid, info in p["dp_sgd"]["clients"].items():
        ref = RDPAccountant()
        ref.history = [(1.3, min(1.0, 2 / len(data.clients[cid].train)), taken[cid])]  # batch 2
        assert info["steps"] == taken[cid]
        assert info["epsilon"] == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)
    assert p["epsilon"] == max(i["epsilon"] for i in p["dp_sgd"]["clients"].values())


def test_resume_refuses_a_recalibrated_noise_multiplier(many_clients, tmp_path):
    from fedlm.commands.experiment import resume_experiment

    cfg = _dp(many_clients, **{"privacy.target_epsilon": 6.0, "federation.rounds": 1})
    run = run_experiment(cfg, out_dir=tmp_path / "cal1").run_dir
    with pytest.raises(ConfigError, match=r"original federation\.rounds"):
        resume_experiment(run, overrides=["federation.rounds=3"])


def _text_of(run_dir):
    return {name: (run_dir / name).read_text() for name in ("config.yaml", "metrics.jsonl", "summary.json")}


def test_two_runs_that_differ_only_in_the_secret_key_sample_different_cohorts(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "federation.rounds": 3})
    for name in ("a", "b"):
        run_experiment(cfg, out_dir=tmp_path / name)
    keys = [secret.load_key(tmp_path / n) for n in ("a", "b")]
    cohorts = [[r["cohort"] for r in _private(tmp_path / n)] for n in ("a", "b")]
    assert keys[0] != keys[1] and cohorts[0] != cohorts[1]
    ids = sorted(f"c{i}" for i in range(N_CLIENTS))
    assert [tuple(c) for c in cohorts[0]] == [secret.poisson_cohort(keys[0], r, ids, 0.25) for r in (1, 2, 3)]
    # The key is in the run directory (0600) and the checkpoint, never in config.yaml or metrics.jsonl;
    # metrics.jsonl holds no client id of any cohort and no per-client value.
    run = tmp_path / "a"
    assert oct((run / "private" / secret.KEY_FILE).stat().st_mode & 0o777) == "0o600"
    outputs = _text_of(run)
    assert all(keys[0].hex() not in text for text in outputs.values())
    assert keys[0].hex() in "".join(p.read_text() for p in (run / "checkpoints").rglob("state.json"))
    for rec in _records(run):
        assert rec["cohort"] == [] and set(rec["clients"]) <= {"cohort_mean"}
        assert not any(f'"{cid}"' in json.dumps(rec) for cid in ids)


def test_public_sampling_key_reports_epsilon_without_amplification(many_clients, tmp_path):
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.sampling_key": "public"})
    p = run_experiment(cfg, out_dir=tmp_path / "public").summary["privacy"]
    ref = RdpAccountant()
    ref.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.0), 2))  # no PoissonSampledDpEvent around it
    assert p["epsilon"] == pytest.approx(ref.get_epsilon(1e-3), rel=1e-9)
    assert p["amplified"] is False and any("sampling_key=public" in c for c in p["caveats"])
    assert any("noise_seed=1 is set" in c for c in p["caveats"])  # a noise seed in config.yaml is public too
    amplified = RdpAccountant()
    amplified.compose(dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.25, dpa.GaussianDpEvent(1.0)), 2))
    assert p["epsilon"] > 2 * amplified.get_epsilon(1e-3)
    # Public cohorts are reproducible from config.yaml: a second run draws the same ones.
    run_experiment(cfg, out_dir=tmp_path / "again")
    assert [r["cohort"] for r in _private(tmp_path / "public")] == [r["cohort"] for r in _private(tmp_path / "again")]


@pytest.mark.parametrize("mode", ["distributed", "ddgauss"])
def test_with_dropouts_the_reported_epsilon_is_at_least_the_survivors_noise(tmp_path, mode):
    # 40% of a 10-client cohort go silent before the masked-input upload (corrupt_fraction 0: t = 5 of 9).
    data = write_lm_jsonl(tmp_path / "ten.jsonl", clients=10, rows=4)
    cfg = _dp(data, **{"privacy.noise_multiplier": 1.0, "privacy.mode": mode, "privacy.sampling": "none",
                       "federation.clients_per_round": 10, "privacy.delta": 1e-3, **SECURE,
                       "secure_aggregation.corrupt_fraction": 0.0, "secure_aggregation.modulus_bits": 24,
                       "secure_aggregation.phase_dropout": '{"masked_input": 0.4}',
                       "secure_aggregation.bits": 1 if mode == "ddgauss" else 16})
    p = run_experiment(cfg, out_dir=tmp_path / mode).summary["privacy"]
    rounds = _private(tmp_path / mode)
    survivors = [r["server"]["secagg"]["survivors"] for r in rounds]
    assert survivors == [6, 6]
    if mode == "distributed":  # Gaussian shares of std z S / sqrt(10): six of them hold z sqrt(6/10)
        ref = RdpAccountant()
        ref.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(math.sqrt(0.6)), 2))
        recomputed = ref.get_epsilon(1e-3)
        planned = RdpAccountant()
        planned.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.0), 2))
        assert p["epsilon"] > planned.get_epsilon(1e-3)  # what the run claimed before this was priced in
    else:  # the discrete noise of 6 of 10 shares
        from fedlm.privacy.distributed.accounting import distributed_epsilon

        d = p["distributed"]
        recomputed = distributed_epsilon("ddgauss", clip=1.0, gamma=d["gamma"], noise_stddev=d["noise_stddev"] * math.sqrt(0.6),
                                         num_clients=6, dim=d["dim"], beta=d["beta"], delta=1e-3, rounds=2)
    assert p["epsilon"] >= recomputed * (1 - 1e-9)
    assert [r["privacy"]["noise_shares"] for r in rounds] == [{"planned": 10, "in_sum": 6}] * 2


def test_dp_sgd_noise_and_batches_are_seeded_from_the_secret_key_not_federation_seed():
    from fedlm.client.local import TrainOptions

    cfg = load_config(None, ["privacy.dp_sgd.enabled=true"])
    data = SimpleNamespace(clients={"a": SimpleNamespace(train=[0] * 8), "b": SimpleNamespace(train=[0] * 4)})
    caps = [DifferentialPrivacy(cfg, data, shapes={"w": (3,)}) for _ in range(2)]
    plan = RoundPlan(round=2, cohort=("a",), lr=0.1, local_steps=1, seed=7)
    engine = TrainOptions(steps=1, batch_size=2, lr=0.1, num_examples=8, seed=12345)
    seeds = [cap.train_options(plan, "a", engine, {}).seed for cap in caps]
    assert 12345 not in seeds and seeds[0] != seeds[1]  # each run's own secret
    assert caps[0].train_options(plan, "a", engine, {}).seed == seeds[0]  # and fixed within a run (resume)


@pytest.mark.parametrize("mode", ["central", "ddgauss", "skellam"])
def test_the_noise_a_run_leaves_in_the_model_is_the_accounted_noise(many_clients, tmp_path, mode):
    # Local lr 1e-30 makes every update ~0, so after R rounds of FedAvg (server lr 1) the model
    # moved by R independent draws of the noise in the mean: std z C / k sqrt(R) per weight.
    # Catches noise added twice, a wrong denominator or scale in decoding, and noise reused
    # across rounds (that would grow as R, not sqrt(R)). ~90k weights: the std is known to 0.3%.
    rounds, k = 3, N_CLIENTS  # every client in every round: the discrete mechanisms refuse fixed cohorts
    extra = {"privacy.mode": mode, **SECURE, "secure_aggregation.modulus_bits": 24, "secure_aggregation.bits": 1,
             "secure_aggregation.corrupt_fraction": 0.0} if mode != "central" else {}
    cfg = _dp(many_clients, **{"privacy.noise_multiplier": 1.0, "privacy.clip_norm": 0.1, "privacy.sampling": "none",
                               "federation.rounds": rounds, "federation.clients_per_round": k, "federation.lr": 1e-30,
                               "lora.enabled": "false", "eval.every": 1000, **extra})
    p = run_experiment(cfg, out_dir=tmp_path / mode).summary["privacy"]
    assert p["noise_multiplier"] == pytest.approx(1.0) and p["denominator"] == k
    init, _ = load_base_model("tiny-llama", seed=cfg.model.seed)
    final = dict(AutoModelForCausalLM.from_pretrained(tmp_path / mode / "model").named_parameters())
    moved = torch.cat([(final[n].detach().double() - w.detach().double()).flatten() for n, w in init.named_parameters()])
    assert moved.numel() > 50_000
    assert moved.std().item() == pytest.approx(1.0 * 0.1 / k * math.sqrt(rounds), rel=0.02)
    assert abs(moved.mean().item()) < 5 * moved.std().item() / math.sqrt(moved.numel())
