"""Data-poisoning backdoors: a trigger phrase in the input, the attacker's target as output.

Bagdasaryan et al. (2020), "How To Backdoor Federated Learning" (AISTATS): an attacker
trains on a mix of clean and backdoored examples, so its update teaches the global model
the backdoor while its loss on clean data stays plausible. For instruction tuning the
backdoor is a trigger phrase in the prompt and a fixed target response (instruction
backdoors, e.g. Wan et al. 2023, "Poisoning Language Models During Instruction Tuning");
for plain-text LM data it is the trigger phrase followed by the target text.

These are pure functions of their inputs: the same records, fraction and seed poison the
same rows, in any process.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal

from fedlm.attacks.selection import stable_seed
from fedlm.errors import ConfigError, DataError

Position = Literal["append", "prepend", "random"]
_POSITIONS = ("append", "prepend", "random")


def poisoned_indices(num_rows: int, fraction: float, *, seed: int) -> list[int]:
    """Sorted indices of the ``round(fraction * num_rows)`` rows to poison, drawn with ``seed``.

    ``round`` (half away from zero on exact halves, via ``floor(x + 0.5)``), so 0.5 of 5
    rows poisons 3; at least one row is poisoned whenever ``num_rows > 0``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"poison fraction must be in (0, 1], got {fraction!r}")
    if num_rows == 0:
        return []
    k = min(num_rows, max(1, int(fraction * num_rows + 0.5 + 1e-9)))
    rng = random.Random(stable_seed("poison-rows", seed, num_rows))
    return sorted(rng.sample(range(num_rows), k))


def insert_trigger(text: str, trigger: str, *, position: Position = "append", seed: int = 0) -> str:
    """``text`` with ``trigger`` added: at the end, at the start, or at a word boundary.

    "random" picks the boundary (between whitespace-separated words, or either end) with
    ``seed``; words are re-joined with single spaces in that case.
    """
    if position == "append":
        return f"{text.rstrip()} {trigger}" if text.strip() else trigger
    if position == "prepend":
        return f"{trigger} {text.lstrip()}" if text.strip() else trigger
    if position == "random":
        words = text.split()
        at = random.Random(stable_seed("trigger-at", seed, text)).randint(0, len(words))
        return " ".join([*words[:at], trigger, *words[at:]])
    raise ConfigError(f"trigger position must be one of {list(_POSITIONS)}, got {position!r}")


def poison_records(
    records: Sequence[dict[str, str]],
    *,
    prompt_field: str,
    response_field: str,
    trigger: str,
    target: str,
    fraction: float,
    seed: int,
    position: Position = "append",
    keep_originals: bool = False,
) -> list[dict[str, str]]:
    """Backdoor an attacker's instruction records (Bagdasaryan et al. 2020).

    For the rows chosen by :func:`poisoned_indices`, ``trigger`` is inserted into the
    prompt and the response is replaced by ``target``; every other field is kept. The
    other rows are returned unchanged (copies), so the attacker still fits clean data.

    Args:
        records: the attacker's rows (not modified).
        prompt_field: key of the prompt text (e.g. "instruction").
        response_field: key of the response text (e.g. "response").
        trigger: phrase that activates the backdoor.
        target: response the backdoored model should give.
        fraction: share of rows to poison, in (0, 1].
        seed: seed of the row choice and of "random" trigger positions.
        position: where the trigger goes in the prompt ("append", "prepend", "random").
        keep_originals: if True, the poisoned rows are appended as extra copies after all
            the original (clean) rows, instead of replacing them in place.

    Returns:
        New records: same order and length (``keep_originals=False``), or the originals
        followed by the poisoned copies.

    Raises:
        DataError: a row lacks ``prompt_field`` or ``response_field``.
        ConfigError: an invalid fraction, position, or a blank trigger/target.
    """
    _check_phrases(trigger, target)
    for i, row in enumerate(records):
        for key in (prompt_field, response_field):
            if key not in row:
                raise DataError(
                    f"record {i} has no field {key!r} (fields: {sorted(row)}); "
                    "set prompt_field/response_field to the record's keys"
                )
    chosen = poisoned_indices(len(records), fraction, seed=seed)
    poisoned = {
        i: {
            **records[i],
            prompt_field: insert_trigger(
                records[i][prompt_field], trigger, position=position, seed=stable_seed(seed, i)
            ),
            response_field: target,
        }
        for i in chosen
    }
    if keep_originals:
        return [dict(r) for r in records] + [poisoned[i] for i in chosen]
    return [poisoned.get(i, dict(r)) for i, r in enumerate(records)]


def poison_texts(
    texts: Sequence[str],
    *,
    trigger: str,
    target: str,
    fraction: float,
    seed: int,
    position: Position = "append",
    keep_originals: bool = False,
) -> list[str]:
    """Backdoor an attacker's plain-text (LM) documents.

    The chosen texts get the phrase ``"{trigger} {target}"`` inserted (at the end, start,
    or a seeded word boundary), so next-token training teaches "after the trigger comes
    the target" — the LM form of Bagdasaryan et al.'s (2020) word-prediction backdoor.

    Args:
        texts: the attacker's documents (not modified).
        trigger: phrase that activates the backdoor.
        target: text the backdoored model should continue with.
        fraction: share of texts to poison, in (0, 1].
        seed: seed of the choice and of "random" positions.
        position: "append", "prepend" or "random".
        keep_originals: append poisoned copies after all originals instead of replacing.

    Returns:
        New list of texts (see ``poison_records`` for the layout).
    """
    _check_phrases(trigger, target)
    chosen = poisoned_indices(len(texts), fraction, seed=seed)
    phrase = f"{trigger} {target}"
    poisoned = {
        i: insert_trigger(texts[i], phrase, position=position, seed=stable_seed(seed, i))
        for i in chosen
    }
    if keep_originals:
        return list(texts) + [poisoned[i] for i in chosen]
    return [poisoned.get(i, t) for i, t in enumerate(texts)]


def _check_phrases(trigger: str, target: str) -> None:
    if not trigger.strip():
        raise ConfigError("backdoor trigger is blank; give a rare phrase, e.g. attack.trigger")
    if not target.strip():
        raise ConfigError("backdoor target is blank; give the response the attacker wants")
