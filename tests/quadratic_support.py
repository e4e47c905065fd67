"""A one-tensor quadratic standing in for a model, so local steps can be worked by hand."""

from __future__ import annotations

from types import SimpleNamespace

import torch

EXAMPLES = [{"input_ids": [1, 2], "labels": [1, 2]}] * 4


class Quadratic(torch.nn.Module):
    """loss = 0.5 * a * ||w - t||^2 (+ the same for v): gradient a (w - t)."""

    def __init__(self, w0: list[float], t: list[float], a: float = 1.0) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w0))
        self.v = torch.nn.Parameter(torch.tensor([1.0]))
        self.t, self.a = torch.tensor(t), a

    def forward(self, input_ids, attention_mask, labels):
        return SimpleNamespace(loss=0.5 * self.a * ((self.w - self.t) ** 2).sum() + 0.5 * (self.v**2).sum())


class FakeAdapted:
    """The slice of AdaptedModel that train_local reads."""

    def __init__(self, module: Quadratic) -> None:
        self.model = module
        self.tokenizer = SimpleNamespace(pad_token_id=0)

    def names(self) -> list[str]:
        return ["w", "v"]

    def parameters(self):
        return [self.model.w, self.model.v]
