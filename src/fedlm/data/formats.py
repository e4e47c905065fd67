"""Row formats: which fields a row needs, how it is checked, and how it becomes examples.

One class per ``data.format`` value, found through :data:`FORMATS`:

- ``lm``: plain text in ``data.text_field``, concatenated and cut into LM chunks.
- ``instruction``: ``data.prompt_field`` / ``data.response_field`` (+ optional context),
  chat-templated, loss on the response.
- ``messages``: TRL's conversational format, ``{"messages": [{"role", "content"}, ...]}``,
  chat-templated, loss on the assistant turns only (system and user turns masked).
- ``prompt_completion``: TRL's ``prompt`` / ``completion`` fields, both text (plain
  concatenation, loss on the completion and EOS) or both lists of messages
  (chat-templated, loss on the completion turns).

``data.format=auto`` picks the first of messages, prompt_completion, instruction whose
fields the first row has, else lm (:func:`resolve_format`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from fedlm.config.data import DataConfig
from fedlm.data.formatting import (
    Example,
    chunk_lm,
    format_chat,
    format_completion,
    format_instruction,
)
from fedlm.registry import Registry

Record = dict[str, Any]  # a row: text fields as str, conversation fields as lists of turns
Pair = tuple[Record | None, Example]  # an example and the row behind it (None for LM chunks)
ROLES = ("system", "user", "assistant")
PROMPT, COMPLETION = "prompt", "completion"  # TRL's field names


class RowFormat(ABC):
    """One ``data.format``: required fields, row checks, size in characters, examples."""

    name = ""

    @abstractmethod
    def fields(self, cfg: DataConfig) -> list[str]:
        """Fields every row must have."""

    def turn_fields(self, cfg: DataConfig) -> tuple[str, ...]:
        """Fields that may hold lists of ``{role, content}`` turns (kept as lists)."""
        return ()

    def check(self, row: Record, cfg: DataConfig) -> str | None:
        """Why ``row`` cannot be used (what is wrong and the fix), or None when it can."""
        missing = [f for f in self.fields(cfg) if row.get(f) is None]
        if missing:
            return f"missing field(s) {missing}; has {sorted(row)[:8]} (set data.format and data.*_field to match)"
        wrong = [f for f in self.fields(cfg) if f not in self.turn_fields(cfg) and not is_text(row[f])]
        if wrong:
            return f"field(s) {wrong} must be text"
        return None

    def chars(self, row: Record, cfg: DataConfig) -> int:
        """Characters of text in ``row`` (for ``data.min_client_chars``)."""
        return sum(_chars(row.get(f)) for f in self.fields(cfg))

    @abstractmethod
    def examples(self, rows: Sequence[Record], cfg: DataConfig, tokenizer) -> list[Pair]:
        """The rows' token examples, each paired with its row (truncated-away rows give none)."""


class LmFormat(RowFormat):
    name = "lm"

    def fields(self, cfg: DataConfig) -> list[str]:
        return [cfg.text_field]

    def examples(self, rows: Sequence[Record], cfg: DataConfig, tokenizer) -> list[Pair]:
        texts = [str(r[cfg.text_field]) for r in rows]
        return [(None, ex) for ex in chunk_lm(texts, tokenizer, seq_len=cfg.seq_len)]


class InstructionFormat(RowFormat):
    name = "instruction"

    def fields(self, cfg: DataConfig) -> list[str]:
        return [cfg.prompt_field, cfg.response_field]

    def examples(self, rows: Sequence[Record], cfg: DataConfig, tokenizer) -> list[Pair]:
        out = []
        for r in rows:
            ctx = str(r.get(cfg.context_field) or "") if cfg.context_field else ""
            ex = format_instruction(
                str(r[cfg.prompt_field]), str(r[cfg.response_field]), tokenizer, seq_len=cfg.seq_len, context=ctx
            )
            if ex is not None:
                out.append((r, ex))
        return out


class MessagesFormat(RowFormat):
    name = "messages"

    def fields(self, cfg: DataConfig) -> list[str]:
        return [cfg.messages_field]

    def turn_fields(self, cfg: DataConfig) -> tuple[str, ...]:
        return (cfg.messages_field,)

    def check(self, row: Record, cfg: DataConfig) -> str | None:
        field = cfg.messages_field
        if row.get(field) is None:
            return (
                f"missing field {field!r}; has {sorted(row)[:8]} (set data.messages_field to the field holding "
                "the conversation, or data.format to the rows' format)"
            )
        problem = check_turns(row[field], field=field)
        if problem is None and not any(t["role"] == "assistant" for t in row[field]):
            problem = f"{field!r} has no assistant turn, so there is nothing to train on; add the reply or drop the row"
        return problem

    def examples(self, rows: Sequence[Record], cfg: DataConfig, tokenizer) -> list[Pair]:
        out = []
        for r in rows:
            ex = format_chat(r[cfg.messages_field], tokenizer, seq_len=cfg.seq_len)
            if ex is not None:
                out.append((r, ex))
        return out


class PromptCompletionFormat(RowFormat):
    name = "prompt_completion"

    def fields(self, cfg: DataConfig) -> list[str]:
        return [PROMPT, COMPLETION]

    def turn_fields(self, cfg: DataConfig) -> tuple[str, ...]:
        return (PROMPT, COMPLETION)

    def check(self, row: Record, cfg: DataConfig) -> str | None:
        missing = [f for f in (PROMPT, COMPLETION) if row.get(f) is None]
        if missing:
            return f"missing field(s) {missing}; has {sorted(row)[:8]} (prompt_completion rows need both)"
        prompt, completion = row[PROMPT], row[COMPLETION]
        if is_text(prompt) and is_text(completion):
            return None if str(completion) else f"{COMPLETION!r} is empty, so there is nothing to train on"
        if isinstance(prompt, list) and isinstance(completion, list):
            return check_turns(prompt, field=PROMPT) or check_turns(completion, field=COMPLETION)
        return (
            f"{PROMPT!r} and {COMPLETION!r} must both be text or both be lists of {{role, content}} turns, "
            f"got {type(prompt).__name__} and {type(completion).__name__}"
        )

    def chars(self, row: Record, cfg: DataConfig) -> int:
        return _chars(row.get(PROMPT)) + _chars(row.get(COMPLETION))

    def examples(self, rows: Sequence[Record], cfg: DataConfig, tokenizer) -> list[Pair]:
        out = []
        for r in rows:
            prompt, completion = r[PROMPT], r[COMPLETION]
            if isinstance(prompt, list):
                trained = [False] * len(prompt) + [True] * len(completion)
                ex = format_chat([*prompt, *completion], tokenizer, seq_len=cfg.seq_len, trained=trained)
            else:
                ex = format_completion(str(prompt), str(completion), tokenizer, seq_len=cfg.seq_len)
            if ex is not None:
                out.append((r, ex))
        return out


FORMATS: Registry[RowFormat] = Registry("data format")
FORMATS.register("lm", LmFormat)
FORMATS.register("instruction", InstructionFormat)
FORMATS.register("messages", MessagesFormat)
FORMATS.register("prompt_completion", PromptCompletionFormat)


def resolve_format(cfg: DataConfig, first: Record) -> str:
    """``data.format``, or for ``auto`` the format whose fields the first row has."""
    if cfg.format != "auto":
        return cfg.format
    if isinstance(first.get(cfg.messages_field), list):
        return "messages"
    if PROMPT in first and COMPLETION in first:
        return "prompt_completion"
    if cfg.prompt_field in first and cfg.response_field in first:
        return "instruction"
    return "lm"


def check_turns(turns: object, *, field: str) -> str | None:
    """Why ``turns`` is not a conversation of ``{role, content}`` turns, or None.

    Roles are system, user and assistant; content is a string; the first turn is not the
    assistant's (a template renders no prompt before it).
    """
    if not isinstance(turns, list):
        return f"{field!r} must be a list of {{role, content}} turns, got {type(turns).__name__}"
    if not turns:
        return f"{field!r} is an empty conversation; give it at least a user turn and an assistant turn"
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            return f"{field}[{i}] must be an object with role and content, got {type(turn).__name__}"
        role, content = turn.get("role"), turn.get("content")
        if role not in ROLES:
            return f"{field}[{i}] has role {role!r}; roles are {', '.join(ROLES)} (rename it)"
        if not isinstance(content, str):
            return (
                f"{field}[{i}] content must be a string, got {type(content).__name__} (content parts are not "
                "supported; join the text parts into one string)"
            )
    if field != COMPLETION and turns[0]["role"] == "assistant":
        return f"{field!r} starts with an assistant turn; put the user's message (or a system prompt) before it"
    return None


def clean_turns(turns: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Only ``role`` and ``content`` of each checked turn (tables add absent keys as None)."""
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def is_text(value: object) -> bool:
    """A scalar that a record keeps as text (numbers are read as their text)."""
    return isinstance(value, (str, int, float))


def _chars(value: object) -> int:
    if isinstance(value, list):
        return sum(len(t.get("content", "")) for t in value if isinstance(t, dict))
    return len(str(value)) if value is not None else 0


__all__ = ["FORMATS", "ROLES", "Pair", "Record", "RowFormat", "check_turns", "clean_turns", "is_text", "resolve_format"]
