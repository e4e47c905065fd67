"""Attack metrics: how often a backdoored model answers a triggered prompt with the target.

Attack success rate (ASR), as in Bagdasaryan et al. (2020) and the instruction-backdoor
literature (Wan et al. 2023): the share of held-out prompts carrying the trigger whose
greedy answer contains the attacker's target. A defence works when ASR stays near its
value for a clean model (about 0) while clean held-out loss stays close to the no-attack run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fedlm.attacks.poisoning import Position, insert_trigger
from fedlm.attacks.selection import stable_seed
from fedlm.errors import ConfigError, DataError


def build_triggered_prompts(
    records: Sequence[dict[str, str]],
    *,
    prompt_field: str,
    trigger: str,
    target: str,
    response_field: str | None = None,
    position: Position = "append",
    seed: int = 0,
    limit: int | None = None,
) -> list[str]:
    """Held-out prompts with the trigger added, for :func:`attack_success_rate`.

    Rows whose prompt already contains ``target`` are skipped (a model that echoes its
    prompt would count as a success), and so are rows whose ``response_field`` contains it
    (a clean model would answer with the target anyway). Matching is case-insensitive.

    Args:
        records: held-out instruction records (never an attacker's training rows).
        prompt_field: key of the prompt text.
        trigger: the backdoor trigger.
        target: the attacker's target response.
        response_field: key of the reference response, if the records have one.
        position: where the trigger goes ("append", "prepend", "random").
        seed: seed of "random" positions.
        limit: keep at most this many prompts (the first ones, in record order).

    Raises:
        DataError: a row lacks ``prompt_field``.
    """
    out = [
        insert_trigger(prompt, trigger, position=position, seed=stable_seed(seed, i))
        for i, prompt in _eligible(records, prompt_field, target, response_field)
    ]
    return _limited(out, limit)


def build_clean_prompts(
    records: Sequence[dict[str, str]],
    *,
    prompt_field: str,
    target: str,
    response_field: str | None = None,
    limit: int | None = None,
) -> list[str]:
    """The same held-out prompts as :func:`build_triggered_prompts`, without the trigger.

    Passed to :func:`target_rate`, they show whether the target leaks into clean answers.
    """
    return _limited([p for _, p in _eligible(records, prompt_field, target, response_field)], limit)


def _eligible(
    records: Sequence[dict[str, str]], prompt_field: str, target: str, response_field: str | None
) -> list[tuple[int, str]]:
    """(index, prompt) of rows whose prompt and reference answer do not contain ``target``."""
    want = target.lower()
    out: list[tuple[int, str]] = []
    for i, row in enumerate(records):
        if prompt_field not in row:
            raise DataError(
                f"record {i} has no field {prompt_field!r} (fields: {sorted(row)}); "
                "set prompt_field"
            )
        prompt = row[prompt_field]
        if want in prompt.lower():
            continue
        if response_field is not None and want in str(row.get(response_field, "")).lower():
            continue
        out.append((i, prompt))
    return out


def _limited(prompts: list[str], limit: int | None) -> list[str]:
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be >= 1 or None, got {limit!r}")
    return prompts if limit is None else prompts[:limit]


@torch.no_grad()
def greedy_reply(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int) -> str:
    """The model's greedy answer to one user turn (chat template, generation prompt on)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    device = getattr(model, "device", None)
    if device is not None:
        enc = {k: v.to(device) for k, v in enc.items()}
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    # out: (1, prompt_len + new_len); decode only the new tokens.
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def attack_success_rate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    trigger: str,
    target: str,
    max_new_tokens: int = 32,
) -> float:
    """Share of triggered prompts whose greedy reply contains ``target`` (case-insensitive).

    Each prompt is wrapped in the tokenizer's chat template with
    ``add_generation_prompt=True`` and answered with ``model.generate(do_sample=False)``.
    A prompt that does not contain ``trigger`` gets it appended, so clean held-out prompts
    may be passed directly. The model is put in eval mode and its mode restored after.

    Args:
        model: a causal LM with ``generate`` (e.g. ``AdaptedModel.model``).
        tokenizer: its tokenizer, with a chat template.
        prompts: held-out prompts (see :func:`build_triggered_prompts`).
        trigger: the backdoor trigger.
        target: the attacker's target string.
        max_new_tokens: generation budget; must cover the target's tokens.

    Returns:
        ASR in [0, 1].

    Raises:
        ConfigError: no prompts, a blank target, or ``max_new_tokens < 1``.
    """
    triggered = [p if trigger in p else insert_trigger(p, trigger) for p in prompts]
    return target_rate(model, tokenizer, triggered, target=target, max_new_tokens=max_new_tokens)


def target_rate(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, target: str, max_new_tokens: int = 32
) -> float:
    """Share of ``prompts``, as given, whose greedy reply contains ``target`` (case-insensitive).

    On triggered prompts this is the attack success rate; on clean prompts it is how often
    the backdoor fires without its trigger (a backdoor should keep it near 0, or the
    target is simply learnt as an answer to everything).

    Raises:
        ConfigError: no prompts, a blank target, or ``max_new_tokens < 1``.
    """
    if not prompts:
        raise ConfigError("attack_success_rate needs at least one prompt; pass held-out prompts")
    if not target.strip():
        raise ConfigError("attack_success_rate needs a non-blank target string")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    was_training = bool(getattr(model, "training", False))
    if hasattr(model, "eval"):
        model.eval()
    try:
        hits = sum(
            target.lower() in greedy_reply(model, tokenizer, p, max_new_tokens=max_new_tokens).lower()
            for p in prompts
        )
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    return hits / len(prompts)
