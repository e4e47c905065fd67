"""``fedlm generate``: a continuation from a run's global model, or from one client's personal model.

Greedy decoding is the default because it is reproducible: the same run and prompt give
the same text. ``temperature > 0`` samples (with nucleus ``top_p``), seeded by ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fedlm.errors import ConfigError
from fedlm.models.device import module_device, to_device


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen.

    Args:
        max_new_tokens: tokens to generate at most.
        temperature: 0 decodes greedily; above 0 samples from softmax(logits / temperature).
        top_p: sample from the smallest set of tokens whose probability reaches ``top_p``
            (Holtzman et al. 2020); 1.0 keeps every token.
        seed: seed of sampling.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"--temperature must be 0 (greedy) or positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_p < 1 and self.temperature == 0:
            raise ConfigError("--top-p applies to sampling; give --temperature above 0 (e.g. 0.7) with it")

    def generate_kwargs(self, pad_id: int | None) -> dict:
        """Keyword arguments of ``model.generate`` (top-k off: only ``top_p`` trims the distribution)."""
        if self.temperature == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False, "pad_token_id": pad_id}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                "top_p": self.top_p, "top_k": 0, "pad_token_id": pad_id}


@torch.no_grad()
def complete(model, tok, prompt: str, *, sampling: Sampling, chat: bool = False) -> str:
    """``model``'s continuation of ``prompt`` (in the chat template when ``chat``)."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True) if chat else prompt
    enc = to_device(tok(text, return_tensors="pt", add_special_tokens=False), module_device(model))
    with torch.random.fork_rng(devices=[]):  # a seeded draw that leaves the caller's generator alone
        torch.manual_seed(sampling.seed)
        out = model.generate(**enc, **sampling.generate_kwargs(tok.pad_token_id))
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def generate(run_dir: str | Path, prompt: str, *, max_new_tokens: int = 64, chat: bool = False,
             device: str = "cpu", temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             client: str | None = None) -> str:
    """A continuation of ``prompt`` by the run's final model, or by ``client``'s personal model.

    Raises:
        ConfigError: invalid sampling settings, or ``client`` in a run without personal models.
        ModelError: the adapter is missing or damaged, or the client has no personal model.
    """
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    if client is not None:
        from fedlm.commands.export import personal_model

        _, adapted = personal_model(run_dir, client, device=device)
        model, tok = adapted.model, adapted.tokenizer
        model.eval()
    else:
        from fedlm.commands.evaluate import load_run_model

        _, model, tok = load_run_model(run_dir, device=device)
    return complete(model, tok, prompt, sampling=sampling, chat=chat)


__all__ = ["Sampling", "complete", "generate"]
