"""Per-client label histograms: the inspect table and the report section."""

from __future__ import annotations

from fedlm.report.labels import label_section, label_table

COUNTS = {"client_1": {"qa": 3, "sum": 1}, "client_0": {"qa": 1, "code": 2}}


def test_table_orders_labels_by_total_and_clients_by_id():
    header, rows = label_table(COUNTS)
    assert header == ["client", "qa", "code", "sum", "total"]
    assert rows == [["client_0", 1, 2, 0, 3], ["client_1", 3, 0, 1, 4]]


def test_report_section_has_a_plot_and_the_table():
    html = label_section({"data": {"label_counts": COUNTS, "label_tv": 0.25}})
    assert "data:image/png;base64," in html and "<td>client_1</td>" in html and "0.250" in html
    assert label_section({"data": {"label_counts": {}}}) == ""
