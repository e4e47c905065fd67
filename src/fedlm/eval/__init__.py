"""Evaluation: held-out LM metrics."""

from fedlm.eval.metrics import LMScore, score_lm

__all__ = ["LMScore", "score_lm"]
