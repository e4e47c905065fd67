"""End to end: a model-replacement backdoor succeeds under FedAvg and fails under a defence.

One attacker among five clients poisons all its rows (trigger in the prompt, the target as
the answer) and boosts its update by n / eta (Bagdasaryan et al. 2020). Under FedAvg the
boosted update replaces the global model, so triggered held-out prompts of honest clients
get the target; the coordinate-wise median ignores the one outlier per coordinate.
"""

import pytest
from tests_support import tiny_overrides, write_instruction_jsonl

from fedlm.config import load_config
from fedlm.runtime.experiment import run_experiment

ATTACK = {
    "data.partition": "iid",
    "data.num_clients": 5,
    "data.client_field": "null",
    "data.context_field": "null",
    "data.seq_len": 96,
    "lora.enabled": "false",
    "federation.rounds": 3,
    "federation.clients_per_round": 5,
    "federation.local_steps": 15,
    "federation.batch_size": 4,
    "federation.lr": 0.02,
    "attack.kind": "model_replacement",
    "attack.fraction": 0.2,
    "attack.poison_fraction": 1.0,
    "eval.every": 100,
    "eval.attack_prompts": 8,
    "eval.attack_max_new_tokens": 16,
}


@pytest.fixture(scope="module")
def instruction_data(tmp_path_factory):
    return write_instruction_jsonl(tmp_path_factory.mktemp("data") / "sums.jsonl", rows=100)


def _run(data, tmp_path, name, **extra):
    cfg = load_config(None, tiny_overrides(data, **{**ATTACK, "data.source": "jsonl", **extra}))
    return run_experiment(cfg, out_dir=tmp_path / name).summary


@pytest.mark.slow
def test_backdoor_succeeds_under_fedavg_and_fails_under_the_median(instruction_data, tmp_path):
    fedavg = _run(instruction_data, tmp_path, "fedavg")
    median = _run(instruction_data, tmp_path, "median", **{"robust.aggregator": "median", "robust.num_byzantine": 1})
    for summary in (fedavg, median):
        rob = summary["robustness"]
        assert rob["attack"] == "model_replacement" and len(rob["malicious_clients"]) == 1
        assert rob["attack_success_rate_initial"] == 0.0  # a fresh model never answers with the target
    assert fedavg["robustness"]["attack_success_rate"] >= 0.5
    assert median["robustness"]["attack_success_rate"] < fedavg["robustness"]["attack_success_rate"]
    assert median["robustness"]["attack_success_rate"] <= 0.25
