"""Canary clients of the one-run audit: secret inclusion, directions, scores, and how they join a round."""

import numpy as np
import pytest
import torch

from fedlm.privacy import sampling
from fedlm.privacy.canary_clients import CANARY_PREFIX, Canaries, CanaryStage
from fedlm.privacy.secagg.stages import SUM_CLIENT_ID
from fedlm.stages import CONTRIBUTORS_METRIC, ClientUpdate, CohortValue, RoundPlan

SHAPES = {"b": (10, 20), "a": (300,)}  # d = 500


def _canaries(key=None, rate=0.5, count=400):
    key = key or sampling.new_key()
    return Canaries(lambda: key, count=count, shapes=SHAPES, norm=2.0, rate=rate)


def test_inclusion_is_a_secret_fair_coin_and_only_included_canaries_take_part():
    c = _canaries()
    inc = c.included()
    assert inc.shape == (400,) and 150 < inc.sum() < 250  # Binomial(400, 1/2): 4.5 standard deviations
    parts = [c.taking_part(r) for r in range(1, 21)]
    assert all(set(p) <= set(np.flatnonzero(inc)) for p in parts)
    assert np.mean([len(p) for p in parts]) == pytest.approx(0.5 * inc.sum(), rel=0.1)
    assert not np.array_equal(_canaries().included(), inc)  # another key, other canaries
    assert c.taking_part(3) == c.taking_part(3)


def test_directions_are_unit_and_nearly_orthogonal_and_updates_have_norm_c():
    c = _canaries(count=64)
    u = c.directions(range(64)).astype(np.float64)  # (64, 500)
    assert np.allclose(np.linalg.norm(u, axis=1), 1.0)
    gram = u @ u.T - np.eye(64)
    assert np.abs(gram).max() < 6 / np.sqrt(500)
    upd = c.update(5)
    assert set(upd) == set(SHAPES) and upd["b"].shape == (10, 20)
    flat = torch.cat([upd["a"].flatten(), upd["b"].flatten()])  # sorted names: a, then b
    assert flat.norm().item() == pytest.approx(2.0, rel=1e-6)
    assert np.allclose(flat.numpy() / 2.0, u[5], atol=1e-7)


def test_scores_accumulate_the_inner_product_with_each_step():
    c = _canaries(count=8)
    step = {k: torch.randn(s) for k, s in SHAPES.items()}
    flat = np.concatenate([step["a"].numpy().ravel(), step["b"].numpy().ravel()])
    scores = c.score_step(step, np.zeros(8), chunk=3)
    assert np.allclose(scores, c.directions(range(8)) @ flat, atol=1e-5)
    assert np.allclose(c.score_step(step, scores), 2 * scores, atol=1e-5)


def _plan(r=1):
    return RoundPlan(round=r, cohort=("x", "y"), lr=0.1, local_steps=1, seed=0)


def test_canaries_join_as_updates_or_inside_the_secure_sum_but_never_an_aborted_one():
    c = _canaries(rate=1.0, count=20)
    part = c.taking_part(1)
    real = ClientUpdate("x", 1, 5, tensors={k: torch.zeros(s) for k, s in SHAPES.items()})
    _, out, m = CanaryStage(c, weight=3).apply(None, CohortValue(updates=[real]), _plan())
    assert m["canaries"] == len(part) > 0
    assert [u.client_id for u in out.updates] == ["x", *(f"{CANARY_PREFIX}{i}" for i in part)]
    assert all(u.num_examples == 3 for u in out.updates[1:])
    total = ClientUpdate(SUM_CLIENT_ID, 1, 4, tensors={k: torch.zeros(s) for k, s in SHAPES.items()},
                         metrics={CONTRIBUTORS_METRIC: 4})
    _, out, _ = CanaryStage(c, weight=1).apply(None, CohortValue(updates=[total]), _plan())
    (summed,) = out.updates
    want = sum(c.update(i)["a"] for i in part)
    assert torch.allclose(summed.tensors["a"], want, atol=1e-5)
    assert summed.num_examples == 4 + len(part) and summed.metrics[CONTRIBUTORS_METRIC] == 4 + len(part)
    aborted = CohortValue(updates=[], skipped="secagg_aborted")
    assert CanaryStage(c).apply(None, aborted, _plan())[1].updates == []
