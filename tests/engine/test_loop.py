"""The one round loop, and a capability that plugs in without touching the engine."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from rich.console import Console
from tests_support import tiny_overrides

from fedlm.capabilities import build_capabilities
from fedlm.commands.experiment import prepare, run_in_dir
from fedlm.config import load_config
from fedlm.engine.capability import Capability, EngineContext, FinishedRun
from fedlm.engine.checkpoint import ServerState
from fedlm.engine.loop import LoopObserver, run_rounds
from fedlm.engine.simulation import Simulation
from fedlm.report.metrics_log import MetricsLog
from fedlm.stages import ClientUpdate, RoundPlan


class Stamp:
    """A client stage that writes the round into each update's metrics."""

    name: ClassVar[str] = "stamp"
    kind: ClassVar[str] = "transform"

    def init(self) -> None:
        return None

    def apply(self, state: None, value: ClientUpdate, plan: RoundPlan) -> tuple[None, ClientUpdate, dict[str, Any]]:
        return state, value, {"round_seen": plan.round}


class Toy(Capability):
    """Adds a stage, a record field, a summary key, and stops the run after ``stop_after`` rounds."""

    name: ClassVar[str] = "toy"

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after = stop_after
        self.resumed: list[int] = []

    def client_stages(self):
        return [Stamp()]

    def stop_reason(self, state: ServerState) -> str | None:
        if self.stop_after is not None and state.round >= self.stop_after:
            return f"toy: {self.stop_after} rounds are enough"
        return None

    def after_round(self, state: ServerState, record: dict[str, Any]) -> tuple[ServerState, dict[str, Any]]:
        return state, {**record, "toy": {"clients": len(record["clients"])}}

    def resume(self, state: ServerState) -> None:
        self.resumed.append(state.round)

    def summary(self, run: FinishedRun) -> dict[str, Any]:
        return {"toy": {"rounds": len([r for r in run.records if r.get("type") == "round"])}}


class Recorder(LoopObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def round_started(self, round_id: int, cohort_size: int) -> None:
        self.events.append(("start", round_id))

    def round_done(self, record: dict[str, Any], evaluation: dict[str, Any] | None) -> None:
        self.events.append(("done", record["round"], evaluation is not None))

    def stopped(self, reason: str) -> None:
        self.events.append(("stopped", reason))


def _engine(lm_data, toy: Toy, **extra) -> tuple[Simulation, Any]:
    config = load_config(None, tiny_overrides(lm_data, **{"federation.rounds": 3, **extra}))
    model, data = prepare(config)
    caps = build_capabilities(EngineContext(config, model, data))
    return Simulation(config, model, data, capabilities=[*caps, toy]), config


def test_a_toy_capability_adds_a_stage_a_record_field_and_a_stop_reason(lm_data, tmp_path) -> None:
    toy = Toy(stop_after=2)
    sim, config = _engine(lm_data, toy)
    assert "stamp" in [s.name for s in sim.client_pipeline.stages]
    log, recorder = MetricsLog(tmp_path / "metrics.jsonl"), Recorder()
    end = run_rounds(sim, sim.init_state(), config=config, log=log, checkpoints=tmp_path / "ckpt", digest="d",
                     observer=recorder)
    assert end.state.round == 2 and end.stop_reason == "toy: 2 rounds are enough"
    rounds = [r for r in log.read() if r["type"] == "round"]
    assert [r["toy"]["clients"] for r in rounds] == [len(r["clients"]) for r in rounds]
    assert all(m["stamp.round_seen"] == r["round"] for r in rounds for m in r["clients"].values())
    assert all("audit" in r for r in rounds)  # the audit trail still runs (a capability too)
    assert recorder.events == [("start", 1), ("done", 1, True), ("start", 2), ("done", 2, True),
                               ("stopped", "toy: 2 rounds are enough")]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["round_0001", "round_0002"]


def test_without_a_stop_the_loop_runs_every_round_and_the_summary_gets_the_capabilitys_key(lm_data, tmp_path) -> None:
    toy = Toy()
    sim, config = _engine(lm_data, toy, **{"eval.every": 2})
    result = run_in_dir(sim, config, sim.model, run_dir=tmp_path / "run", resume=False,
                        console=Console(quiet=True), started=0.0, engine="simulation")
    assert result.summary["rounds_completed"] == 3 and result.summary["stop_reason"] is None
    assert result.summary["toy"] == {"rounds": 3}
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if r["type"] == "eval"] == [0, 2, 3]  # every 2 rounds, and the last


def test_resume_hands_the_checkpoint_to_every_capability(lm_data, tmp_path) -> None:
    quiet = Console(quiet=True)
    sim, config = _engine(lm_data, Toy(stop_after=1))
    run_in_dir(sim, config, sim.model, run_dir=tmp_path / "run", resume=False, console=quiet, started=0.0,
               engine="simulation")
    toy = Toy()
    sim, config = _engine(lm_data, toy)
    result = run_in_dir(sim, config, sim.model, run_dir=tmp_path / "run", resume=True, console=quiet, started=0.0,
                        engine="simulation")
    assert toy.resumed == [1] and result.summary["rounds_completed"] == 3
