"""The heterogeneity capability: local objectives, resource profiles, LoRA-aware aggregation.

The algorithms live elsewhere: local objectives in :mod:`fedlm.client.trainer` and
:mod:`fedlm.client.scaffold`, resource profiles in :mod:`fedlm.client.profiles`, the
aggregate stages in :mod:`fedlm.aggregation.lora_stage`, :mod:`fedlm.aggregation.fednova`
and :mod:`fedlm.aggregation.scaffold_stage`. This module plugs them into the round:

* the server's mean (FedNova's, or the LoRA-aware stage, which also logs the aggregation
  error) and SCAFFOLD's server variate after it;
* each round: SCAFFOLD's ``c`` into the plan (and its bytes into the broadcast);
* per client: its profile (rank, steps, batch size, straggling), the adapter it starts
  from (truncated to its rank), its local objective, and its SCAFFOLD variate ``c_i``
  kept in the client's state between rounds;
* FedEx-LoRA: the running residual (the LoRA stage's state) folded into the one base
  model whenever the engine adopts a state (after every round and on resume), its bytes
  added to the broadcast, and saved next to the final adapter
  (``base_residuals.safetensors``) for ``fedlm eval``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from fedlm.aggregation.fednova import FedNovaMean
from fedlm.aggregation.lora import lora_scaling, pair_lora_tensors
from fedlm.aggregation.lora_stage import LoraAggregateStage
from fedlm.aggregation.scaffold_stage import ScaffoldControl, ScaffoldRound
from fedlm.client.local import TrainOptions
from fedlm.client.profiles import (
    Resources,
    assign_profiles,
    rank_masks,
    round_resources,
    truncate_to_rank,
)
from fedlm.client.scaffold import client_control_update, correction
from fedlm.client.trainer import steps_for
from fedlm.config.schema import ExperimentConfig
from fedlm.engine.capability import Capability, EngineContext, LocalOutcome, MeanOffer, MeanRank
from fedlm.engine.checkpoint import ServerState
from fedlm.errors import ModelError, UpdateRejected
from fedlm.stages import RoundPlan, Stage, TensorDict

CONTROL_KEY = "scaffold_control"  # client state: SCAFFOLD's c_i (never leaves the client)
RESIDUALS_FILE = "base_residuals.safetensors"


def mean_stage(config: ExperimentConfig, shapes: dict[str, tuple[int, ...]], frozen: TensorDict | None = None):
    """FedNova's or the LoRA-aware mean, when the config asks for one (else None).

    FedNova's mean, the LoRA stage (which also logs the aggregation error), or None for
    FedAvg's plain weighted mean. ``frozen``: FFA-LoRA's fixed A matrices, by name.
    """
    fed, agg = config.federation, config.aggregation
    if agg.normalize == "fednova":
        return FedNovaMean(weighting=fed.weighting)
    frozen = frozen or {}
    every = {**shapes, **{k: tuple(v.shape) for k, v in frozen.items()}}
    has_pairs = config.lora.enabled and bool(pair_lora_tensors(every).pairs)
    if has_pairs and (agg.lora != "naive" or agg.log_error):
        method = {"naive": "naive", "ffa": "ffa", "exact": agg.exact_method}[agg.lora]
        return LoraAggregateStage(
            method, scaling=lora_scaling(config.lora.alpha, config.lora.r), rank=config.lora.r,
            weighting=fed.weighting, log_error=agg.log_error, frozen=frozen if method == "ffa" else None,
        )
    return None


class Heterogeneity(Capability):
    """Local objectives, resource profiles and LoRA-aware aggregation in a run.

    Args:
        config: the experiment.
        model: the one base model (its LoRA shapes, and the base weights FedEx-LoRA folds into).
        client_ids: the federation's clients, sorted.
    """

    name = "heterogeneity"
    plan_fields = (ScaffoldRound,)

    @classmethod
    def build(cls, ctx: EngineContext) -> Heterogeneity:
        """Always on: resource profiles and the local optimizer are read for every client."""
        return cls(ctx.config, ctx.model, ctx.client_ids)

    def __init__(self, config: ExperimentConfig, model, client_ids: list[str]) -> None:
        self.config, self.model = config, model
        self.local, self.agg, self.res = config.local, config.aggregation, config.resources
        self.client_ids = set(client_ids)
        self.population = len(client_ids)
        self.profile_of = assign_profiles(self.res, client_ids)
        self.shapes = model.shapes()
        self._template = {k: torch.zeros(v) for k, v in self.shapes.items()}  # SCAFFOLD's c - c_i, by shape
        self.scaffold = self.local.algorithm == "scaffold"
        self._masks: dict[int, dict[str, torch.Tensor]] = {}
        self.fedex = config.lora.enabled and self.agg.lora == "exact" and self.agg.exact_method == "fedex"
        self._base: dict[str, torch.Tensor] = {}  # pristine base weights of adapted modules (FedEx-LoRA)
        self._folded: dict | None = None  # the residual dict last folded (held, so never reused)

    # ------------------------------------------------------------------ stages
    def mean(self) -> MeanOffer | None:
        """FedNova's or the LoRA-aware mean (the same mean, re-normalised or with its error logged)."""
        # Personal modules are kept on clients, so the server sees only the shared tensors.
        frozen = self.model.frozen_lora_state()
        stage = mean_stage(self.config, self.shapes, frozen)
        return MeanOffer(stage, MeanRank.REFINEMENT) if stage is not None else None

    def server_stages(self) -> list[Stage]:
        """SCAFFOLD's server variate, after the mean (it reads the decoded deltas)."""
        return [ScaffoldControl()] if self.scaffold else []

    # ------------------------------------------------------------------ plan
    def extend_plan(self, plan: RoundPlan, state: ServerState) -> RoundPlan:
        if not self.scaffold:
            return plan
        return plan.with_fields(ScaffoldRound((state.server_states.get(ScaffoldControl.name) or {}).get("c", {})))

    # ------------------------------------------------------------------ client
    def resources(self, cid: str, num_examples: int) -> Resources:
        """This client's steps, batch size and rank this round (steps 0: a dropped straggler)."""
        fed = self.config.federation
        profile = self.profile_of.get(cid)
        p = self.res.profiles[profile] if profile is not None else None
        batch = p.batch_size if p is not None and p.batch_size is not None else fed.batch_size
        steps = steps_for(num_examples, batch_size=batch, local_steps=fed.local_steps, local_epochs=fed.local_epochs)
        if cid not in self.client_ids:  # the server's own update (FLTrust root): no profile, no budget
            return Resources(rank=None, steps=steps, batch_size=fed.batch_size, seconds=float(steps))
        return round_resources(self.res, profile, steps=steps, batch_size=fed.batch_size)

    def _rank_masks(self, cid: str) -> dict[str, torch.Tensor]:
        profile = self.profile_of.get(cid)
        rank = self.res.profiles[profile].rank if profile is not None else None
        if rank is None or rank >= self.config.lora.r:
            return {}
        if rank not in self._masks:
            self._masks[rank] = rank_masks(self.shapes, rank)
        return self._masks[rank]

    def client_start(self, plan: RoundPlan, client_id: str, start: TensorDict, client_state: dict[str, Any]) -> TensorDict:
        """The adapter this client trains from: the broadcast, truncated to its rank."""
        masks = self._rank_masks(client_id)
        return truncate_to_rank(start, masks) if masks else start

    def train_options(self, plan: RoundPlan, client_id: str, options: TrainOptions,
                      client_state: dict[str, Any]) -> TrainOptions:
        """The client's profile (steps, batch size; a straggler sends nothing) and its local objective.

        Raises:
            UpdateRejected: the client is a straggler past ``resources.time_budget``.
        """
        cid = client_id
        res = self.resources(cid, options.num_examples)
        if res.steps == 0:
            raise UpdateRejected("straggler", f"needs more than resources.time_budget={self.res.time_budget} s")
        report: dict[str, Any] = {"batch_size": res.batch_size, "sim_seconds": res.seconds}
        if res.rank is not None:
            report["rank"] = res.rank
        changes: dict[str, Any] = {"steps": res.steps, "batch_size": res.batch_size, "optimizer": self.local.optimizer,
                                   "report": {**options.report, **report}}
        if self.local.algorithm == "fedprox":
            changes["prox_mu"] = self.local.prox_mu
        masks = self._rank_masks(cid)
        if masks:
            changes["keep_zero"] = masks
        if self.scaffold and cid in self.client_ids:
            c = plan.require(ScaffoldRound, by="SCAFFOLD's local correction").c
            changes["correction"] = correction(c, client_state.get(CONTROL_KEY, {}), self._template)
        return replace(options, **changes)

    def after_local(self, local: LocalOutcome) -> dict[str, Any]:
        """SCAFFOLD option II: the client's new ``c_i``, kept in its state."""
        cid, update = local.client_id, local.update
        if not self.scaffold or cid not in self.client_ids or update.tensors is None:
            return local.client_state
        c = local.plan.require(ScaffoldRound, by="SCAFFOLD's control update").c
        c_i = local.client_state.get(CONTROL_KEY, {})
        new = client_control_update(c_i, c, update.tensors, steps=local.result.steps, lr=local.plan.lr)
        return {**local.client_state, CONTROL_KEY: new}

    # ------------------------------------------------------------------ server
    def broadcast_bytes(self, state: ServerState) -> int:
        return self.extra_down_bytes(state.server_states)

    def adopt(self, state: ServerState) -> None:
        self.sync_base(state.server_states)

    def residuals(self, server_states: dict[str, Any]) -> dict[str, torch.Tensor]:
        return (server_states.get(LoraAggregateStage.name) or {}).get("residual", {}) if self.fedex else {}

    def extra_down_bytes(self, server_states: dict[str, Any]) -> int:
        """Broadcast bytes per client beyond the adapter: FedEx-LoRA's residual, SCAFFOLD's c (fp32)."""
        total = sum(r.numel() * 4 for r in self.residuals(server_states).values())
        if self.scaffold:
            c = (server_states.get(ScaffoldControl.name) or {}).get("c", {})
            total += sum(t.numel() * 4 for t in c.values())
        return total

    def sync_base(self, server_states: dict[str, Any]) -> None:
        """Make the base weights ``pristine + running residual`` (idempotent; exact on resume)."""
        res = self.residuals(server_states)
        if not self.fedex or self._folded is res:
            return
        with torch.no_grad():
            for prefix, r in res.items():
                weight = self._base_weight(prefix)
                if prefix not in self._base:
                    self._base[prefix] = weight.detach().clone()
                weight.copy_((self._base[prefix].float() + r.to(weight.device).float()).to(weight.dtype))
        self._folded = res

    def _base_weight(self, prefix: str) -> torch.nn.Parameter:
        try:
            module = self.model.model.get_submodule(prefix)
        except AttributeError:
            raise ModelError(f"FedEx-LoRA residual names module {prefix!r}, which the model lacks") from None
        return module.base_layer.weight if hasattr(module, "base_layer") else module.weight

    def save(self, directory: Path, state: ServerState) -> None:
        """Next to the final adapter: the residual the base weights need (FedEx-LoRA)."""
        res = self.residuals(state.server_states)
        if res:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in res.items()}, str(Path(directory) / RESIDUALS_FILE))


def fold_saved_residuals(peft_model, adapter_dir: str | Path) -> None:
    """Add a run's saved FedEx-LoRA residuals to a loaded PEFT model's base weights."""
    path = Path(adapter_dir) / RESIDUALS_FILE
    if not path.is_file():
        return
    from safetensors.torch import load_file

    with torch.no_grad():
        for prefix, r in load_file(str(path)).items():
            module = peft_model.get_submodule(prefix)
            weight = module.base_layer.weight if hasattr(module, "base_layer") else module.weight
            weight.add_(r.to(weight.dtype))


__all__ = ["CONTROL_KEY", "Heterogeneity", "fold_saved_residuals", "mean_stage"]
