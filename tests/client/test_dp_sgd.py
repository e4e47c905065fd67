"""DP-SGD inside a client with Opacus on the LoRA parameters of tiny-llama."""

import pytest
import torch
from opacus.accountants import RDPAccountant

from fedlm.client.dp_sgd import dp_sgd_epsilon, sample_rate, train_local_dp_sgd
from fedlm.client.trainer import train_local
from fedlm.config.schema import LoraConfig
from fedlm.errors import ConfigError
from fedlm.models.adapters import AdaptedModel
from fedlm.models.loading import load_base_model


@pytest.fixture
def tiny():
    base, tok = load_base_model("tiny-llama", seed=0)
    return AdaptedModel(base, tok, LoraConfig(), seed=0)


def _examples(n=8, length=16):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": ids, "labels": list(ids)} for ids in
            (torch.randint(3, 200, (length,), generator=g).tolist() for _ in range(n))]


def test_sample_rate_is_batch_over_examples_capped_at_one():
    assert sample_rate(40, 4) == 0.1
    assert sample_rate(3, 4) == 1.0
    with pytest.raises(ConfigError):
        sample_rate(0, 4)


def test_epsilon_is_opacus_rdp_for_the_same_history():
    ref = RDPAccountant()
    ref.history = [(1.1, 0.1, 30)]
    assert dp_sgd_epsilon(noise_multiplier=1.1, sample_rate=0.1, steps=30, delta=1e-5) == ref.get_epsilon(1e-5)
    assert dp_sgd_epsilon(noise_multiplier=1.1, sample_rate=0.1, steps=0, delta=1e-5) == 0.0
    more = dp_sgd_epsilon(noise_multiplier=1.1, sample_rate=0.1, steps=60, delta=1e-5)
    assert more > ref.get_epsilon(1e-5)  # more steps spend more


def test_dp_sgd_trains_only_lora_and_leaves_no_opacus_state(tiny):
    before = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    trainable = set(tiny.get_state())
    result = train_local_dp_sgd(tiny, _examples(), steps=3, batch_size=4, lr=0.01, seed=0,
                                noise_multiplier=1.0, max_grad_norm=1.0)
    assert result.steps == 3
    after = tiny.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(any(t in k for t in ("lora_A", "lora_B")) for k in changed)
    assert len(trainable) > 0
    for p in tiny.model.parameters():
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad")
    for m in tiny.model.modules():  # Opacus's hooks are gone: plain training still works
        assert not m._forward_hooks and not m._backward_hooks
    plain = train_local(tiny, _examples(), steps=1, batch_size=4, lr=0.01, seed=0)
    assert plain.steps == 1


def test_noise_multiplier_moves_the_update(tiny):
    start = tiny.get_state()
    train_local_dp_sgd(tiny, _examples(), steps=2, batch_size=4, lr=0.01, seed=0, noise_multiplier=0.5, max_grad_norm=1.0)
    a = tiny.get_state()
    tiny.set_state(start)
    train_local_dp_sgd(tiny, _examples(), steps=2, batch_size=4, lr=0.01, seed=0, noise_multiplier=0.5, max_grad_norm=1.0)
    b = tiny.get_state()
    tiny.set_state(start)
    train_local_dp_sgd(tiny, _examples(), steps=2, batch_size=4, lr=0.01, seed=1, noise_multiplier=0.5, max_grad_norm=1.0)
    c = tiny.get_state()
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded: reproducible
    assert any(not torch.equal(a[k], c[k]) for k in a)  # another seed draws other batches and noise
