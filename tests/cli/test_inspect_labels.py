"""``fedlm data inspect`` prints the per-client label histogram."""

from __future__ import annotations

from tests_support import write_instruction_jsonl

from fedlm.cli.main import main


def test_inspect_prints_a_label_histogram(tmp_path, capsys):
    data = write_instruction_jsonl(tmp_path / "rows.jsonl", rows=80)
    sets = {"model.name": "tiny-llama", "data.source": "jsonl", "data.path": data, "data.partition": "pathological",
            "data.label_field": "category", "data.num_clients": 4, "data.classes_per_client": 1,
            "data.min_client_chars": 0}
    argv = ["data", "inspect"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "label histogram" in out
    rows = [line for line in out.splitlines() if line.startswith("│ client_")]
    assert len(rows) == 8  # the size table and the histogram, 4 clients each
    hist = rows[4:]
    assert all(line.count(" 20 ") >= 2 for line in hist)  # one label with all 20 of its rows, and the total
