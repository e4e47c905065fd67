"""A global and a local adapter with a learned mixing weight per module (FedDPA style).

Each client keeps a local adapter ``v`` next to the federated global one ``w`` (Yang et
al. 2024, "Dual-Personalizing Adapter for Federated Foundation Models"). Its personal
model takes, for every module ``m`` (a LoRA module's A and B, or one weight), a weight
``alpha_m = sigmoid(theta_m)`` in (0, 1) between the two:

    p_t = w_t + alpha_m (v_t - w_t)        for every tensor t of module m

``alpha = 0`` is the global adapter, ``alpha = 1`` the local one. ``theta`` is learnt on
the client's own training data by gradient descent. The chain rule gives

    dL/dtheta_m = alpha_m (1 - alpha_m) * sum_{t in m} <dL/dp_t, v_t - w_t>

from one backward pass through the mixed model. FedDPA weighs per input, from the
similarity of the input to the client's training data. These weights are learnt per
module and fixed at inference, like APFL's mixing (Deng et al. 2020), so the personal
model is one plain adapter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import torch

from fedlm.client.trainer import batches
from fedlm.data.formatting import Example, collate
from fedlm.models.device import module_device, to_device
from fedlm.stages import TensorDict

_LORA_PART = re.compile(r"\.lora_(A|B)(\.[^.]+)?\.weight$")


def module_of(name: str) -> str:
    """The module a trainable tensor belongs to: a LoRA module's A and B share one."""
    stripped = _LORA_PART.sub("", name)
    return stripped if stripped != name else name.rsplit(".", 1)[0]


def mixing_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """Module -> its tensor names, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(module_of(n), []).append(n)
    return groups


def mixed(w: Mapping[str, torch.Tensor], v: Mapping[str, torch.Tensor], alpha: Mapping[str, float]) -> TensorDict:
    """``w + alpha_m (v - w)`` per tensor (``alpha`` by module; a module missing from it keeps ``w``)."""
    return {n: w[n] + float(alpha.get(module_of(n), 0.0)) * (v[n] - w[n]) for n in w}


def theta_gradient(grads: Mapping[str, torch.Tensor], w: Mapping[str, torch.Tensor], v: Mapping[str, torch.Tensor],
                   alpha: Mapping[str, float]) -> dict[str, float]:
    """``dL/dtheta_m`` from the gradients at the mixed state (see the module docstring)."""
    out: dict[str, float] = {}
    for n, g in grads.items():
        m = module_of(n)
        out[m] = out.get(m, 0.0) + float((g.double() * (v[n] - w[n]).to(g.device, torch.float64)).sum())
    return {m: alpha[m] * (1.0 - alpha[m]) * d for m, d in out.items()}


def learn_mixing(model, examples: Sequence[Example], w: TensorDict, v: TensorDict, theta: Mapping[str, float], *,
                 steps: int, batch_size: int, lr: float, seed: int) -> dict[str, float]:
    """Adam steps on ``theta`` (one logit per module) to lower the mixed model's training loss.

    Args:
        model: the ``AdaptedModel``; left holding the final mixed state.
        examples: the client's own training examples.
        w, v: the global and the local adapter (trainable tensors by name).
        theta: the starting logits by module (e.g. the client's from its last round).

    Returns:
        The new logits by module.
    """
    groups = list(mixing_groups(w))
    logits = torch.tensor([float(theta.get(m, 0.0)) for m in groups], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([logits], lr=lr)
    named = list(zip(model.names(), model.parameters(), strict=True))
    stream = batches(examples, batch_size=batch_size, seed=seed)
    pad = model.tokenizer.pad_token_id
    device = module_device(model.model)
    model.model.train()
    for _ in range(steps):
        alpha = dict(zip(groups, torch.sigmoid(logits).tolist(), strict=True))
        model.set_state(mixed(w, v, alpha))
        model.model(**to_device(collate(next(stream), pad_id=pad), device)).loss.backward()
        grads = {n: p.grad.detach() for n, p in named if p.grad is not None}
        model.model.zero_grad(set_to_none=True)
        d = theta_gradient(grads, w, v, alpha)
        logits.grad = torch.tensor([d.get(m, 0.0) for m in groups], dtype=torch.float64)
        opt.step()
    model.model.eval()
    final = dict(zip(groups, logits.detach().tolist(), strict=True))
    model.set_state(mixed(w, v, alphas(final)))
    return final


def alphas(theta: Mapping[str, float]) -> dict[str, float]:
    """Mixing weights in (0, 1) from the logits (the logistic function)."""
    return {m: 1.0 / (1.0 + math.exp(-t)) for m, t in theta.items()}


__all__ = ["alphas", "learn_mixing", "mixed", "mixing_groups", "module_of", "theta_gradient"]
