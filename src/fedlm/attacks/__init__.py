"""Attacks used to test fedlm's defences: backdoor data poisoning and update-space attacks.

Off by default (``AttackConfig.kind == "none"``). Malicious clients are chosen
deterministically (:func:`select_malicious`); data attacks rewrite their records
(:func:`poison_records`, :func:`poison_texts`); update attacks are client "transform"
stages (:func:`attack_stages`); :func:`attack_success_rate` measures a backdoor and
:func:`target_rate` on clean prompts checks that it stays hidden.
"""

from fedlm.attacks.metrics import (
    attack_success_rate,
    build_clean_prompts,
    build_triggered_prompts,
    target_rate,
)
from fedlm.attacks.poisoning import poison_records, poison_texts
from fedlm.attacks.selection import select_malicious
from fedlm.attacks.stages import ATTACKS, attack_stages, collude_updates, malicious_clients

__all__ = [
    "ATTACKS",
    "attack_stages",
    "attack_success_rate",
    "build_clean_prompts",
    "build_triggered_prompts",
    "collude_updates",
    "malicious_clients",
    "poison_records",
    "poison_texts",
    "select_malicious",
    "target_rate",
]
