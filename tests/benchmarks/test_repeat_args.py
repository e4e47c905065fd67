"""Timing benchmarks refuse a repeat count that cannot give an interval, before any work."""

import sys

import pytest


def _refused(module_name: str, argv: list[str], monkeypatch) -> str:
    import importlib

    module = importlib.import_module(f"benchmarks.{module_name}")
    monkeypatch.setattr(sys, "argv", [module_name, *argv])
    with pytest.raises(SystemExit) as exc:
        module.main()
    return str(exc.value)


def test_sim_overhead_needs_two_timed_rounds(monkeypatch):
    assert "two or more timed rounds" in _refused("sim_overhead", ["--rounds", "1"], monkeypatch)


def test_sim_scale_runs_each_size_at_least_once(monkeypatch):
    assert "at least once" in _refused("sim_scale", ["--repeats", "0"], monkeypatch)
