"""Offline benchmark scoring: generated QA, plus the option scoring it re-exports.

Generated answers (QA benchmarks) are greedy continuations of the question, by default in
a user turn of the tokenizer's chat template, cut at EOS or the end-of-turn token, and
scored against every reference answer with SQuAD exact match and ROUGE-L F1
(:mod:`fedlm.eval.text_metrics`); an item scores its best reference, and the benchmark the
mean over items, in [0, 1].

Multiple-choice and label tasks are scored by option log-likelihood in
:mod:`fedlm.eval.likelihood` (prompt formats, ``acc`` and ``acc_norm`` are documented
there). Its public names are re-exported here, so ``fedlm.eval.harness`` stays the one
import for every benchmark score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedlm.errors import DataError
from fedlm.eval.likelihood import (
    LETTERS,
    PUBMEDQA_LABELS,
    LabelItem,
    MCItem,
    _context,
    _max_length,
    _mean,
    _pad_id,
    label_accuracy,
    label_prompt,
    macro_f1,
    mc_prompt,
    multiple_choice_accuracy,
    score_choices,
    subsample,
)

# Not in __all__ but reachable here as before (the tests check batching through them).
from fedlm.eval.likelihood import Normalize as Normalize
from fedlm.eval.likelihood import _encode_pair as _encode_pair
from fedlm.eval.likelihood import _loglikelihoods as _loglikelihoods
from fedlm.eval.text_metrics import exact_match, rouge_l_f1
from fedlm.models.device import module_device


@dataclass(frozen=True)
class QAItem:
    """A question with one or more acceptable reference answers, for generation."""

    question: str
    answers: tuple[str, ...]
    id: str = ""


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat: bool = True,
) -> list[str]:
    """Greedy answers to ``prompts``, each in a user turn of the chat template.

    Prompts are left-padded so that every row's last prompt token sits at the same
    position; rows stop at EOS or the chat template's end-of-turn token.
    """
    if max_new_tokens < 1:
        raise DataError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model.eval()
    pad = _pad_id(tokenizer)
    room = _max_length(model) - max_new_tokens  # prompt tokens that fit with the answer
    if room < 1:
        raise DataError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt; lower it")
    stops = _stop_ids(tokenizer)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [
            tokenizer(_context(tokenizer, p, chat=chat), add_special_tokens=False)["input_ids"][
                -room:
            ]
            for p in prompts[start : start + batch_size]
        ]
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)  # (B, T), left-padded
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, width - len(e) :] = torch.tensor(e)
            mask[row, width - len(e) :] = 1
        device = module_device(model)
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=stops,
        )  # (B, T + new)
        for row in generated[:, width:]:
            out.append(
                tokenizer.decode(_until_stop(row.tolist(), stops), skip_special_tokens=True).strip()
            )
    return out


def qa_generation_scores(
    model: torch.nn.Module,
    tokenizer,
    items: Sequence[QAItem],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    max_items: int | None = None,
    chat: bool = True,
) -> dict:
    """Mean SQuAD exact match and ROUGE-L F1 of greedy answers (best over references).

    Returns:
        ``{"exact_match", "rouge_l_f1", "count"}``, means in [0, 1].
    """
    items = subsample(items, max_items)
    answers = generate_answers(
        model,
        tokenizer,
        [item.question for item in items],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        chat=chat,
    )
    return {
        "exact_match": _mean([exact_match(a, item.answers) for a, item in zip(answers, items)]),
        "rouge_l_f1": _mean([rouge_l_f1(a, item.answers) for a, item in zip(answers, items)]),
        "count": len(items),
    }


# ---------------------------------------------------------------------------- internals


def _stop_ids(tokenizer) -> list[int]:
    stops = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")  # ChatML end of turn
    if isinstance(end_turn, int) and end_turn != tokenizer.unk_token_id and end_turn not in stops:
        stops.append(end_turn)
    return stops


def _until_stop(ids: list[int], stops: list[int]) -> list[int]:
    for k, t in enumerate(ids):
        if t in stops:
            return ids[:k]
    return ids


__all__ = [
    "LETTERS",
    "PUBMEDQA_LABELS",
    "LabelItem",
    "MCItem",
    "QAItem",
    "generate_answers",
    "label_accuracy",
    "label_prompt",
    "macro_f1",
    "mc_prompt",
    "multiple_choice_accuracy",
    "qa_generation_scores",
    "score_choices",
    "subsample",
]
