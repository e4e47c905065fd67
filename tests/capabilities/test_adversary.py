"""The clean metric of an attacked run leaves the attackers' (poisoned) held-out rows out."""

import json
import math

import pytest

from fedlm.capabilities.adversary import honest_eval

FINAL = {
    "eval_loss": 9.0,
    "clients": {
        "a": {"eval_loss": 1.0, "tokens": 30},
        "b": {"eval_loss": 2.0, "tokens": 10},
        "evil": {"eval_loss": 50.0, "tokens": 60},
    },
}


def test_honest_eval_is_the_token_weighted_loss_of_honest_clients():
    clean = honest_eval(FINAL, ["evil"])
    assert clean["eval_loss"] == pytest.approx((1.0 * 30 + 2.0 * 10) / 40)
    assert clean["perplexity"] == pytest.approx(math.exp(1.25))
    assert (clean["tokens"], clean["clients"]) == (40, 2)


def test_without_attackers_it_covers_everyone_and_without_clients_it_is_none():
    assert honest_eval(FINAL, [])["tokens"] == 100
    assert honest_eval({"eval_loss": 1.0}, []) is None
    assert honest_eval(FINAL, ["a", "b", "evil"]) is None


def test_attackers_train_their_own_number_of_local_steps(tmp_path):
    from tests_support import load_config, tiny_overrides, write_instruction_jsonl

    from fedlm.commands.experiment import run_experiment

    data = write_instruction_jsonl(tmp_path / "rows.jsonl", rows=48)
    config = load_config(None, tiny_overrides(
        data, **{"data.client_field": "null", "data.partition": "iid", "data.num_clients": 4,
                 "data.format": "instruction", "data.context_field": "null", "data.seq_len": 96, "federation.rounds": 1,
                 "federation.clients_per_round": 4, "federation.local_steps": 2, "eval.every": 1000,
                 "eval.attack_prompts": 2, "eval.attack_max_new_tokens": 2, "output.report": "false",
                 "attack.kind": "backdoor", "attack.client_ids": "[client_1]", "attack.local_steps": 5}))
    run_experiment(config, out_dir=tmp_path / "run")
    record = next(json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                  if json.loads(line)["type"] == "round")
    steps = {cid: m["steps"] for cid, m in record["clients"].items()}
    assert steps.pop("client_1") == 5
    assert set(steps.values()) == {2}
