import pytest
import torch

from fedlm.data.formatting import (
    IGNORE,
    chunk_lm,
    collate,
    format_chat,
    format_completion,
    format_instruction,
)
from fedlm.errors import DataError
from fedlm.models.tokenizers import byte_tokenizer


def test_loss_mask_covers_exactly_the_answer():
    tok = byte_tokenizer()
    ex = format_instruction("What is 2+2?", "Four.", tok, seq_len=512)
    ids, labels = ex["input_ids"], ex["labels"]
    n_prompt = sum(1 for t in labels if t == IGNORE)
    prompt_text = tok.decode(ids[:n_prompt])
    answer_text = tok.decode(ids[n_prompt:])
    assert prompt_text == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    assert answer_text == "Four.<|im_end|>\n"
    assert labels[n_prompt:] == ids[n_prompt:]
    assert all(t == IGNORE for t in labels[:n_prompt])


def test_context_is_part_of_the_prompt_not_the_answer():
    tok = byte_tokenizer()
    ex = format_instruction("Summarise.", "Short.", tok, seq_len=512, context="Long text here.")
    n_prompt = sum(1 for t in ex["labels"] if t == IGNORE)
    assert "Long text here." in tok.decode(ex["input_ids"][:n_prompt])


def test_truncation_that_removes_the_answer_drops_the_example():
    tok = byte_tokenizer()
    assert format_instruction("x" * 100, "yes", tok, seq_len=40) is None
    kept = format_instruction("hi", "an answer far too long to fit in the window", tok, seq_len=40)
    assert kept is not None and len(kept["input_ids"]) == 40


def test_chunk_lm_cuts_fixed_windows_and_keeps_a_long_enough_tail():
    tok = byte_tokenizer()
    chunks = chunk_lm(["a" * 50, "b" * 30], tok, seq_len=32, min_tokens=16)
    # 50 + eos + 30 + eos = 82 tokens -> 32, 32, 18
    assert [len(c["input_ids"]) for c in chunks] == [32, 32, 18]
    assert all(c["labels"] == c["input_ids"] for c in chunks)
    assert len(chunk_lm(["a" * 70], tok, seq_len=32, min_tokens=16)) == 2  # tail of 7 dropped


def test_collate_pads_right_and_masks_padding():
    batch = collate([{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3]}, {"input_ids": [4], "labels": [4]}], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 2, 3], [4, IGNORE, IGNORE]]
    assert batch["input_ids"].dtype == torch.long


# ------------------------------------------------------------------ conversations


def _trained_segments(tok, ex) -> list[str]:
    """Decoded runs of consecutive tokens that carry a loss."""
    runs: list[list[int]] = []
    prev = IGNORE
    for tid, lab in zip(ex["input_ids"], ex["labels"], strict=True):
        if lab != IGNORE:
            assert lab == tid  # a trained token predicts itself (the model shifts)
            if prev == IGNORE:
                runs.append([])
            runs[-1].append(tid)
        prev = lab
    return [tok.decode(r) for r in runs]


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


def test_format_chat_trains_on_every_assistant_turn_and_nothing_else():
    tok = byte_tokenizer()
    ex = format_chat(CONVERSATION, tok, seq_len=512)
    # each assistant turn: its content and the template's end-of-turn marker (ChatML)
    assert _trained_segments(tok, ex) == ["Paris.<|im_end|>\n", "Rome.<|im_end|>\n"]
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(CONVERSATION, tokenize=False)


def test_format_chat_truncation_keeps_the_turns_that_fit():
    tok = byte_tokenizer()
    full = format_chat(CONVERSATION, tok, seq_len=512)
    labels = full["labels"]
    first = next(i for i, lab in enumerate(labels) if lab != IGNORE)
    first_end = next(i for i in range(first, len(labels)) if labels[i] == IGNORE)  # end of "Paris.<|im_end|>\n"
    cut = format_chat(CONVERSATION, tok, seq_len=first_end + 3)
    assert _trained_segments(tok, cut) == ["Paris.<|im_end|>\n"]  # the second turn's tokens are cut
    assert format_chat(CONVERSATION, tok, seq_len=first_end - 1) == {
        "input_ids": full["input_ids"][: first_end - 1], "labels": labels[: first_end - 1]}
    assert format_chat(CONVERSATION, tok, seq_len=20) is None  # the system turn alone


def test_format_instruction_is_a_two_turn_conversation():
    tok = byte_tokenizer()
    pair = format_instruction("What is 2+2?", "Four.", tok, seq_len=512)
    chat = format_chat([{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "Four."}],
                       tok, seq_len=512)
    assert pair == chat


def test_conversational_completion_trains_on_the_completion_turns():
    tok = byte_tokenizer()
    prompt = CONVERSATION[:4]
    ex = format_chat([*prompt, CONVERSATION[4]], tok, seq_len=512, trained=[False] * 4 + [True])
    assert _trained_segments(tok, ex) == ["Rome.<|im_end|>\n"]  # the earlier assistant turn is prompt


def test_text_completion_is_plain_text_with_loss_on_the_completion_and_eos():
    tok = byte_tokenizer()
    ex = format_completion("The sky is", " blue.", tok, seq_len=64)
    assert tok.decode(ex["input_ids"], skip_special_tokens=False) == "The sky is blue.<|endoftext|>"
    assert _trained_segments(tok, ex) == [" blue.<|endoftext|>"]
    assert format_completion("x" * 40, "yes", tok, seq_len=40) is None


def test_a_tokenizer_without_a_chat_template_is_a_clear_error():
    tok = byte_tokenizer()
    tok.chat_template = None
    with pytest.raises(DataError, match="no chat template"):
        format_chat(CONVERSATION, tok, seq_len=512)


def test_a_template_that_rewrites_earlier_turns_is_a_clear_error():
    tok = byte_tokenizer()
    # Renders only the last turn's content: earlier turns change once later ones follow.
    tok.chat_template = "{{ messages[-1]['content'] }}{% if add_generation_prompt %}>{% endif %}"
    with pytest.raises(DataError, match="renders turn 2 differently"):
        format_chat(CONVERSATION, tok, seq_len=512)


def test_a_template_that_rejects_the_conversation_is_a_clear_error():
    tok = byte_tokenizer()
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    with pytest.raises(DataError, match=r"rejects the conversation.*must alternate"):
        format_chat(CONVERSATION, tok, seq_len=512)
