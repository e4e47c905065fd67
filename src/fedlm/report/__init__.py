"""Reporting: the metrics log, summary.json and report.html."""

from fedlm.report.html import render_report, write_report
from fedlm.report.metrics_log import MetricsLog, write_json

__all__ = ["MetricsLog", "render_report", "write_json", "write_report"]
