"""The clean metric of an attacked run leaves the attackers' (poisoned) held-out rows out."""

import math

import pytest

from fedlm.runtime.adversary import honest_eval

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
