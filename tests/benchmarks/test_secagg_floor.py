"""The authenticated floor counts exactly the public-key work a SecAgg+ round does."""

import pytest

from benchmarks import secagg
from fedlm.privacy.secagg import crypto, identity


@pytest.mark.parametrize("n,degree", [(10, 2), (12, 4), (20, None)])
def test_the_floor_counts_every_signature_check_and_key_agreement(monkeypatch, n, degree):
    # With no dropouts each client checks d signed key adverts and t consistency signatures
    # and agrees 2 keys per neighbour: the counts the benchmark adds to the stream floor.
    calls = {"verify": 0, "agree": 0}
    verify, agree = identity.verify, crypto.agree

    def counting_verify(*args, **kwargs):
        calls["verify"] += 1
        return verify(*args, **kwargs)

    def counting_agree(*args, **kwargs):
        calls["agree"] += 1
        return agree(*args, **kwargs)

    monkeypatch.setattr(identity, "verify", counting_verify)
    monkeypatch.setattr(crypto, "agree", counting_agree)
    info = secagg.secure_round(secagg.vectors(n, 16), secagg.config_for(n, degree), seed=3)
    d, t = info["degree"], info["threshold"]
    assert calls == {"verify": n * (d + t), "agree": 2 * n * d}


def test_public_key_timings_are_positive_cpu_seconds():
    t_verify, t_agree = secagg.public_key_seconds(reps=3)
    assert 0 < t_verify < 1 and 0 < t_agree < 1


def test_the_working_floor_counts_one_quantisation_per_client(monkeypatch):
    from fedlm.privacy.secagg import client

    calls = []
    quantize = client.quantize

    def counting_quantize(x, **kwargs):
        calls.append(x.size)
        return quantize(x, **kwargs)

    monkeypatch.setattr(client, "quantize", counting_quantize)
    secagg.secure_round(secagg.vectors(10, 16), secagg.config_for(10, 2), seed=3)
    assert calls == [16] * 10
    assert 0 < secagg.quantize_seconds(1000, secagg.config_for(10, 2), reps=3) < 1
