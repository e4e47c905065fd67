import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from fedlm.config.audit import AuditConfig
from fedlm.data.formatting import chunk_lm
from fedlm.errors import ConfigError, DataError
from fedlm.eval.metrics import score_lm
from fedlm.models import load_base_model
from fedlm.privacy.audit import (
    canary_rank,
    exposure,
    exposure_from_rank,
    loss_scores,
    mia_auc,
    run_audit,
    score_canary,
    text_log_perplexity,
)
from fedlm.privacy.canaries import Canary, make_canaries, sample_candidates

# --- rank and exposure math -------------------------------------------------------------


def test_rank_by_hand_with_ties():
    # candidates below the canary's 3.0: 1.0 and 2.0; one tie -> 1 + 2 + 0.5
    assert canary_rank(3.0, np.array([1.0, 3.0, 5.0, 2.0])) == 3.5
    assert canary_rank(0.5, np.array([1.0, 3.0])) == 1.0
    assert canary_rank(9.0, np.array([1.0, 3.0])) == 3.0
    assert exposure_from_rank(3.5, 5) == pytest.approx(math.log2(5) - math.log2(3.5))
    assert exposure_from_rank(1.0, 1024) == 10.0
    with pytest.raises(ConfigError, match="rank must be in"):
        exposure_from_rank(6.0, 5)


def _stub(canary: Canary, value_of_canary: float):
    """Scores every text 1.0 except the canary, which gets ``value_of_canary``."""
    return lambda texts: np.array([value_of_canary if t == canary.text else 1.0 for t in texts])


@pytest.mark.parametrize("candidates", [15, 1000])
def test_exposure_is_maximal_for_the_most_likely_and_zero_for_the_least(candidates):
    canary = make_canaries(1, seed=0)[0]
    top = exposure(None, None, canary, candidates=candidates, seed=1, score_fn=_stub(canary, 0.0))
    bottom = exposure(None, None, canary, candidates=candidates, seed=1, score_fn=_stub(canary, 2.0))
    flat = score_canary(None, None, canary, candidates=candidates, seed=1, score_fn=_stub(canary, 1.0))
    assert top == pytest.approx(math.log2(candidates + 1))
    assert bottom == 0.0
    assert flat.rank == 1 + candidates / 2  # all tied: the middle
    assert flat.exposure == pytest.approx(math.log2(candidates + 1) - math.log2(1 + candidates / 2))


def test_exposure_rank_matches_known_scores():
    # Known NLL per secret: its integer value, so the rank is 1 + #candidates below it.
    canary = Canary("code 500", "500", "code {}", "0123456789")
    pool = sample_candidates(canary, 40, seed=9)
    got = score_canary(
        None, None, canary, candidates=40, seed=9,
        score_fn=lambda texts: np.array([float(t.split()[-1]) for t in texts]),
    )
    expected_rank = 1 + sum(int(s) < 500 for s in pool)
    assert got.rank == expected_rank and got.log_perplexity == 500.0
    assert got.exposure == pytest.approx(math.log2(41) - math.log2(expected_rank))


def test_score_fn_must_return_one_score_per_text():
    canary = make_canaries(1, seed=0)[0]
    with pytest.raises(ConfigError, match="score_fn must return shape"):
        score_canary(None, None, canary, candidates=3, seed=0, score_fn=lambda t: np.zeros(2))


# --- membership-inference AUC -----------------------------------------------------------


def _pairwise_auc(m, n):
    wins = sum(1.0 if a < b else 0.5 if a == b else 0.0 for a, b in itertools.product(m, n))
    return wins / (len(m) * len(n))


def test_mia_auc_by_hand():
    # pairs (member < non-member): (1,2) (1,4) (2,4) (3,4) win, (2,2) tie, (3,2) loss -> 4.5/6
    assert mia_auc(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0])) == 0.75
    assert mia_auc(np.array([1.0]), np.array([1.0])) == 0.5
    assert mia_auc(np.array([0.1, 0.2]), np.array([0.3, 0.9, 0.5])) == 1.0
    assert mia_auc(np.array([0.3, 0.9, 0.5]), np.array([0.1, 0.2])) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_mia_auc_equals_pairwise_count_with_many_ties(seed):
    rng = np.random.default_rng(seed)
    m, n = rng.integers(0, 5, size=13).astype(float), rng.integers(1, 6, size=8).astype(float)
    assert mia_auc(m, n) == pytest.approx(_pairwise_auc(m, n), abs=1e-12)


def test_mia_auc_is_half_for_identical_distributions():
    x = np.random.default_rng(0).normal(size=50)
    assert mia_auc(x, x.copy()) == 0.5


def test_mia_auc_rejects_empty_and_nan():
    with pytest.raises(DataError, match="needs members and non-members"):
        mia_auc(np.array([]), np.array([1.0]))
    with pytest.raises(DataError, match="NaN"):
        mia_auc(np.array([np.nan]), np.array([1.0]))


# --- scoring with a real tiny model -----------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_base_model("tiny-llama", seed=0)


def test_log_perplexity_is_batch_independent_and_matches_manual_sum(tiny):
    model, tok = tiny
    texts = ["my secret code is 123456", "hi", "a somewhat longer sentence to pad the others"]
    batched = text_log_perplexity(model, tok, texts, batch_size=3)
    one_by_one = np.concatenate([text_log_perplexity(model, tok, [t], batch_size=1) for t in texts])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5)
    ids = torch.tensor([[tok.eos_token_id, *tok(texts[0], add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    manual = F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
    assert batched[0] == pytest.approx(manual, rel=1e-5)


def test_loss_scores_are_per_example_score_lm(tiny):
    model, tok = tiny
    examples = chunk_lm(["the quick brown fox " * 3, "to be or not"], tok, seq_len=40, min_tokens=4)
    got = loss_scores(model, examples, pad_id=tok.pad_token_id, batch_size=2)
    for e, value in zip(examples, got):
        s = score_lm(model, [e], pad_id=tok.pad_token_id, batch_size=1)
        assert value == pytest.approx(s.loss_sum / s.tokens, rel=1e-5)
    with pytest.raises(DataError, match="no labelled token"):
        loss_scores(model, [{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}], pad_id=0)


@pytest.fixture(scope="module")
def memorised():
    """tiny-llama trained for 30 full-batch AdamW steps on one canary and four member texts."""
    torch.manual_seed(0)
    model, tok = load_base_model("tiny-llama", seed=1)
    canaries = make_canaries(2, seed=0)
    members = ["the cat sat on the mat", "a stitch in time saves", "all that glitters", "to be or not"]
    nonmembers = ["quantum flux capacitor", "purple elephants dance", "zebra yoghurt night", "oxbow lakes"]
    train = chunk_lm([canaries[0].text, *members], tok, seq_len=64, min_tokens=4)
    # chunk_lm joins texts with EOS, so the canary follows an EOS as the audit assumes
    batch = {"input_ids": torch.tensor([train[0]["input_ids"]])}
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(30):
        loss = model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    as_examples = lambda texts: [  # noqa: E731
        {"input_ids": [tok.eos_token_id, *ids], "labels": [tok.eos_token_id, *ids]}
        for ids in (tok(t, add_special_tokens=False)["input_ids"] for t in texts)
    ]
    return model, tok, canaries, as_examples(members), as_examples(nonmembers)


def test_trained_canary_reaches_the_exposure_ceiling(memorised, tiny):
    model, tok, canaries, _, _ = memorised
    ceiling = math.log2(64)
    assert exposure(model, tok, canaries[0], candidates=63, seed=1, batch_size=32) == ceiling
    # the same canary is not exposed by the untrained model
    untrained, _ = tiny
    assert exposure(untrained, tok, canaries[0], candidates=63, seed=1) < ceiling - 1


def test_run_audit_reports_exposure_and_membership(memorised):
    model, tok, canaries, members, nonmembers = memorised
    out = run_audit(
        model, tok, canaries=canaries, members=members, nonmembers=nonmembers,
        candidates=31, seed=0, canary_clients=["alice", "bob"],
    )
    assert [(r["index"], r["client"]) for r in out["canaries"]] == [(0, "alice"), (1, "bob")]
    assert out["canaries"][0]["exposure"] == 5.0 and out["canaries"][0]["rank"] == 1.0
    assert out["exposure_max"] == 5.0 and out["exposure_ceiling"] == 5.0
    assert out["exposure_mean"] == pytest.approx(np.mean([r["exposure"] for r in out["canaries"]]))
    assert out["canaries"][1]["exposure"] < 5.0  # never trained on
    # trained-on texts have lower loss than unseen ones for (nearly) every pair
    mem = loss_scores(model, members, pad_id=tok.pad_token_id)
    non = loss_scores(model, nonmembers, pad_id=tok.pad_token_id)
    assert out["mia_auc"] == mia_auc(mem, non) > 0.75
    assert out["member_loss"] == pytest.approx(mem.mean()) and mem.mean() < non.mean()
    assert (out["members"], out["nonmembers"], out["candidates"]) == (4, 4, 31)
    capped = run_audit(
        model, tok, canaries=[], members=members, nonmembers=nonmembers,
        candidates=31, seed=0, mia_examples=2,
    )
    assert (capped["members"], capped["nonmembers"]) == (2, 2)
    assert capped["canaries"] == [] and capped["exposure_max"] is None
    assert capped["mia_auc"] in (0.0, 0.25, 0.5, 0.75, 1.0)  # 2 x 2 pairs


# --- config -----------------------------------------------------------------------------


def test_audit_config_defaults_are_valid_and_frozen():
    cfg = AuditConfig()
    assert (cfg.enabled, cfg.canaries, cfg.canary_clients, cfg.candidates) == (False, 0, "auto", 1000)
    assert cfg.exposure_ceiling == pytest.approx(math.log2(1001))
    with pytest.raises(ValidationError):
        cfg.canaries = 3
    ok = AuditConfig(enabled=True, canaries=4, canary_clients=["a", "b"], canary_repeats=3)
    ok.check_clients(["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"unknown clients \['b'\]"):
        ok.check_clients(["a", "c"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"enabled": True, "canaries": -1}, "greater than or equal to 0"),
        ({"canaries": 2}, "audit.enabled=false would never measure them"),
        ({"enabled": True, "template": "no slot"}, "exactly once"),
        ({"enabled": True, "alphabet": "aab"}, "no repeats"),
        ({"enabled": True, "canaries": 2, "canary_clients": []}, "empty list"),
        ({"enabled": True, "canaries": 2, "canary_clients": ["a", "a"]}, r"repeats \['a'\]"),
        ({"enabled": True, "canary_clients": ["a"]}, "only applies with audit.canaries > 0"),
        ({"enabled": True, "canaries": 1, "canary_clients": ["a", "b"]}, "some would hold none"),
        ({"enabled": True, "canaries": 1, "secret_length": 2}, "exceeds the 100 possible"),
        ({"enabled": True, "canary_repeats": 0}, "greater than or equal to 1"),
        ({"enabled": True, "candidates": 0}, "greater than or equal to 1"),
        ({"enabled": True, "canary_clients": "all"}, "auto"),
        ({"enabled": True, "canaires": 3}, "Extra inputs are not permitted"),
    ],
)
def test_audit_config_rejects(kwargs, match):
    with pytest.raises(ValidationError, match=match):
        AuditConfig(**kwargs)
