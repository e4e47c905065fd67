"""The discrete mechanisms as stages over real SecAgg+ rounds: the secure sum is the mechanism's."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from fedlm.config import load_config
from fedlm.config.secagg import SecAggConfig
from fedlm.errors import PipelineError
from fedlm.privacy.distributed.mechanism import client_encode, modular_sum, server_decode
from fedlm.privacy.distributed.stages import (
    DistributedDecodeStage,
    DistributedDpRound,
    DistributedEncodeStage,
    honest_shares,
    honest_survivors,
)
from fedlm.privacy.secagg.session import SecAggSession
from fedlm.privacy.secagg.stages import RING_KEY, MaskStage, SecAggRound, UnmaskStage
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan

SHAPES = {"a": (2,), "b": (1,)}  # d = 3, padded to D = 4
X = {"c0": [0.6, 0.0, 0.8], "c1": [-0.3, 0.4, 0.0], "c2": [0.1, 0.1, 0.1]}  # norms <= 1


def _round(r, mechanism, *, seed):
    ddp = DistributedDpRound(mechanism=mechanism, clip=1.0, dim=3, gamma=0.05, noise_stddev=0.4, bits=16,
                             beta=math.exp(-0.5), shares=3, rotation_seed=r)
    session = SecAggSession(tuple(X), vector_len=4, config=SecAggConfig(bits=8, modulus_bits=16), round_id=r,
                            seed=seed, integer_inputs=True)
    session.start()
    plan = RoundPlan(round=r, cohort=tuple(X), lr=0.1, local_steps=1, seed=1000 + r).with_fields(
        ddp, SecAggRound(session))
    return ddp, plan


def _secure_sum(r, mechanism, mask, secrets):
    ddp, plan = _round(r, mechanism, seed=r)
    enc = DistributedEncodeStage()
    uploads = []
    for cid, x in X.items():
        u = ClientUpdate(cid, r, 1, tensors={"a": torch.tensor(x[:2]), "b": torch.tensor(x[2:])})
        _, u, metrics = enc.apply({"secret_seed": secrets[cid]}, u, plan)
        assert set(u.tensors) == {RING_KEY} and u.tensors[RING_KEY].shape == (4,) and metrics["rounding_tries"] >= 1
        _, u, _ = mask.apply(None, u, plan)
        uploads.append(u)
    _, value, figs = UnmaskStage(shapes=SHAPES, ring=True).apply(None, CohortValue(updates=uploads), plan)
    assert figs["survivors"] == 3 and not figs["aborted"]
    ring = value.updates[0].tensors[RING_KEY].numpy().astype(np.uint64)
    _, value, _ = DistributedDecodeStage(shapes=SHAPES).apply(None, value, plan)
    t = value.updates[0].tensors
    return ddp, ring, np.concatenate([t["a"].numpy(), t["b"].numpy()]).astype(np.float64)


@pytest.mark.parametrize("mechanism", ["ddgauss", "skellam"])
def test_secure_noisy_sum_has_the_mechanisms_distribution(mechanism):
    mask = MaskStage(config=load_config(None, []))
    rng = np.random.default_rng(7)
    secure, direct = [], []
    for r in range(1, 161):
        secrets = {cid: int(rng.integers(2**62)) for cid in X}
        ddp, ring, decoded = _secure_sum(r, mechanism, mask, secrets)
        # The masked round sums exactly what the mechanism's clients encoded, mod 2^b.
        own = [client_encode(np.array(x), ddp.params(), rotation_seed=r,
                             rng=_client_rng(secrets[cid], 1000 + r, cid))[0] for cid, x in X.items()]
        assert np.array_equal(ring, modular_sum(own, bits=16))
        secure.append(decoded)
        # An independent draw of the mechanism itself (Kairouz et al. 2021, Alg. 1).
        other = [client_encode(np.array(x), ddp.params(), rotation_seed=r, rng=rng)[0] for x in X.values()]
        direct.append(server_decode(modular_sum(other, bits=16), ddp.params(), rotation_seed=r))
    secure, direct = np.array(secure), np.array(direct)  # (trials, 3)
    truth = np.sum(list(X.values()), axis=0)
    # Unbiased for the sum, with the planned noise (std 0.4) plus rounding (< 3 gamma = 0.15).
    assert np.abs(secure.mean(axis=0) - truth).max() < 4 * 0.45 / math.sqrt(160)
    assert secure.std(axis=0) == pytest.approx([0.41] * 3, rel=0.2)
    for j in range(3):
        assert ks_2samp(secure[:, j], direct[:, j]).pvalue > 1e-3


def _client_rng(secret, plan_seed, cid):
    from fedlm.privacy.distributed.stages import client_generator

    return client_generator(secret, plan_seed, cid)


def test_a_clients_rounding_and_noise_are_fresh_each_round_and_private_to_it():
    # The server knows every round's rotation, so a noise share reused in two rounds would
    # cancel in the difference of the two rotated sums: each share must be a new draw.
    def draws(secret, plan_seed, cid):
        return _client_rng(secret, plan_seed, cid).integers(2**62, size=4)

    first = draws(11, 1001, "c0")
    assert np.array_equal(first, draws(11, 1001, "c0"))  # a resumed round redraws the same share
    for other in (draws(11, 1002, "c0"), draws(11, 1001, "c1"), draws(12, 1001, "c0")):
        assert not np.array_equal(first, other)


def test_shares_are_sized_for_the_honest_fraction_and_survivors_counted_without_the_dishonest():
    assert honest_shares(10, 1.0) == 10 and honest_shares(10, 0.75) == 8 and honest_shares(0, 0.5) == 1
    assert honest_survivors(10, 10, 1.0) == 10 and honest_survivors(6, 10, 1.0) == 6
    assert honest_survivors(10, 10, 0.75) == 8 and honest_survivors(2, 10, 0.75) == 0


def test_decode_refuses_a_sum_that_is_not_in_the_ring():
    _, plan = _round(1, "ddgauss", seed=1)
    value = CohortValue(updates=[ClientUpdate("secagg:sum", 1, 3, tensors={"a": torch.zeros(2), "b": torch.zeros(1)})])
    with pytest.raises(PipelineError, match="ring"):
        DistributedDecodeStage(shapes=SHAPES).apply(None, value, plan)
