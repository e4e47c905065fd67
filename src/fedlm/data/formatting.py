"""Turn records into token examples: chat-templated conversations, completions, LM chunks.

An example is ``{"input_ids": [...], "labels": [...]}``; ``labels`` is -100 where no
loss is taken (system and user turns, prompts, and padding).

Every chat-shaped format (instruction pairs, TRL ``messages``, conversational
prompt-completion) goes through one function, :func:`format_chat`, which renders the
conversation with the tokenizer's own chat template and puts the loss on the trained
turns only, as TRL's ``assistant_only_loss`` / ``completion_only_loss`` do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jinja2 import TemplateError

from fedlm.errors import DataError

IGNORE = -100
Example = dict[str, list[int]]
Message = dict[str, str]


def format_chat(
    messages: Sequence[Message], tokenizer, *, seq_len: int, trained: Sequence[bool] | None = None
) -> Example | None:
    """Chat-template a conversation with the loss on the trained turns only.

    A trained turn's labels cover its content and the template's end-of-turn marker (so
    the model learns to stop), not the role header before it: an assistant turn starts
    where the template's generation prompt ends. Boundaries are found by rendering the
    conversation up to each turn and comparing token ids with the full rendering, since
    a template may merge tokens at a boundary.

    Args:
        messages: ``{"role", "content"}`` turns, the first of them not trained.
        trained: one flag per turn; by default the assistant turns.

    Returns:
        None when truncation to ``seq_len`` leaves no trained token.

    Raises:
        DataError: the tokenizer has no chat template, the template rejects the
            conversation, or it renders earlier turns differently once later turns follow.
    """
    flags = list(trained) if trained is not None else [m["role"] == "assistant" for m in messages]
    full_text = _render(tokenizer, messages, generation_prompt=False)
    full_ids = _ids(tokenizer, full_text)
    labels = [IGNORE] * len(full_ids)
    for i, (message, train) in enumerate(zip(messages, flags, strict=True)):
        if not train:
            continue
        if i == 0:
            raise DataError("the first turn of a conversation cannot be trained on; put the prompt before it")
        last = i == len(messages) - 1
        before = _render(tokenizer, messages[:i], generation_prompt=message["role"] == "assistant")
        through = full_text if last else _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (full_text.startswith(through) and through.startswith(before)):
            raise DataError(
                f"the tokenizer's chat template renders turn {i} differently once later turns follow, so the loss "
                "cannot be placed on it; use a model whose template keeps earlier turns as they are, or split the "
                "conversation into prompt_completion rows"
            )
        start = _common_prefix(_ids(tokenizer, before), full_ids)
        end = len(full_ids) if last else _common_prefix(_ids(tokenizer, through), full_ids)
        labels[start:end] = full_ids[start:end]
    return _truncate(full_ids, labels, seq_len)


def format_instruction(prompt: str, response: str, tokenizer, *, seq_len: int, context: str = "") -> Example | None:
    """Chat-template one prompt/response pair with loss on the response tokens only.

    Returns None when truncation to ``seq_len`` leaves no response token.
    """
    user = f"{prompt}\n\n{context}" if context.strip() else prompt
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": response}]
    return format_chat(messages, tokenizer, seq_len=seq_len)


def format_completion(prompt: str, completion: str, tokenizer, *, seq_len: int) -> Example | None:
    """TRL's standard prompt-completion: plain ``prompt + completion`` text, then EOS.

    No chat template (as in TRL); the loss is on the completion and the EOS token.
    Returns None when truncation to ``seq_len`` leaves no completion token.
    """
    full_ids = _ids(tokenizer, prompt + completion)
    start = _common_prefix(_ids(tokenizer, prompt), full_ids)
    if tokenizer.eos_token_id is not None:
        full_ids.append(tokenizer.eos_token_id)
    labels = [IGNORE] * start + full_ids[start:]
    return _truncate(full_ids, labels, seq_len)


def chunk_lm(texts: Sequence[str], tokenizer, *, seq_len: int, min_tokens: int = 16) -> list[Example]:
    """Concatenate texts (separated by EOS) and cut into ``seq_len``-token chunks.

    A trailing partial chunk is kept when it has at least ``min_tokens`` tokens.
    """
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    out = []
    for start in range(0, len(ids), seq_len):
        chunk = ids[start : start + seq_len]
        if len(chunk) >= min(min_tokens, seq_len):
            out.append({"input_ids": chunk, "labels": list(chunk)})
    return out


def collate(batch: Sequence[Example], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: ``input_ids``, ``attention_mask``, ``labels``, each (B, T)."""
    width = max(len(e["input_ids"]) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _render(tokenizer, messages: Sequence[Message], *, generation_prompt: bool) -> str:
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
    except TemplateError as exc:
        raise DataError(f"the tokenizer's chat template rejects the conversation ({exc}); fix the turns") from None
    except ValueError as exc:
        if getattr(tokenizer, "chat_template", None):
            raise
        raise DataError(
            "the tokenizer has no chat template, so chat-shaped data (instruction, messages, conversational "
            "prompt_completion) cannot be formatted; use a chat/instruct model, or data.format=prompt_completion "
            "with text fields, or data.format=lm"
        ) from exc


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _truncate(ids: list[int], labels: list[int], seq_len: int) -> Example | None:
    ids, labels = ids[:seq_len], labels[:seq_len]
    if all(t == IGNORE for t in labels):
        return None
    return {"input_ids": ids, "labels": labels}
