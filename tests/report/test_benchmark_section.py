"""The report's benchmark section: base vs final model per benchmark and metric."""

from fedlm.report.benchmarks import benchmark_section
from fedlm.report.html import render_report


def _table(header, rows):
    return "|".join(header) + "\n" + "\n".join("|".join(str(c) for c in r) for r in rows)


def test_nothing_without_the_harness():
    assert benchmark_section({"benchmarks": None}, table=_table) == ""


def test_each_metric_with_its_base_and_final_score():
    summary = {
        "benchmarks": {"pubmedqa": {"accuracy": 0.6, "macro_f1": 0.5, "count": 10},
                       "mmlu-medical": {"accuracy": 0.25, "count": 8}},
        "benchmarks_initial": {"pubmedqa": {"accuracy": 0.5, "macro_f1": 0.348, "count": 10}},
    }
    html = benchmark_section(summary, table=_table)
    assert "pubmedqa|accuracy|0.5000|0.6000|10" in html
    assert "pubmedqa|macro_f1|0.3480|0.5000|10" in html
    assert "mmlu-medical|accuracy|–|0.2500|8" in html  # no base-model score was taken
    assert "count" not in html.split("\n", 1)[1]


def test_the_report_page_shows_the_section():
    page = render_report({"name": "r", "benchmarks": {"qa": {"exact_match": 0.1, "rouge_l": 0.3, "count": 4}}}, [])
    assert "<h2>Benchmarks</h2>" in page and "rouge_l" in page
