"""Every benchmark declares its split rule, checks ``--report-on`` and refuses its tuned split."""

import importlib
import sys
from pathlib import Path

import pytest

from benchmarks._record import SplitRule, TunedSplitError

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
MODULES = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_"))


def rules(name: str) -> list[SplitRule]:
    """The module's split rules: ``SPLITS``, or one per recipe for ``recipes``."""
    module = importlib.import_module(f"benchmarks.{name}")
    if name == "recipes":  # one rule per recipe, picked by --recipe
        return [r["splits"] for r in module.RECIPES.values()]
    return [module.SPLITS]


def test_every_benchmark_module_is_covered():
    from benchmarks.__main__ import MODULES as RUN_BY_QUICK

    assert set(MODULES) == set(RUN_BY_QUICK)  # the parametrisation below is not silently short


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_declares_its_split_rule(name):
    found = rules(name)
    assert found and all(isinstance(r, SplitRule) for r in found), name
    for r in found:
        assert r.validation and r.test and r.seeds, f"{name}: name both splits and the seeds"


@pytest.mark.parametrize("name", MODULES)
def test_report_on_validation_is_refused_when_parsing(name, monkeypatch, capsys):
    """``python -m benchmarks.NAME --report-on validation`` exits before any work: with the
    tuned-split error where something is tuned, else with argparse's "invalid choice"."""
    module = importlib.import_module(f"benchmarks.{name}")
    monkeypatch.setattr(sys, "argv", [name, "--report-on", "validation"])
    tuned = any(r.tuned for r in rules(name))
    with pytest.raises(TunedSplitError if tuned else SystemExit) as err:
        module.main()
    if not tuned:  # not "unrecognized arguments": the option exists and refuses
        assert err.value.code == 2 and "invalid choice: 'validation'" in capsys.readouterr().err


@pytest.mark.parametrize("name", MODULES)
def test_tuned_benchmark_refuses_its_validation_split(name):
    for r in rules(name):
        if r.tuned:
            with pytest.raises(TunedSplitError, match="were chosen on it"):
                r.check_report("validation")
            with pytest.raises(TunedSplitError):
                r.check_report(r.validation)
        assert r.check_report("test") == r.test


def test_report_on_validation_exits_before_any_work(monkeypatch):
    """``python -m benchmarks.personalization --quick --report-on validation`` exits at once."""
    from benchmarks import personalization

    def no_work(*args, **kwargs):
        raise AssertionError("a seed ran although the split was refused")

    monkeypatch.setattr(personalization, "run_seed", no_work)
    monkeypatch.setattr(sys, "argv", ["personalization", "--quick", "--report-on", "validation"])
    with pytest.raises(TunedSplitError, match="refusing to report on 'validation'") as err:
        personalization.main()
    assert isinstance(err.value, SystemExit) and "lr and steps" in str(err.value)
