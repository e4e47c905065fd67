"""Offline benchmark scoring: generated QA here, option scoring re-exported.

Multiple-choice and label benchmarks (MMLU-Redux medical, PubMedQA) are scored by
lm-evaluation-harness (:mod:`fedlm.eval.likelihood`, tasks in :mod:`fedlm.eval.lm_tasks`);
its public names are re-exported here, so ``fedlm.eval.harness`` stays the one import for
every benchmark score.

Generated answers (the ``qa`` benchmark) stay hand-written, because lm-eval cannot serve
them as fedlm defines them: the file is any user JSON/JSONL with configurable fields and
several reference answers per item, scored by SQuAD exact match and ROUGE-L F1 taking the
best reference (:mod:`fedlm.eval.text_metrics`); lm-eval has neither metric over several
references, and no published lm-eval figure exists for such a file to compare with.
Answers are greedy continuations of the question, by default in a user turn of the
tokenizer's chat template, cut at EOS or the end-of-turn token, batched left-padded; an
item scores its best reference, and the benchmark the mean over items, in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedlm.errors import DataError
from fedlm.eval.items import LETTERS, PUBMEDQA_LABELS, LabelItem, MCItem, QAItem
from fedlm.eval.likelihood import (
    ItemScore,
    label_metrics,
    macro_f1,
    make_lm,
    mc_metrics,
    score_tasks,
    subsample,
)
from fedlm.eval.text_metrics import exact_match, rouge_l_f1
from fedlm.models.device import module_device


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


def _context(tokenizer, prompt: str, *, chat: bool) -> str:
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("chat=True needs a tokenizer with a chat template; use chat=False")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    return pad


def _max_length(model) -> int:
    return int(getattr(getattr(model, "config", None), "max_position_embeddings", None) or 2048)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


__all__ = [
    "LETTERS",
    "PUBMEDQA_LABELS",
    "ItemScore",
    "LabelItem",
    "MCItem",
    "QAItem",
    "generate_answers",
    "label_metrics",
    "macro_f1",
    "make_lm",
    "mc_metrics",
    "qa_generation_scores",
    "score_tasks",
    "subsample",
]
