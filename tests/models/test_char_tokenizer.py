"""The character-level tokenizer and the char-llama preset."""

from __future__ import annotations

from fedlm.models.char_tokenizer import LEAF_ALPHABET, char_tokenizer
from fedlm.models.loading import load_base_model, load_tokenizer


def test_one_id_per_leaf_character_and_round_trip():
    tok = char_tokenizer()
    assert len(LEAF_ALPHABET) == 80 and len(tok) == 80 + 1 + 4  # alphabet, <unk>, specials
    text = "To be, or not to be:\nthat is the question."
    ids = tok(text)["input_ids"]
    assert ids == [LEAF_ALPHABET.index(c) for c in text]
    assert tok.decode(ids) == text


def test_unknown_characters_and_specials():
    tok = char_tokenizer()
    ids = tok("a~b")["input_ids"]
    assert ids[1] == tok.unk_token_id and len(ids) == 3
    assert tok("<|endoftext|>")["input_ids"] == [tok.eos_token_id]
    assert tok.pad_token_id != tok.eos_token_id


def test_char_llama_preset_uses_the_character_vocabulary():
    model, tok = load_base_model("char-llama", seed=0)
    assert model.config.vocab_size == len(tok) == 85
    assert len(load_tokenizer("char-llama")) == 85
