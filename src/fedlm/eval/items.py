"""Benchmark items as fedlm's loaders return them (no torch: loaders and task writers share them)."""

from __future__ import annotations

from dataclasses import dataclass

from fedlm.errors import DataError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
PUBMEDQA_LABELS: tuple[str, ...] = ("yes", "no", "maybe")


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


@dataclass(frozen=True)
class QAItem:
    """A question with one or more acceptable reference answers, for generation."""

    question: str
    answers: tuple[str, ...]
    id: str = ""


__all__ = ["LETTERS", "PUBMEDQA_LABELS", "LabelItem", "MCItem", "QAItem"]
