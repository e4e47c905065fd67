"""Answer-string metrics for generated QA: SQuAD exact match and ROUGE-L F1.

Exact match follows the SQuAD v1.1 evaluation script's normalisation (Rajpurkar et al.
2016, "SQuAD: 100,000+ Questions for Machine Comprehension of Text"): lowercase, drop
punctuation, drop the articles a/an/the, collapse whitespace. ROUGE-L (Lin 2004, "ROUGE: A
Package for Automatic Evaluation of Summaries") is the F-measure (beta = 1) of the longest
common subsequence of word tokens. Pure Python, no torch.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_WORD = re.compile(r"[a-z0-9]+")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces.

    >>> normalize_answer("The  Heart, (mostly)!")
    'heart mostly'
    """
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in refs))


def rouge_tokens(text: str) -> list[str]:
    """Word tokens for ROUGE: lowercase runs of ASCII letters and digits (no stemming).

    This matches the default tokenisation of the reference ROUGE scorer without its
    optional Porter stemmer, so scores are comparable to ``rouge_l`` without stemming.
    """
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists, O(len(a) * len(b))."""
    if len(a) < len(b):
        a, b = b, a  # keep the row over the shorter list: O(min) memory
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, start=1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1]


def rouge_l_f1(prediction: str, references: str | Sequence[str]) -> float:
    """ROUGE-L F1 (Lin 2004): 2PR/(P+R), P = LCS/|pred|, R = LCS/|ref|, best over references.

    An empty prediction or reference (no word tokens) scores 0.0.
    """
    refs = [references] if isinstance(references, str) else list(references)
    pred = rouge_tokens(prediction)
    best = 0.0
    for ref in refs:
        gold = rouge_tokens(ref)
        common = lcs_length(pred, gold) if pred and gold else 0
        if common == 0:
            continue
        precision, recall = common / len(pred), common / len(gold)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


__all__ = ["exact_match", "lcs_length", "normalize_answer", "rouge_l_f1", "rouge_tokens"]
