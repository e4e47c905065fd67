"""Turn records into token examples: chat-formatted instructions or LM chunks.

An example is ``{"input_ids": [...], "labels": [...]}``; ``labels`` is -100 where no
loss is taken (the prompt of an instruction, and padding).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE = -100
Example = dict[str, list[int]]


def format_instruction(prompt: str, response: str, tokenizer, *, seq_len: int, context: str = "") -> Example | None:
    """Chat-template one prompt/response pair with loss on the response tokens only.

    Returns None when truncation to ``seq_len`` leaves no response token.
    """
    user = f"{prompt}\n\n{context}" if context.strip() else prompt
    messages = [{"role": "user", "content": user}]
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    # The answer starts where the tokenised prompt stops matching the full text
    # (templates may merge tokens at the boundary, so compare rather than assume).
    start = 0
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        start += 1
    labels = [IGNORE] * start + full_ids[start:]
    full_ids, labels = full_ids[:seq_len], labels[:seq_len]
    if all(t == IGNORE for t in labels):
        return None
    return {"input_ids": full_ids, "labels": labels}


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
