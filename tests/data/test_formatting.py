import torch

from fedlm.data.formatting import IGNORE, chunk_lm, collate, format_instruction
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
