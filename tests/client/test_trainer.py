"""Local training: FedProx's proximal term, SCAFFOLD's correction, frozen and masked tensors.

A one-tensor quadratic stands in for the model so every step is worked by hand.
"""

from __future__ import annotations

import pytest
import torch
from quadratic_support import EXAMPLES, FakeAdapted, Quadratic

from fedlm.client.trainer import train_local
from fedlm.errors import ConfigError


def run(model: FakeAdapted, **kw) -> None:
    train_local(model, EXAMPLES, steps=2, batch_size=2, lr=0.1, seed=0, max_grad_norm=None, optimizer="sgd", **kw)


def test_plain_sgd_two_steps():
    m = FakeAdapted(Quadratic([1.0, -2.0], [0.0, 0.0]))
    run(m)
    # w1 = 0.9 w0, w2 = 0.81 w0
    torch.testing.assert_close(m.model.w.detach(), torch.tensor([0.81, -1.62]))


def test_fedprox_adds_mu_times_distance_to_the_start():
    m = FakeAdapted(Quadratic([1.0, -2.0], [0.0, 0.0]))
    run(m, prox_mu=0.5)
    # step 1: grad = w0 -> w1 = 0.9 w0; step 2: grad = w1 + 0.5 (w1 - w0) = 0.85 w0 -> w2 = 0.815 w0
    torch.testing.assert_close(m.model.w.detach(), torch.tensor([0.815, -1.63]))


def test_scaffold_correction_is_added_to_every_gradient():
    m = FakeAdapted(Quadratic([1.0, -2.0], [0.0, 0.0]))
    run(m, correction={"w": torch.tensor([0.5, 0.5]), "v": torch.zeros(1)})
    # w1 = w0 - 0.1 (w0 + 0.5) = [0.85, -1.85]; w2 = w1 - 0.1 (w1 + 0.5) = [0.715, -1.715]
    torch.testing.assert_close(m.model.w.detach(), torch.tensor([0.715, -1.715]))


def test_frozen_tensors_do_not_move():
    m = FakeAdapted(Quadratic([1.0, -2.0], [0.0, 0.0]))
    run(m, frozen={"v"})
    assert m.model.v.item() == 1.0
    torch.testing.assert_close(m.model.w.detach(), torch.tensor([0.81, -1.62]))


def test_keep_zero_masks_hold_components_at_zero():
    m = FakeAdapted(Quadratic([1.0, -2.0], [0.0, 0.0]))
    run(m, keep_zero={"w": torch.tensor([1.0, 0.0])})
    torch.testing.assert_close(m.model.w.detach(), torch.tensor([0.81, 0.0]))


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="adamw"):
        train_local(FakeAdapted(Quadratic([1.0], [0.0])), EXAMPLES, steps=1, batch_size=2, lr=0.1, seed=0, optimizer="lion")


def test_per_step_learning_rates_replace_the_rounds_lr():
    m = FakeAdapted(Quadratic([1.0, -2.0], [0.0, 0.0]))
    run(m, lr_steps=[0.5, 0.2])
    # w1 = (1 - 0.5) w0 = 0.5 w0; w2 = (1 - 0.2) w1 = 0.4 w0
    torch.testing.assert_close(m.model.w.detach(), torch.tensor([0.4, -0.8]))
