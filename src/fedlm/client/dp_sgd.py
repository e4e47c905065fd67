"""Sample-level DP-SGD inside one client, with Opacus on the trainable (LoRA) parameters.

Abadi et al. 2016, "Deep Learning with Differential Privacy". At each local step every
training example joins the batch independently with probability ``q = batch_size / n``
(Poisson sampling, which Opacus's accountant assumes); Opacus's ``GradSampleModule``
computes per-example gradients of the trainable parameters only (the frozen base layers
get none), and ``DPOptimizer`` clips each to ``max_grad_norm``, sums, adds
``N(0, (noise_multiplier * max_grad_norm)^2)`` and divides by the expected batch size.
An empty Poisson batch still takes a noise-only step, as Opacus's own data loader does,
so whether a batch was empty is not revealed.

The loss of an example is the mean of its own token losses, so one example's gradient
never depends on the length of the others in its batch (the model's built-in loss
averages over all tokens of the batch, which would).

The guarantee is per client: ``(epsilon, delta)`` for that client's examples over every
local step it has taken in the run, from :func:`dp_sgd_epsilon` (Opacus ``RDPAccountant``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedlm.client.trainer import LocalResult, set_lr
from fedlm.data.formatting import IGNORE, Example, collate
from fedlm.errors import ConfigError
from fedlm.models.adapters import AdaptedModel
from fedlm.models.device import module_device, to_device


def sample_rate(num_examples: int, batch_size: int) -> float:
    """Poisson rate ``q = min(1, batch_size / num_examples)`` of one local step."""
    if num_examples < 1:
        raise ConfigError(f"a DP-SGD client needs at least one example, got {num_examples}")
    return min(1.0, batch_size / num_examples)


def dp_sgd_epsilon(
    *,
    noise_multiplier: float,
    delta: float,
    sample_rate: float | None = None,
    steps: int = 0,
    segments: list[tuple[float, int]] | None = None,
) -> float:
    """Epsilon at ``delta`` of DP-SGD steps (Opacus ``RDPAccountant``); 0 for no steps.

    Either ``steps`` steps at ``sample_rate``, or ``segments = [(sample_rate, steps), ...]``
    (a client whose batch size, hence rate, changed between rounds).
    """
    segs = list(segments) if segments is not None else [(float(sample_rate or 0.0), int(steps))]
    history = [(float(noise_multiplier), float(q), int(n)) for q, n in segs if n > 0]
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = history
    return float(acc.get_epsilon(delta=delta))


def _per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean token loss of each example, shape (B,), over its labelled next tokens."""
    logits, targets = logits[:, :-1], labels[:, 1:]  # (B, T-1, V), (B, T-1)
    keep = (targets != IGNORE).to(logits.dtype)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.clamp_min(0).reshape(-1), reduction="none"
    ).view(targets.shape)
    return (nll * keep).sum(1) / keep.sum(1).clamp_min(1.0)


def train_local_dp_sgd(
    model: AdaptedModel,
    examples: list[Example],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    noise_multiplier: float,
    max_grad_norm: float,
    weight_decay: float = 0.0,
    lr_steps: Sequence[float] | None = None,
) -> LocalResult:
    """``steps`` DP-SGD (AdamW) steps on ``examples``, updating ``model`` in place.

    ``lr_steps``, when given, is each step's lr (a schedule that counts local steps).

    The Opacus hooks are attached for this call only and removed afterwards, so the one
    shared base model is left as it was found.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    q = sample_rate(len(examples), batch_size)
    params = [p for p in model.model.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    device = module_device(model.model)
    gen = torch.Generator(device=device).manual_seed(seed)  # Opacus's noise, drawn where the gradients are
    rng = np.random.default_rng(seed)  # Poisson batches
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure RNG and full backward hooks
        gsm = GradSampleModule(model.model, batch_first=True, loss_reduction="mean")
        opt = DPOptimizer(
            torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=max(1, round(q * len(examples))),
            generator=gen,
        )
    pad = model.tokenizer.pad_token_id
    losses, seen = [], 0
    gsm.train()
    try:
        for step in range(steps):
            if lr_steps is not None:
                set_lr(opt, lr_steps[step])
            pick = np.flatnonzero(rng.random(len(examples)) < q)
            opt.zero_grad(set_to_none=True)
            if len(pick) == 0:
                for p in params:  # noise-only step
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            else:
                batch = to_device(collate([examples[i] for i in pick], pad_id=pad), device)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    logits = gsm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    loss = _per_example_loss(logits.float(), batch["labels"]).mean()
                    loss.backward()
                losses.append(float(loss.detach()))
                seen += len(pick)
            opt.step()
        opt.zero_grad(set_to_none=True)
    finally:
        gsm.to_standard_module()  # remove the hooks from the shared model
        for p in params:
            for attr in ("grad_sample", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)
        model.model.eval()
    mean = float(np.mean(losses)) if losses else float("nan")
    return LocalResult(steps=steps, examples_seen=seen, mean_loss=mean)


__all__ = ["dp_sgd_epsilon", "sample_rate", "train_local_dp_sgd"]
