"""Option scoring by log-likelihood: multiple-choice and label benchmarks.

Multiple-choice and label tasks are scored the way lm-evaluation-harness does (Gao et al.
2021, "A framework for few-shot language model evaluation"): each option is a continuation
of the prompt, its score is the summed log-probability of its tokens, and the prediction is
the best-scoring option. No judge model is involved. (Generated answers, scored by exact
match and ROUGE-L, are :mod:`fedlm.eval.harness`'s, which re-exports everything here.)

Prompt formats (documented here because scores depend on them):

* Multiple choice (MMLU, Hendrycks et al. 2021, "Measuring Massive Multitask Language
  Understanding"; letters scored as in lm-evaluation-harness's MMLU task)::

      Question: <question>
      A. <choice 0>
      B. <choice 1>
      ...
      Answer:

  and the options are the continuations ``" A"``, ``" B"``, ...
* Labels (PubMedQA, Jin et al. 2019, "PubMedQA: A Dataset for Biomedical Research Question
  Answering"): ``"<item prompt>\\nAnswer:"`` with continuations ``" yes"``, ``" no"``,
  ``" maybe"``.
* ``chat=True`` puts the prompt in a user turn of the tokenizer's chat template, opens the
  assistant turn, and scores the option with its leading whitespace removed (``"A"``), since
  the assistant's answer starts a fresh line.

Two scores per option: ``acc`` uses the summed log-likelihood; ``acc_norm`` divides it by
the option's length in characters (lm-evaluation-harness's ``acc_norm``), which removes the
bias towards short options. For single-letter options the two agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from fedlm.errors import DataError
from fedlm.models.device import module_device

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PUBMEDQA_LABELS: tuple[str, ...] = ("yes", "no", "maybe")
Normalize = Literal["token", "char"] | None


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question; ``answer`` is the index of the right choice."""

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str = ""

    def __post_init__(self) -> None:
        if not 2 <= len(self.choices) <= len(LETTERS):
            raise DataError(
                f"MCItem needs 2..{len(LETTERS)} choices, got {len(self.choices)} "
                f"for question {self.question[:60]!r}"
            )
        if not 0 <= self.answer < len(self.choices):
            raise DataError(
                f"MCItem answer {self.answer} is outside 0..{len(self.choices) - 1} "
                f"for question {self.question[:60]!r}"
            )


@dataclass(frozen=True)
class LabelItem:
    """A prompt whose answer is one label from a fixed set (yes/no/maybe)."""

    prompt: str
    label: str
    id: str = ""



def mc_prompt(item: MCItem) -> str:
    """The lettered multiple-choice prompt (see the module docstring)."""
    lines = [f"Question: {item.question.strip()}"]
    lines += [f"{LETTERS[i]}. {choice.strip()}" for i, choice in enumerate(item.choices)]
    lines.append("Answer:")
    return "\n".join(lines)


def label_prompt(item: LabelItem) -> str:
    """The label prompt: the item's prompt followed by ``\\nAnswer:``."""
    return f"{item.prompt.rstrip()}\nAnswer:"


def score_choices(
    model: torch.nn.Module,
    tokenizer,
    prompt: str,
    choices: Sequence[str],
    *,
    chat: bool = False,
    normalize: Normalize = None,
    max_length: int | None = None,
) -> list[float]:
    """Log-likelihood of each continuation in ``choices`` given ``prompt``, one forward pass.

    Args:
        model: a causal LM returning ``.logits`` of shape (B, T, V).
        tokenizer: its tokenizer (needs a chat template when ``chat``).
        prompt: the context; options are appended to it verbatim (include the space: " A").
        choices: the continuations to score.
        chat: wrap the prompt in the chat template and strip the options' leading spaces.
        normalize: None for the sum of token log-probs (nats); "token" divides by the
            option's token count; "char" by its character count (lm-eval ``acc_norm``).
        max_length: longest sequence fed to the model; longer prompts lose tokens from the
            left. Defaults to the model's ``max_position_embeddings``.

    Returns:
        One score per choice, in order; higher is more likely.
    """
    texts = [_continuation(c, chat=chat) for c in choices]
    context = _context(tokenizer, prompt, chat=chat)
    requests = [_encode_pair(tokenizer, context, text) for text in texts]
    sums = _loglikelihoods(
        model,
        requests,
        pad_id=_pad_id(tokenizer),
        batch_size=max(len(requests), 1),
        max_length=max_length or _max_length(model),
    )
    return [
        _normalized(s, len(req[1]), len(t), normalize) for s, req, t in zip(sums, requests, texts)
    ]


def multiple_choice_accuracy(
    model: torch.nn.Module,
    tokenizer,
    items: Sequence[MCItem],
    *,
    chat: bool = False,
    batch_size: int = 8,
    max_items: int | None = None,
    max_length: int | None = None,
) -> dict:
    """Letter-scored multiple-choice accuracy (see the module docstring for the prompt).

    Returns:
        ``{"accuracy", "acc_norm", "gold_prob", "count", "subjects": {subject: {"accuracy",
        "count"}}}``; accuracies are fractions in [0, 1]; ``gold_prob`` is the mean share of
        the softmax over the options' summed log-likelihoods that falls on the right one.
    """
    items = subsample(items, max_items)
    prompts = [mc_prompt(item) for item in items]
    options = [[f" {LETTERS[i]}" for i in range(len(item.choices))] for item in items]
    best, best_norm, probs = _choose(
        model, tokenizer, prompts, options, chat=chat, batch_size=batch_size, max_length=max_length
    )
    hits = [int(p == item.answer) for p, item in zip(best, items)]
    hits_norm = [int(p == item.answer) for p, item in zip(best_norm, items)]
    per_subject: dict[str, list[int]] = {}
    for hit, item in zip(hits, items):
        per_subject.setdefault(item.subject, []).append(hit)
    return {
        "accuracy": _mean(hits),
        "acc_norm": _mean(hits_norm),
        "gold_prob": _mean([p[item.answer] for p, item in zip(probs, items)]),
        "count": len(items),
        "subjects": {
            s: {"accuracy": _mean(h), "count": len(h)} for s, h in sorted(per_subject.items())
        },
    }


def label_accuracy(
    model: torch.nn.Module,
    tokenizer,
    items: Sequence[LabelItem],
    *,
    labels: Sequence[str] = PUBMEDQA_LABELS,
    chat: bool = False,
    batch_size: int = 8,
    max_items: int | None = None,
    max_length: int | None = None,
) -> dict:
    """Classify each item by scoring every label as a continuation (PubMedQA's yes/no/maybe).

    Returns:
        ``{"accuracy", "acc_norm", "macro_f1", "gold_prob", "count", "predicted": {label: n}}``;
        ``macro_f1`` uses the summed-log-likelihood predictions; ``gold_prob`` as in
        :func:`multiple_choice_accuracy`.
    """
    unknown = sorted({item.label for item in items} - set(labels))
    if unknown:
        raise DataError(f"items carry label(s) {unknown} outside the label set {list(labels)}")
    items = subsample(items, max_items)
    prompts = [label_prompt(item) for item in items]
    options = [[f" {label}" for label in labels] for _ in items]
    best, best_norm, probs = _choose(
        model, tokenizer, prompts, options, chat=chat, batch_size=batch_size, max_length=max_length
    )
    gold = [item.label for item in items]
    pred = [labels[i] for i in best]
    pred_norm = [labels[i] for i in best_norm]
    counts = Counter(pred)
    return {
        "accuracy": _mean([int(p == g) for p, g in zip(pred, gold)]),
        "acc_norm": _mean([int(p == g) for p, g in zip(pred_norm, gold)]),
        "macro_f1": macro_f1(gold, pred, labels=labels),
        "gold_prob": _mean([p[list(labels).index(g)] for p, g in zip(probs, gold)]),
        "count": len(items),
        "predicted": {label: counts.get(label, 0) for label in labels},
    }


def macro_f1(gold: Sequence[str], pred: Sequence[str], *, labels: Sequence[str]) -> float:
    """Unweighted mean over labels of per-label F1 = 2TP / (2TP + FP + FN).

    A label that is neither gold nor predicted anywhere (TP + FP + FN = 0) is left out of
    the mean rather than counted as 0 or 1; with no scorable label the result is NaN.
    """
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, pred))
        fp = sum(g != label and p == label for g, p in zip(gold, pred))
        fn = sum(g == label and p != label for g, p in zip(gold, pred))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else float("nan")


def subsample(items: Sequence, max_items: int | None) -> list:
    """At most ``max_items`` items, evenly spaced over the list (deterministic).

    Even spacing keeps every subject of a file-ordered benchmark represented, which taking
    the first ``max_items`` would not.
    """
    items = list(items)
    if max_items is None or max_items >= len(items):
        return items
    if max_items < 1:
        raise DataError(f"max_items must be >= 1 or None, got {max_items}")
    return [items[i * len(items) // max_items] for i in range(max_items)]


# ---------------------------------------------------------------------------- internals
# ``_context``, ``_pad_id``, ``_max_length`` and ``_mean`` serve harness's generation too.


def _choose(
    model, tokenizer, prompts, options, *, chat, batch_size, max_length
) -> tuple[list[int], list[int], list[list[float]]]:
    """Argmax option per prompt by summed and by char-normalised log-likelihood.

    Also each prompt's softmax over its options' summed log-likelihoods: how much of the
    choice's probability mass the model puts on each option, a score that moves before
    any argmax does.
    """
    requests, spans, lengths = [], [], []
    for prompt, opts in zip(prompts, options):
        context = _context(tokenizer, prompt, chat=chat)
        texts = [_continuation(o, chat=chat) for o in opts]
        spans.append((len(requests), len(requests) + len(texts)))
        requests += [_encode_pair(tokenizer, context, t) for t in texts]
        lengths += [len(t) for t in texts]
    sums = _loglikelihoods(
        model,
        requests,
        pad_id=_pad_id(tokenizer),
        batch_size=batch_size,
        max_length=max_length or _max_length(model),
    )
    best, best_norm, probs = [], [], []
    for lo, hi in spans:
        best.append(max(range(hi - lo), key=lambda i: sums[lo + i]))  # first on ties
        best_norm.append(max(range(hi - lo), key=lambda i: sums[lo + i] / lengths[lo + i]))
        probs.append(torch.softmax(torch.tensor(sums[lo:hi], dtype=torch.float64), 0).tolist())
    return best, best_norm, probs


@torch.no_grad()
def _loglikelihoods(
    model: torch.nn.Module,
    requests: Sequence[tuple[list[int], list[int]]],
    *,
    pad_id: int,
    batch_size: int,
    max_length: int,
) -> list[float]:
    """Sum of log p(continuation tokens | context tokens) for each (context, continuation).

    Sequences longer than ``max_length`` lose context tokens from the left. Requests run
    longest first so each right-padded batch wastes little; results come back in order.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    seqs = []
    for ctx, cont in requests:
        if len(cont) >= max_length:
            raise DataError(
                f"an option of {len(cont)} tokens does not fit max_length={max_length} "
                "with any context; shorten the option or raise max_length"
            )
        seqs.append(((ctx + cont)[-max_length:], len(cont)))
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    result = [0.0] * len(seqs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(seqs[i][0]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # (B, T), right-padded
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
            mask[row, : len(seqs[i][0])] = 1
        device = module_device(model)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
        for row, i in enumerate(chunk):
            n, c = len(seqs[i][0]), seqs[i][1]
            # Positions n-c-1 .. n-2 predict the continuation tokens at n-c .. n-1.
            logp = torch.log_softmax(logits[row, n - c - 1 : n - 1].float(), dim=-1)  # (c, V)
            result[i] = float(logp.gather(-1, ids[row, n - c : n, None].to(device)).sum())
    return result


def _context(tokenizer, prompt: str, *, chat: bool) -> str:
    if not chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("chat=True needs a tokenizer with a chat template; use chat=False")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def _continuation(option: str, *, chat: bool) -> str:
    return option.lstrip() if chat else option


def _encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), split where the joint encoding leaves the context.

    Encoding the joint text and splitting at the common prefix keeps the tokens the model
    would see in running text, even where a tokenizer merges across the boundary.
    """
    if not continuation:
        raise DataError("an option is empty; every option must have at least one character")
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    split = 0
    for a, b in zip(ctx, whole):
        if a != b:
            break
        split += 1
    split = min(split, len(whole) - 1)  # at least one continuation token
    head = whole[:split]
    if not head:  # nothing to condition on: start from BOS/EOS like a fresh document
        bos = (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        )
        head = [bos]
    return head, whole[split:]


def _normalized(total: float, tokens: int, chars: int, normalize: Normalize) -> float:
    if normalize is None:
        return total
    if normalize == "token":
        return total / tokens
    if normalize == "char":
        return total / chars
    raise DataError(f"normalize must be None, 'token' or 'char', got {normalize!r}")


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
    "LabelItem",
    "MCItem",
    "label_accuracy",
    "label_prompt",
    "macro_f1",
    "mc_prompt",
    "multiple_choice_accuracy",
    "score_choices",
    "subsample",
]
