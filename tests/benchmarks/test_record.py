"""The split rule refuses to report on the tuned split; results files; interleaving."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks._record import (
    ROOT,
    OutputFolderError,
    SplitRule,
    TunedSplitError,
    command_line,
    cpu_vector_isa,
    interleave,
    read_results,
    writable_folder,
    write_results,
)


def rule(**kw):
    return SplitRule(validation="val half", test="test half", tuned=("lr",), **kw)


def test_reporting_on_the_tuned_split_fails_loudly():
    with pytest.raises(TunedSplitError, match="lr were chosen on it"):
        rule().check_report("validation")
    with pytest.raises(TunedSplitError):
        rule().check_report("val half")
    assert isinstance(TunedSplitError("x"), SystemExit)  # the process exits non-zero


def test_test_split_is_accepted_by_either_name():
    assert rule().check_report("test") == "test half"
    assert rule().check_report("test half") == "test half"


def test_unknown_split_is_refused():
    with pytest.raises(TunedSplitError, match="unknown split"):
        rule().check_report("train")


def test_untuned_benchmark_may_report_its_validation_split():
    untuned = SplitRule(validation="a", test="b")
    assert untuned.check_report("validation") == "a"


def test_validation_and_test_must_differ():
    with pytest.raises(ValueError):
        SplitRule(validation="x", test="x")


def test_describe_names_both_splits_and_the_seeds():
    text = rule(seeds=(0, 1, 2)).describe()
    assert "val half" in text and "test half" in text and "0,1,2" in text


def test_describe_shows_the_seeds_a_run_ran_beside_the_rules():
    assert rule(seeds=(0, 1, 2)).describe([0, 1, 2]).endswith("seeds 0,1,2")
    assert rule(seeds=(0, 1, 2)).describe([1]).endswith("seeds 1 of the rule's 0,1,2")


def test_write_results_appends_stamped_rows(tmp_path):
    write_results("demo", [{"a": 1}], command="cmd", folder=tmp_path)
    write_results("demo", [{"a": 2}], command="cmd", folder=tmp_path)
    rows = read_results("demo", folder=tmp_path)
    assert [r["a"] for r in rows] == [1, 2]
    assert {"date", "machine", "load_1min", "command", "git"} <= set(rows[0])
    assert json.loads((tmp_path / "demo.jsonl").read_text().splitlines()[0])["command"] == "cmd"
    assert write_results("demo", [{"a": 3}], record=False, folder=tmp_path) is None
    assert len(read_results("demo", folder=tmp_path)) == 2


def test_interleave_alternates_and_records_load():
    calls = []
    out = interleave({"A": lambda: calls.append("A") or {"x": 1}, "B": lambda: calls.append("B") or {"x": 2}},
                     repeats=3)
    assert calls == ["A", "B", "A", "B", "A", "B"]
    assert [r["order"] for r in out["B"]] == [1, 3, 5]
    assert all("load_before" in r and "load_after" in r for r in out["A"])
    with pytest.raises(ValueError):
        interleave({"A": dict}, repeats=0)


def test_the_recorded_command_names_the_threads_it_ran_with(monkeypatch):
    monkeypatch.setattr("sys.argv", ["personalization.py", "--seeds", "0", "--threads", "2"])
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert command_line("personalization") == "OMP_NUM_THREADS=2 python -m benchmarks.personalization --seeds 0 --threads 2"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert command_line("personalization") == "python -m benchmarks.personalization --seeds 0 --threads 2"


def test_a_results_folder_that_cannot_be_written_is_refused_before_the_run(tmp_path):
    blocker = tmp_path / "p2"
    blocker.write_bytes(b"not a folder")
    with pytest.raises(OutputFolderError, match="p2 is not a writable folder"):
        writable_folder(blocker / "results")
    fresh = tmp_path / "new" / "results"
    assert writable_folder(fresh) == fresh and not fresh.exists()  # nothing made before the run writes


def test_a_benchmark_stops_at_start_when_its_output_folder_is_a_file(tmp_path):
    blocker = tmp_path / "out"
    blocker.write_bytes(b"")
    env = {**os.environ, "FEDLM_BENCH_OUT": str(blocker)}
    done = subprocess.run([sys.executable, "-c", "import benchmarks._record"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "FEDLM_BENCH_OUT" in done.stderr


@pytest.mark.parametrize("flags, isa", [
    ("fpu sse2 avx avx2 fma", "AVX2"),
    ("avx2 avx512f avx512bw", "AVX-512"),
    ("avx2 avx512f amx_bf16 amx_tile", "AVX-512 + AMX"),
    ("fpu sse2", ""),
])
def test_the_machine_line_names_the_cpus_vector_units(flags, isa):
    cpuinfo = f"processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
    assert cpu_vector_isa(cpuinfo) == isa
    assert cpu_vector_isa("") == ""


def test_rows_name_the_commit_the_run_started_from(tmp_path, monkeypatch):
    import subprocess

    from benchmarks import _record

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "f").write_text("1")
    git("add", "f")
    git("commit", "-qm", "first")
    monkeypatch.setattr(_record, "ROOT", tmp_path)
    _record.git_rev.cache_clear()
    try:
        started = _record.git_rev()
        (tmp_path / "f").write_text("2")
        git("commit", "-qam", "made while the benchmark ran")
        assert _record.git_rev() == started and not started.endswith("+dirty")
    finally:
        _record.git_rev.cache_clear()
