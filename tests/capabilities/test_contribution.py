"""Contributions inside a run and after it, on 6 tiny-llama clients.

Four clients have their own vocabulary, ``alpha_dup`` holds exactly ``alpha``'s rows and
``garbage`` holds random bytes. The server validates on the four clean clients' held-out
text, so GTG must rank like exact Shapley, give the duplicate about what the original
gets, and put the garbage client last.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from tests_support import tiny_overrides

from fedlm.cli.main import main
from fedlm.commands.experiment import run_experiment
from fedlm.commands.explain import explain_run
from fedlm.config import load_config
from fedlm.errors import ConfigError, FedlmError
from fedlm.explain.store import load_round

WORDS = {
    "alpha": ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "birds", "sing"],
    "beta": ["to", "be", "or", "not", "to", "be", "that", "is", "the", "question", "whether", "tis", "nobler"],
    "gamma": ["a", "stitch", "in", "time", "saves", "nine", "and", "many", "hands", "make", "light", "work"],
    "delta": ["all", "that", "glitters", "is", "not", "gold", "nor", "all", "who", "wander", "are", "lost"],
}
CLEAN = ["alpha", "beta", "delta", "gamma"]


def write_six_clients(path):
    rng = random.Random(0)
    rows = []
    for name, words in WORDS.items():
        for _ in range(10):
            rows.append({"client": name, "text": " ".join(rng.choice(words) for _ in range(30))})
    rows += [dict(r, client="alpha_dup") for r in rows if r["client"] == "alpha"]
    for _ in range(10):
        rows.append({"client": "garbage", "text": "".join(chr(rng.randint(33, 126)) for _ in range(160))})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def six_client_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("six")
    data = write_six_clients(tmp / "six.jsonl")
    overrides = tiny_overrides(
        data, **{"federation.clients_per_round": 6, "federation.rounds": 2, "federation.local_steps": 4,
                 "federation.lr": 0.02, "federation.weighting": "uniform", "data.heldout_fraction": 0.2,
                 "explain.contribution": "gtg", "explain.keep_updates": "true",
                 "explain.validation_clients": json.dumps(CLEAN), "explain.gtg_epsilon": 0.0,
                 "explain.gtg_max_permutations": 60, "output.report": "false"})
    cfg = load_config(None, overrides)
    result = run_experiment(cfg, out_dir=tmp / "run")
    return result


def pearson(a: dict[str, float], b: dict[str, float]) -> float:
    ids = sorted(a)
    return float(np.corrcoef([a[i] for i in ids], [b[i] for i in ids])[0, 1])


def test_gtg_is_in_metrics_and_summary(six_client_run) -> None:
    run_dir, summary = six_client_run.run_dir, six_client_run.summary
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["type"] == "round"]
    assert len(rounds) == 2
    for r in rounds:
        c = r["contribution"]
        assert c["method"] == "gtg" and set(c["values"]) == set(r["cohort"])
        assert c["evaluations"] >= 2 and c["flagged"] == sorted(
            [k for k, v in c["values"].items() if v < 0], key=c["values"].get)
    con = summary["contribution"]
    assert con["method"] == "gtg" and [p["round"] for p in con["per_round"]] == [1, 2]
    for cid, v in con["cumulative"].items():  # cumulative = sum over rounds
        assert v == pytest.approx(sum(r["contribution"]["values"][cid] for r in rounds))
    assert json.loads((run_dir / "summary.json").read_text())["contribution"]["cumulative"] == con["cumulative"]


def test_stored_round_updates_rebuild_the_round(six_client_run) -> None:
    files = sorted((six_client_run.run_dir / "explain").glob("round_*.safetensors"))
    assert [f.name for f in files] == ["round_0001.safetensors", "round_0002.safetensors"]
    r, global_state, tensors, weights = load_round(files[0])
    assert r == 1 and sorted(tensors) == sorted([*CLEAN, "alpha_dup", "garbage"])
    assert weights == dict.fromkeys(tensors, 1.0)  # federation.weighting=uniform
    assert all(tensors[c].keys() == global_state.keys() for c in tensors)


def test_gtg_correlates_with_exact_and_places_duplicate_and_garbage(six_client_run) -> None:
    run_dir = six_client_run.run_dir
    exact = explain_run(run_dir, method="exact")
    gtg = explain_run(run_dir, method="gtg")
    loo = explain_run(run_dir, method="loo")
    assert exact["evaluations"] == 2 * 2**6  # every coalition of 6, in each of 2 rounds
    assert loo["evaluations"] == 2 * (6 + 1)
    assert pearson(gtg["cumulative"], exact["cumulative"]) >= 0.9
    for e_round, g_round in zip(exact["per_round"], gtg["per_round"], strict=True):
        assert pearson(g_round["values"], e_round["values"]) >= 0.9
    # Shapley's symmetry: the duplicate gets about the original's value (exactly, were the two
    # updates identical; here their batch orders differ); GTG's sampling adds noise.
    for values, slack in ((exact["cumulative"], 0.15), (gtg["cumulative"], 0.4)):
        assert min(values, key=values.get) == "garbage"
        assert values["garbage"] < 0
        spread = max(values.values()) - min(values.values())
        assert abs(values["alpha_dup"] - values["alpha"]) < slack * spread
        assert values["alpha"] > 0 and values["alpha_dup"] > 0
    assert exact["negative"] == gtg["negative"] == ["garbage"]
    # leave-one-out's known failure: each copy is replaceable by the other, so the pair get
    # the two smallest values among the clean clients
    clean_loo = sorted((v, c) for c, v in loo["cumulative"].items() if c != "garbage")
    assert {c for _, c in clean_loo[:2]} == {"alpha", "alpha_dup"}
    # the in-run GTG equals GTG recomputed from the stored updates (same seed, same inputs)
    assert gtg["cumulative"] == pytest.approx(six_client_run.summary["contribution"]["cumulative"], abs=1e-6)
    assert (run_dir / "contribution_exact.json").exists()


def test_cli_explain_contribution(six_client_run, capsys) -> None:
    assert main(["explain", "contribution", str(six_client_run.run_dir), "--method", "loo"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "loo" and set(out["cumulative"]) == {*CLEAN, "alpha_dup", "garbage"}


def test_explain_without_stored_updates_says_how(tmp_path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(FedlmError, match=r"explain\.keep_updates=true"):
        explain_run(tmp_path / "run")


def test_contribution_with_secure_aggregation_is_refused(tmp_path) -> None:
    with pytest.raises((ConfigError, ValueError), match="secure aggregation"):
        load_config(None, tiny_overrides(tmp_path / "x.jsonl", **{
            "explain.contribution": "gtg", "secure_aggregation.enabled": "true",
            "federation.weighting": "uniform"}))


def test_after_the_fact_contributions_reach_summary_and_report(tmp_path) -> None:
    data = write_six_clients(tmp_path / "six.jsonl")
    cfg = load_config(None, tiny_overrides(data, **{
        "federation.clients_per_round": 3, "federation.rounds": 1, "explain.keep_updates": "true"}))
    run_dir = run_experiment(cfg, out_dir=tmp_path / "run").run_dir
    assert json.loads((run_dir / "summary.json").read_text())["contribution"] is None  # off in the run
    out = explain_run(run_dir, method="loo")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["contribution"] == out and out["evaluations"] == 3 + 1
    assert "<h2>Client contribution</h2>" in (run_dir / "report.html").read_text()
