"""A character-level tokenizer for Shakespeare-style next-character prediction.

LEAF's Shakespeare benchmark (Caldas et al. 2018), after McMahan et al. 2017, predicts the
next character over a fixed alphabet of 80 symbols. This tokenizer maps each of them to
one id, any other character to ``<unk>``, and adds the project's special tokens, so it is
fixed in advance and never trained on client data. Decoding concatenates characters.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from fedlm.models.tokenizers import CHAT_TEMPLATE, SPECIALS

# LEAF's ALL_LETTERS (leaf/models/utils/language_utils.py): 80 characters.
LEAF_ALPHABET = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
UNK = "<unk>"


def char_tokenizer(alphabet: str = LEAF_ALPHABET) -> PreTrainedTokenizerFast:
    """One id per character of ``alphabet`` (80 for LEAF's), then ``<unk>`` and the specials."""
    vocab = {ch: i for i, ch in enumerate(dict.fromkeys(alphabet))}
    for tok in (UNK, *SPECIALS):
        vocab[tok] = len(vocab)
    # BPE without merges and without a pre-tokenizer splits text into single characters.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIALS))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token=UNK,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


__all__ = ["LEAF_ALPHABET", "char_tokenizer"]
