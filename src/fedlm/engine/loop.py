"""The one round loop: budget check, round, capability records, evaluation, checkpoint.

``run_rounds`` is what every run executes, whatever runs its rounds: the in-process
simulator (``fedlm run``), Flower's ServerApp on a real federation, or Flower's simulation
engine. A driver supplies the round and the evaluation; the loop supplies everything a
guarantee depends on (the stop reason, the capabilities' ``after_round`` records, the audit
entry, checkpoints), so a guarantee enforced here holds in a deployment too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedlm.config.schema import ExperimentConfig
from fedlm.engine.capability import Capability
from fedlm.engine.checkpoint import Checkpoint, ServerState, load_latest, save_checkpoint
from fedlm.errors import CheckpointError
from fedlm.report.metrics_log import MetricsLog


class RoundDriver(Protocol):
    """What runs the rounds: ``Simulation`` in process, or a deployment's server."""

    capabilities: list[Capability]
    cohort_size: int
    eval_ids: list[str]
    data: Any  # FederatedData: every client's examples, or only their sizes on a deployed server

    def init_state(self) -> ServerState: ...

    def run_round(self, state: ServerState, *, on_client: Callable[[str], None] | None = None
                  ) -> tuple[ServerState, dict[str, Any]]: ...

    def evaluate_round(self, state: ServerState, client_ids: list[str] | None = None) -> dict[str, Any]: ...

    def ask_clients(self, capability: str, state: ServerState, client_ids: list[str],
                    request: dict[str, Any]) -> dict[str, dict[str, Any]]: ...


class LoopObserver:
    """Progress callbacks of the loop (no-ops); a command draws its progress bars with them."""

    def round_started(self, round_id: int, cohort_size: int) -> None: ...

    def client_done(self, client_id: str) -> None: ...

    def round_done(self, record: dict[str, Any], evaluation: dict[str, Any] | None) -> None: ...

    def stopped(self, reason: str) -> None: ...


@dataclass(frozen=True)
class LoopEnd:
    """How the loop ended: the final state and, when it stopped early, why."""

    state: ServerState
    stop_reason: str | None


def run_rounds(driver: RoundDriver, state: ServerState, *, config: ExperimentConfig, log: MetricsLog,
               checkpoints: Path, digest: str, data_digest: str = "", observer: LoopObserver | None = None) -> LoopEnd:
    """Run rounds from ``state`` until ``federation.rounds`` or a capability's stop reason.

    Each round: the stop check (e.g. the privacy budget), the round, every capability's
    ``after_round`` (accounting, then the audit entry), the record into ``log``, the
    evaluation when due, and a checkpoint when due.
    """
    observer = observer or LoopObserver()
    fed, out = config.federation, config.output
    while state.round < fed.rounds:
        reason = next((r for cap in driver.capabilities if (r := cap.stop_reason(state)) is not None), None)
        if reason is not None:
            observer.stopped(reason)
            return LoopEnd(state, reason)
        observer.round_started(state.round + 1, driver.cohort_size)
        state, record = driver.run_round(state, on_client=observer.client_done)
        for cap in driver.capabilities:
            state, record = cap.after_round(state, record)
        log.append(record)
        r = state.round
        evaluation = None
        if r % config.eval.every == 0 or r == fed.rounds:
            ids = record["cohort"] if config.eval.clients == "sampled" else None
            evaluation = {"type": "eval", "round": r, **driver.evaluate_round(state, ids)}
            log.append(evaluation)
        if r % out.checkpoint_every == 0 or r == fed.rounds:
            save_checkpoint(checkpoints, state, config_digest=digest, data_digest=data_digest,
                            keep=out.keep_checkpoints, records=log.read())
        observer.round_done(record, evaluation)
    return LoopEnd(state, None)


def resume_state(driver: RoundDriver, log: MetricsLog, checkpoints: Path, *, digest: str, data_digest: str = ""
                 ) -> tuple[ServerState, dict[str, Any], Checkpoint]:
    """The newest intact checkpoint and the initial evaluation record, with the log and the
    capabilities set back to it.

    ``metrics.jsonl`` is rewritten from the checkpoint's own copy of the records, so a log
    that was deleted, truncated or written past the checkpoint comes back exactly as it was.
    """
    ckpt = load_latest(checkpoints, config_digest=digest, data_digest=data_digest)
    state = ckpt.state
    log.rewrite(ckpt.records)
    initial = next((r for r in ckpt.records if r.get("type") == "eval" and r.get("round") == 0), None)
    if initial is None:
        raise CheckpointError(f"{ckpt.path} lacks the initial evaluation; start the run again without resume")
    for cap in driver.capabilities:
        cap.resume(state)
        cap.adopt(state)
    return state, initial, ckpt


__all__ = ["LoopEnd", "LoopObserver", "RoundDriver", "resume_state", "run_rounds"]
