"""The adversary capability: the attack suite run against fedlm's own defences.

Attacks are off by default. When one is configured, malicious clients are chosen once
from the federation's client ids; data attacks rewrite their rows before formatting (the
rows hook) and may train longer (``attack.local_steps``), update attacks run as client
"transform" stages, and the backdoor's success rate is measured before and after training.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from fedlm.attacks import (
    attack_stages,
    attack_success_rate,
    build_clean_prompts,
    build_triggered_prompts,
    malicious_clients,
    poison_records,
    poison_texts,
    target_rate,
)
from fedlm.client.local import TrainOptions
from fedlm.config.schema import ExperimentConfig
from fedlm.data.federated import FederatedData, RowsHook
from fedlm.data.sources import Record
from fedlm.engine.capability import Capability, EngineContext, FinishedRun
from fedlm.engine.checkpoint import ServerState
from fedlm.stages import RoundPlan, Stage

DEFAULT_POISON_FRACTION = 0.5


class Adversary(Capability):
    """Malicious clients, their attack, and the attack's success (``attack``).

    Always built, so that ``summary.json``'s ``robustness`` names the aggregator and the
    attack ("none") of every run.
    """

    name = "adversary"

    @classmethod
    def build(cls, ctx: EngineContext) -> Adversary:
        return cls(ctx)

    @classmethod
    def rows_hook(cls, config: ExperimentConfig) -> RowsHook | None:
        return poison_hook(config)

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx, self.config = ctx, ctx.config
        attack = ctx.config.attack
        self.malicious = sorted(malicious_clients(attack, ctx.client_ids))
        # Data attackers may train longer than honest clients (attack.local_steps).
        self.attacker_steps = attack.local_steps if attack.poisons_data else None
        self.long_steps = frozenset(self.malicious) if self.attacker_steps else frozenset()
        self.prompts = triggered_prompts(ctx.config, ctx.data) if attack.poisons_data else []

    def client_stages(self) -> list[Stage]:
        """Update attacks, as client "transform" stages of the malicious clients."""
        return attack_stages(self.config.attack, self.ctx.client_ids, server_lr=self.config.server_opt.lr or 1.0)

    def train_options(self, plan: RoundPlan, client_id: str, options: TrainOptions,
                      client_state: dict[str, Any]) -> TrainOptions:
        if client_id in self.long_steps:
            return replace(options, steps=self.attacker_steps)
        return options

    def initial_record(self, state: ServerState) -> dict[str, Any]:
        model = self.ctx.model
        asr = measure_attack(self.config, model.model, model.tokenizer, self.prompts)
        return {"attack_success_rate": asr} if asr is not None else {}

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        model = self.ctx.model
        return {"robustness": {
            "aggregator": self.config.robust.aggregator,
            "attack": self.config.attack.kind,
            "malicious_clients": self.malicious,
            "attack_success_rate": measure_attack(self.config, model.model, model.tokenizer, self.prompts),
            "attack_success_rate_initial": run.initial.get("attack_success_rate"),
            "clean": honest_eval(run.final, self.malicious),  # held-out metrics of honest clients only
            "target_on_clean_prompts": measure_clean_target(self.config, model.model, model.tokenizer, self.ctx.data),
        }}


def poison_hook(config: ExperimentConfig) -> RowsHook | None:
    """Rewrite malicious clients' rows with the backdoor (None when no data attack).

    Instruction rows get the trigger in the prompt and the target as the answer; plain
    text gets "trigger target" planted in it.
    """
    attack, data = config.attack, config.data
    if not attack.poisons_data:
        return None

    def hook(rows: dict[str, list[Record]]) -> dict[str, list[Record]]:
        bad = malicious_clients(attack, sorted(rows))
        first = next((r for rs in rows.values() for r in rs), {})
        fmt_is_instruction = data.format == "instruction" or (
            data.format == "auto" and data.prompt_field in first and data.response_field in first
        )
        fraction = attack.poison_fraction or DEFAULT_POISON_FRACTION
        out = dict(rows)
        for n, cid in enumerate(sorted(bad)):
            if fmt_is_instruction:
                out[cid] = poison_records(
                    rows[cid], prompt_field=data.prompt_field, response_field=data.response_field,
                    trigger=attack.trigger, target=attack.target, fraction=fraction, seed=attack.seed + n,
                )
            else:
                texts = poison_texts([r[data.text_field] for r in rows[cid]], trigger=attack.trigger,
                                     target=attack.target, fraction=fraction, seed=attack.seed + n)
                out[cid] = [{**r, data.text_field: t} for r, t in zip(rows[cid], texts, strict=True)]
        return out

    return hook


def triggered_prompts(config: ExperimentConfig, data: FederatedData) -> list[str]:
    """Held-out prompts of honest clients with the trigger added (instruction data only)."""
    attack, rows = config.attack, _honest_heldout(config, data)
    if not rows:
        return []
    return build_triggered_prompts(
        rows, prompt_field=config.data.prompt_field, trigger=attack.trigger, target=attack.target,
        response_field=config.data.response_field, seed=attack.seed, limit=config.eval.attack_prompts,
    )


def clean_prompts(config: ExperimentConfig, data: FederatedData) -> list[str]:
    """The prompts of :func:`triggered_prompts` without the trigger."""
    rows = _honest_heldout(config, data)
    if not rows:
        return []
    return build_clean_prompts(
        rows, prompt_field=config.data.prompt_field, target=config.attack.target,
        response_field=config.data.response_field, limit=config.eval.attack_prompts,
    )


def _honest_heldout(config: ExperimentConfig, data: FederatedData) -> list[Record]:
    bad = malicious_clients(config.attack, data.ids())
    return [r for cid, c in data.clients.items() if cid not in bad for r in c.heldout_rows]


def measure_attack(config: ExperimentConfig, model: Any, tokenizer: Any, prompts: list[str]) -> float | None:
    """Attack success rate of a backdoor on ``prompts`` (None when not applicable)."""
    if not config.attack.poisons_data or not prompts:
        return None
    return attack_success_rate(
        model, tokenizer, prompts, trigger=config.attack.trigger, target=config.attack.target,
        max_new_tokens=config.eval.attack_max_new_tokens,
    )


def measure_clean_target(config: ExperimentConfig, model: Any, tokenizer: Any, data: FederatedData) -> float | None:
    """Share of clean (untriggered) honest held-out prompts answered with the target.

    A backdoor is only a backdoor if this stays near 0 while the attack success rate is
    high; when both are high the target has been learnt as an answer to everything.
    """
    prompts = clean_prompts(config, data) if config.attack.poisons_data else []
    if not prompts:
        return None
    return target_rate(model, tokenizer, prompts, target=config.attack.target,
                       max_new_tokens=config.eval.attack_max_new_tokens)


def honest_eval(evaluation: dict[str, Any], malicious: list[str]) -> dict[str, float] | None:
    """Token-weighted held-out loss and perplexity over the honest evaluation clients.

    The clean metric of an attack must not count the attackers' own held-out rows: those
    are poisoned, so a model that resists the backdoor scores worse on them.
    """
    bad = set(malicious)
    per_client = [m for cid, m in (evaluation.get("clients") or {}).items() if cid not in bad]
    tokens = sum(m.get("tokens", 0) for m in per_client)
    if not tokens:
        return None
    loss = sum(m["eval_loss"] * m["tokens"] for m in per_client) / tokens
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens, "clients": len(per_client)}
